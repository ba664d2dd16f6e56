//! [`Idempotency`]: the middleware's service and the one path each request follows.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use tower::{BoxError, Service};

use super::checks::{Decision, decide};
use super::handler::{Handler, respond};
use super::outcome::problem;
use super::shared::Shared;
use super::store::Store;
use super::tx::{commit, rollback};
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
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let handler: Handler<S::Error> = Box::new(move |request| {
            Box::pin(async move { Ok(inner.call(request).await?.map(Body::new)) })
        });
        let shared = Arc::clone(&self.shared);
        ResponseFuture {
            inner: Box::pin(handle(shared, request.map(Body::new), handler)),
        }
    }
}

/// Every request's path: the checks, then the handler, with its key held if it has one.
async fn handle<St, E>(
    shared: Arc<Shared<St>>,
    request: Request<Body>,
    handler: Handler<E>,
) -> Result<Response<Body>, E> {
    match decide(&shared, request).await {
        Decision::Answer(response) => Ok(response),
        Decision::PassThrough(request) => pass_through(&shared, request, handler).await,
        Decision::Run(mut request, held) => {
            held.enter(&mut request);
            let (answer, ending) = respond(handler, request, &*held, &shared.config).await;
            match held.settle(ending).await {
                Some(instead) => Ok(instead),
                None => answer,
            }
        }
    }
}

/// Runs a request without idempotency; a [`Tx`](crate::Tx) it takes (transactional mode)
/// commits when its response would be stored.
async fn pass_through<St, E>(
    shared: &Shared<St>,
    mut request: Request<Body>,
    handler: Handler<E>,
) -> Result<Response<Body>, E> {
    let slot = shared.mode.unkeyed(&shared.store);
    if let Some(slot) = &slot {
        request.extensions_mut().insert(slot.clone());
    }
    let response = handler(request).await;
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
