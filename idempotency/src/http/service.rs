//! [`Idempotency`]: the middleware's service and what it does with each request.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::IntoResponse;
use bytes::Bytes;
use futures::FutureExt;
use http::{Request, Response};
use leases::Lease;
use tokio::time::Instant;
use tower::{BoxError, Service};

use super::body::{Limited, chain, read_limited};
use super::checks::{Decision, Holder, decide};
use super::config::{Config, Shared};
use super::lease_guard::LeaseGuard;
use super::outcome::{count, problem};
use super::replay::end_to_end;
use super::store::{Store, StoredResponse};
use super::tx::{TxSlot, commit, rollback};
use crate::Problem;

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
    match decide(&shared, request).await {
        Decision::Answer(response) => Ok(response),
        Decision::PassThrough(request) => pass_through(inner, &shared, request).await,
        Decision::Run(request, Holder::Lease(lease)) => {
            execute(inner, shared, request, lease).await
        }
        Decision::Run(mut request, Holder::Transaction(held)) => {
            let cancelled = super::in_tx::CountCancelled::armed();
            request.extensions_mut().insert(held.slot.clone());
            let ending = respond::<_, St, _>(inner, request, None, &shared.config).await;
            let answer = super::in_tx::settle(&shared, held, ending).await;
            cancelled.disarm();
            answer
        }
    }
}

/// How a request that held its key ends.
pub(super) enum Ending<E> {
    /// A response to store: stored with the key (in the handler's transaction if it took one).
    Store(StoredResponse, Response<Body>),
    /// Not stored, but the handler's transaction commits: a response too large to keep.
    CommitAndRelease(Response<Body>),
    /// Rolled back and the key released; answered (or failed) as given, counted as `outcome`.
    Release(Result<Response<Body>, E>, &'static str),
}

/// Runs a request that holds its key's lease (lease mode), then settles it.
async fn execute<S, St, ResBody>(
    inner: BodyMapped<S>,
    shared: Arc<Shared<St>>,
    request: Request<Body>,
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
    let renew = (&shared.store, &lease, config.lease_ttl);
    let ending = respond(inner, request, Some(renew), config).await;
    settle(&shared, guard, &lease, ending).await
}

/// Calls the handler (renewing the lease meanwhile, in lease mode) and says how the request
/// ends.
async fn respond<S, St, ResBody>(
    inner: BodyMapped<S>,
    request: Request<Body>,
    renew: Option<(&St, &Lease<i64>, Duration)>,
    config: &Config,
) -> Ending<S::Error>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Send,
    S::Future: Send,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
    St: Store,
{
    match run_handler(inner, request, renew).await {
        Ok(Ok(response)) => ending(config, response).await,
        Ok(Err(error)) => Ending::Release(Err(error), "failed"),
        Err(panic) => {
            tracing::error!(
                panic = panic_message(&panic),
                "idempotency: handler panicked"
            );
            ending(config, Problem::handler_panicked().into_response()).await
        }
    }
}

/// What to do with the handler's response.
async fn ending<E>(config: &Config, response: Response<Body>) -> Ending<E> {
    let (parts, body) = response.into_parts();
    if !(config.store_if)(parts.status) {
        return Ending::Release(Ok(Response::from_parts(parts, body)), "released");
    }
    match read_limited(body, config.max_response_body).await {
        Ok(Limited::Complete(body)) => {
            let stored = StoredResponse {
                status: parts.status,
                headers: end_to_end(&parts.headers),
                body: body.clone(),
            };
            Ending::Store(stored, Response::from_parts(parts, Body::from(body)))
        }
        Ok(Limited::TooLarge { prefix, rest }) => {
            tracing::warn!(
                limit = config.max_response_body,
                "idempotency: response larger than max_response_body; not stored, key released"
            );
            Ending::CommitAndRelease(Response::from_parts(parts, chain(prefix, rest)))
        }
        Err(error) => {
            tracing::error!(%error, "idempotency: response body failed");
            Ending::Release(
                Ok(problem(Problem::response_body_failed(), "failed")),
                "failed",
            )
        }
    }
}

/// The one place a request under a lease (lease mode) finishes: the key is stored or released,
/// and the outcome is counted.
async fn settle<St: Store, E>(
    shared: &Shared<St>,
    guard: LeaseGuard<St>,
    lease: &Lease<i64>,
    ending: Ending<E>,
) -> Result<Response<Body>, E> {
    let (stored, response) = match ending {
        Ending::Release(answer, outcome) => {
            guard.release().await;
            count(outcome);
            return answer;
        }
        Ending::CommitAndRelease(response) => {
            guard.release().await;
            count("released");
            return Ok(response);
        }
        Ending::Store(stored, response) => (stored, response),
    };
    // The handler's effects already happened, so the client gets its response whatever the
    // store says.
    guard.disarm();
    match shared.store.complete(lease, &stored).await {
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
    Ok(response)
}

/// Puts a slot for the request's transaction in its extensions, when the layer is transactional.
fn tx_slot<St>(shared: &Shared<St>, request: &mut Request<Body>) -> Option<TxSlot> {
    let slot = TxSlot::new(&shared.transactions.as_ref()?.pool);
    request.extensions_mut().insert(slot.clone());
    Some(slot)
}

/// Calls the handler, catching a panic, and renews the lease (`renew`: store, lease and ttl)
/// every third of its ttl meanwhile.
async fn run_handler<S, St, ResBody>(
    inner: BodyMapped<S>,
    request: Request<Body>,
    renew: Option<(&St, &Lease<i64>, Duration)>,
) -> Result<Result<Response<Body>, S::Error>, Box<dyn std::any::Any + Send>>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Send,
    S::Future: Send,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
    St: Store,
{
    let mut call = pin!(AssertUnwindSafe(inner.call(request)).catch_unwind());
    let Some((store, lease, ttl)) = renew else {
        return call.await;
    };
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
    let slot = tx_slot(shared, &mut request);
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
