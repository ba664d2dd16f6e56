//! The checks a request goes through before its handler may run: key, scope, body, fingerprint,
//! then the store's answer for the key.

use axum::body::Body;
use axum::extract::MatchedPath;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response};

use super::body::{Limited, read_limited};
use super::mode::Held;
use super::outcome::{count, problem};
use super::replay::replay;
use super::shared::Shared;
use super::store::{Acquire, ScopedKey};
use crate::{Error, Fingerprint, IdempotencyKey, KeyPolicy, Problem};

/// What the checks decided for a request, before any handler runs.
pub(super) enum Decision {
    /// Answered by the layer itself (rejected, replayed, in flight, store down); counted.
    Answer(Response<Body>),
    /// Runs without idempotency (safe method, no key, policy off, fail-open).
    PassThrough(Request<Body>),
    /// Runs holding the key.
    Run(Request<Body>, Box<dyn Held>),
}

/// The checks: key, scope, body, fingerprint, then the store's answer.
pub(super) async fn decide<St>(shared: &Shared<St>, request: Request<Body>) -> Decision {
    let config = &shared.config;
    if config.policy == KeyPolicy::Off || request.method().is_safe() {
        return Decision::PassThrough(request);
    }
    let reject = |p: Problem, outcome| Decision::Answer(problem(p, outcome));
    let (parts, body) = request.into_parts();
    let key = match IdempotencyKey::from_headers(&parts.headers) {
        Ok(Some(key)) => key,
        Ok(None) if config.policy == KeyPolicy::Required => {
            return reject(Problem::key_missing(), "rejected");
        }
        Ok(None) => return Decision::PassThrough(Request::from_parts(parts, body)),
        Err(error) => return reject(Problem::key_invalid(error), "rejected"),
    };
    let scope = match &config.scope {
        Some(scope) => match scope(&parts) {
            Some(scope) => scope,
            None => return reject(Problem::scope_missing(), "rejected"),
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
            return reject(Problem::body_too_large(config.max_request_body), "rejected");
        }
        Err(error) => {
            tracing::debug!(%error, "idempotency: request body unreadable");
            return reject(Problem::body_unreadable(), "rejected");
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
    let found = shared
        .mode
        .take(&shared.store, config, &key, &fingerprint)
        .await;
    match found {
        Ok(Acquire::Acquired(held)) => Decision::Run(request, held),
        Ok(Acquire::Completed(response)) => {
            count("replayed");
            Decision::Answer(replay(response))
        }
        Ok(Acquire::InFlight { .. }) => {
            reject(Problem::in_progress(config.retry_after), "in_flight")
        }
        Ok(Acquire::Mismatch) => reject(Problem::key_reused(), "mismatch"),
        Err(Error::InvalidConfig(reason)) => {
            tracing::error!(%reason, "idempotency: invalid layer configuration");
            reject(Problem::misconfigured(), "misconfigured")
        }
        Err(error) if config.fail_open => {
            tracing::warn!(
                %error,
                key = %key.key,
                "idempotency: store unavailable; running the request unprotected (fail open)"
            );
            count("fail_open");
            Decision::PassThrough(request)
        }
        Err(error) => {
            tracing::warn!(%error, key = %key.key, "idempotency: store unavailable");
            reject(
                Problem::store_unavailable(config.retry_after),
                "store_unavailable",
            )
        }
    }
}
