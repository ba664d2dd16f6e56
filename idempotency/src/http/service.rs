//! [`Idempotency`]: the middleware's service and what it does with each request.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::MatchedPath;
use axum::response::IntoResponse;
use bytes::Bytes;
use futures::FutureExt;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response};
use leases::Lease;
use tokio::time::Instant;
use tower::{BoxError, Service};

use super::body::{Limited, chain, read_limited};
use super::config::Shared;
use super::lease_guard::LeaseGuard;
use super::outcome::{count, problem};
use super::replay::{end_to_end, replay};
use super::store::{Acquire, ScopedKey, Store, StoredResponse};
use super::tx::{TxSlot, commit, rollback};
use crate::{Error, Fingerprint, IdempotencyKey, KeyPolicy, Problem};

/// The service [`IdempotencyLayer`](crate::IdempotencyLayer) wraps around an inner service.
pub struct Idempotency<S, St> {
    inner: S,
    shared: Arc<Shared<St>>,
}

impl<S, St> Idempotency<S, St> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<St>>) -> Self {
        Self { inner, shared }
    }
}

impl<S: Clone, St> Clone for Idempotency<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, St: fmt::Debug> fmt::Debug for Idempotency<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .field("store", &self.shared.store)
            .field("config", &self.shared.config)
            .finish()
    }
}

/// The future of an [`Idempotency`] service's response.
pub struct ResponseFuture<E> {
    inner: Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>,
}

impl<E> Future for ResponseFuture<E> {
    type Output = Result<Response<Body>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<E> fmt::Debug for ResponseFuture<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, St, B, ResBody> Service<Request<B>> for Idempotency<S, St>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    St: Store,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The service that was polled ready handles this request; a clone takes its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let inner = BodyMapped(inner);
        let shared = Arc::clone(&self.shared);
        ResponseFuture {
            inner: Box::pin(handle(inner, shared, request.map(Body::new))),
        }
    }
}

/// The inner service with its response body boxed.
struct BodyMapped<S>(S);

impl<S> BodyMapped<S> {
    async fn call<ResBody>(mut self, request: Request<Body>) -> Result<Response<Body>, S::Error>
    where
        S: Service<Request<Body>, Response = Response<ResBody>>,
        ResBody: http_body::Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        let response = self.0.call(request).await?;
        Ok(response.map(Body::new))
    }
}

async fn handle<S, St, ResBody>(
    inner: BodyMapped<S>,
    shared: Arc<Shared<St>>,
    request: Request<Body>,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Send,
    S::Future: Send,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
    St: Store,
{
    let config = &shared.config;
    if config.policy == KeyPolicy::Off || request.method().is_safe() {
        return pass_through(inner, &shared, request).await;
    }
    let (parts, body) = request.into_parts();
    let key = match IdempotencyKey::from_headers(&parts.headers) {
        Ok(Some(key)) => key,
        Ok(None) if config.policy == KeyPolicy::Required => {
            return Ok(problem(Problem::key_missing(), "rejected"));
        }
        Ok(None) => return pass_through(inner, &shared, Request::from_parts(parts, body)).await,
        Err(error) => return Ok(problem(Problem::key_invalid(error), "rejected")),
    };
    let scope = match &config.scope {
        Some(scope) => match scope(&parts) {
            Some(scope) => scope,
            None => return Ok(problem(Problem::scope_missing(), "rejected")),
        },
        None => String::new(),
    };
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_default();
    let body = match read_limited(body, config.max_request_body).await {
        Ok(Limited::Complete(bytes)) => bytes,
        Ok(Limited::TooLarge { .. }) => {
            return Ok(problem(
                Problem::body_too_large(config.max_request_body),
                "rejected",
            ));
        }
        Err(error) => {
            tracing::debug!(%error, "idempotency: request body unreadable");
            return Ok(problem(Problem::body_unreadable(), "rejected"));
        }
    };
    let fingerprint = Fingerprint::compute(
        &parts.method,
        &parts.uri,
        parts.headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes),
        &body,
        config.fingerprint,
    );
    let key = ScopedKey { scope, route, key };
    let request = Request::from_parts(parts, Body::from(body));
    let acquired = shared
        .store
        .acquire(&key, &fingerprint, config.lease_ttl, config.retention)
        .await;
    let lease = match acquired {
        Ok(Acquire::Acquired(lease)) => lease,
        Ok(Acquire::Completed(response)) => {
            count("replayed");
            return Ok(replay(response));
        }
        Ok(Acquire::InFlight { .. }) => {
            return Ok(problem(
                Problem::in_progress(config.retry_after),
                "in_flight",
            ));
        }
        Ok(Acquire::Mismatch) => return Ok(problem(Problem::key_reused(), "mismatch")),
        Err(Error::InvalidConfig(reason)) => {
            tracing::error!(%reason, "idempotency: invalid layer configuration");
            return Ok(problem(Problem::misconfigured(), "misconfigured"));
        }
        Err(error) if config.fail_open => {
            tracing::warn!(
                %error,
                key = %key.key,
                "idempotency: store unavailable; running the request unprotected (fail open)"
            );
            count("fail_open");
            return pass_through(inner, &shared, request).await;
        }
        Err(error) => {
            tracing::warn!(%error, key = %key.key, "idempotency: store unavailable");
            return Ok(problem(
                Problem::store_unavailable(config.retry_after),
                "store_unavailable",
            ));
        }
    };
    execute(inner, shared, request, lease).await
}

/// Runs a request that holds its key's lease, and stores or releases the key.
async fn execute<S, St, ResBody>(
    inner: BodyMapped<S>,
    shared: Arc<Shared<St>>,
    mut request: Request<Body>,
    lease: Lease<i64>,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Send,
    S::Future: Send,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
    St: Store,
{
    let guard = LeaseGuard {
        shared: Arc::clone(&shared),
        lease: Some(lease.clone()),
    };
    let config = &shared.config;
    let slot = shared.store.pool().map(TxSlot::new);
    if let Some(slot) = &slot {
        request.extensions_mut().insert(slot.clone());
    }

    let response = match run_handler(inner, request, &shared.store, &lease, config.lease_ttl).await
    {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            rollback(slot).await;
            guard.release().await;
            count("failed");
            return Err(error);
        }
        Err(panic) => {
            tracing::error!(
                panic = panic_message(&panic),
                "idempotency: handler panicked"
            );
            Problem::handler_panicked().into_response()
        }
    };

    let (parts, body) = response.into_parts();
    if !(config.store_if)(parts.status) {
        rollback(slot).await;
        guard.release().await;
        count("released");
        return Ok(Response::from_parts(parts, body));
    }
    let body = match read_limited(body, config.max_response_body).await {
        Ok(Limited::Complete(body)) => body,
        Ok(Limited::TooLarge { prefix, rest }) => {
            tracing::warn!(
                limit = config.max_response_body,
                "idempotency: response larger than max_response_body; not stored, key released"
            );
            if let Err(error) = commit(slot).await {
                tracing::warn!(%error, "idempotency: commit failed");
                guard.release().await;
                return Ok(problem(
                    Problem::store_unavailable(config.retry_after),
                    "store_unavailable",
                ));
            }
            guard.release().await;
            count("released");
            return Ok(Response::from_parts(parts, chain(prefix, rest)));
        }
        Err(error) => {
            tracing::error!(%error, "idempotency: response body failed");
            rollback(slot).await;
            guard.release().await;
            return Ok(problem(Problem::response_body_failed(), "failed"));
        }
    };
    let stored = StoredResponse {
        status: parts.status,
        headers: end_to_end(&parts.headers),
        body: body.clone(),
    };
    let response = Response::from_parts(parts, Body::from(body));

    let tx = match &slot {
        Some(slot) => slot.take().await,
        None => None,
    };
    let Some(mut tx) = tx else {
        // No transaction: store the response on its own. The handler's effects already happened,
        // so the client gets its response whatever the store says.
        match shared.store.complete(&lease, &stored).await {
            Ok(true) => count("executed"),
            Ok(false) => {
                tracing::warn!(
                    "idempotency: the request lost its lease before completing; response not stored"
                );
                count("superseded");
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    "idempotency: storing the response failed; the key stays locked until its \
                     lease expires"
                );
                count("store_failed");
            }
        }
        guard.disarm();
        return Ok(response);
    };
    match shared.store.complete_in(&mut tx, &lease, &stored).await {
        Ok(true) => match tx.commit().await {
            Ok(()) => {
                guard.disarm();
                count("executed");
                Ok(response)
            }
            Err(error) => {
                // Rolled back, or committed with the acknowledgement lost: releasing is fenced
                // and does nothing to a completed key, so a retry gets the replay or runs anew.
                tracing::warn!(%error, "idempotency: commit failed");
                guard.release().await;
                Ok(problem(
                    Problem::store_unavailable(config.retry_after),
                    "store_unavailable",
                ))
            }
        },
        Ok(false) => {
            let _ = tx.rollback().await;
            guard.disarm();
            tracing::warn!(
                "idempotency: the request lost its lease to a retry; its transaction was rolled back"
            );
            Ok(problem(
                Problem::superseded(config.retry_after),
                "superseded",
            ))
        }
        Err(error) => {
            tracing::warn!(%error, "idempotency: storing the response failed; rolled back");
            let _ = tx.rollback().await;
            guard.release().await;
            Ok(problem(
                Problem::store_unavailable(config.retry_after),
                "store_unavailable",
            ))
        }
    }
}

/// Calls the handler, catching a panic, and renews the lease every third of its ttl meanwhile.
async fn run_handler<S, St, ResBody>(
    inner: BodyMapped<S>,
    request: Request<Body>,
    store: &St,
    lease: &Lease<i64>,
    ttl: Duration,
) -> Result<Result<Response<Body>, S::Error>, Box<dyn std::any::Any + Send>>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Send,
    S::Future: Send,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
    St: Store,
{
    let mut call = pin!(AssertUnwindSafe(inner.call(request)).catch_unwind());
    let every = (ttl / 3).max(Duration::from_millis(10));
    let mut next = Instant::now() + every;
    let mut held = true;
    loop {
        tokio::select! {
            biased;
            result = &mut call => return result,
            () = tokio::time::sleep_until(next), if held => {
                next += every;
                match store.renew(lease, ttl).await {
                    Ok(true) => {}
                    Ok(false) => {
                        held = false;
                        tracing::warn!(
                            "idempotency: lease lost while the handler runs; its response \
                             will not be stored"
                        );
                    }
                    Err(error) => tracing::warn!(%error, "idempotency: lease renewal failed"),
                }
            }
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

/// Runs a request without idempotency; a [`Tx`](crate::Tx) it takes commits when its response
/// would be stored.
async fn pass_through<S, St, ResBody>(
    inner: BodyMapped<S>,
    shared: &Shared<St>,
    mut request: Request<Body>,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Send,
    S::Future: Send,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
    St: Store,
{
    let slot = shared.store.pool().map(TxSlot::new);
    if let Some(slot) = &slot {
        request.extensions_mut().insert(slot.clone());
    }
    let response = inner.call(request).await;
    let Ok(response) = response else {
        rollback(slot).await;
        return response;
    };
    if (shared.config.store_if)(response.status()) {
        if let Err(error) = commit(slot).await {
            tracing::warn!(%error, "idempotency: commit failed");
            return Ok(problem(
                Problem::store_unavailable(shared.config.retry_after),
                "store_unavailable",
            ));
        }
    } else {
        rollback(slot).await;
    }
    Ok(response)
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
