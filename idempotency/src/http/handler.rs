//! [`Handler`]: the inner service as the layer calls it, and [`respond`]: how its call ends.

use std::panic::AssertUnwindSafe;

use axum::body::Body;
use axum::response::IntoResponse;
use futures::FutureExt;
use futures::future::BoxFuture;
use http::{Request, Response};

use super::body::{Limited, chain, read_limited};
use super::config::Config;
use super::mode::{Ending, Held};
use super::outcome::problem;
use super::replay::end_to_end;
use super::store::StoredResponse;
use crate::Problem;

/// The inner service, ready for one request, with its response body boxed: built where the
/// service's bounds are stated, so nothing after needs them.
pub(super) type Handler<E> =
    Box<dyn FnOnce(Request<Body>) -> BoxFuture<'static, Result<Response<Body>, E>> + Send>;

/// Calls the handler while `held` keeps the key (catching a panic: answered with 500), and says
/// how the request ends.
pub(super) async fn respond<E>(
    handler: Handler<E>,
    request: Request<Body>,
    held: &dyn Held,
    config: &Config,
) -> (Result<Response<Body>, E>, Ending) {
    let mut call = AssertUnwindSafe(handler(request)).catch_unwind();
    let called = tokio::select! {
        biased;
        called = &mut call => called,
        never = held.keep() => match never {},
    };
    let response = match called {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => return (Err(error), Ending::Release("failed")),
        Err(panic) => {
            tracing::error!(
                panic = panic_message(&*panic),
                "idempotency: handler panicked"
            );
            Problem::handler_panicked().into_response()
        }
    };
    let (response, ending) = ending(config, response).await;
    (Ok(response), ending)
}

/// What to do with the handler's response.
async fn ending(config: &Config, response: Response<Body>) -> (Response<Body>, Ending) {
    let (parts, body) = response.into_parts();
    if !(config.store_if)(parts.status) {
        return (
            Response::from_parts(parts, body),
            Ending::Release("released"),
        );
    }
    match read_limited(body, config.max_response_body).await {
        Ok(Limited::Complete(body)) => {
            let stored = StoredResponse {
                status: parts.status,
                headers: end_to_end(&parts.headers),
                body: body.clone(),
            };
            let response = Response::from_parts(parts, Body::from(body));
            (response, Ending::Store(stored))
        }
        Ok(Limited::TooLarge { prefix, rest }) => {
            tracing::warn!(
                limit = config.max_response_body,
                "idempotency: response larger than max_response_body; not stored, key released"
            );
            let response = Response::from_parts(parts, chain(prefix, rest));
            (response, Ending::CommitAndRelease)
        }
        Err(error) => {
            tracing::error!(%error, "idempotency: response body failed");
            let response = problem(Problem::response_body_failed(), "failed");
            (response, Ending::Release("failed"))
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic payload)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_panic_payloads() {
        let payload: Box<dyn std::any::Any + Send> = Box::new("boom");
        assert_eq!(panic_message(&*payload), "boom");
        let payload: Box<dyn std::any::Any + Send> = Box::new(String::from("bang"));
        assert_eq!(panic_message(&*payload), "bang");
    }
}
