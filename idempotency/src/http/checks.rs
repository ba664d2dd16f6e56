//! The checks a request goes through before its handler may run: key, scope, body, fingerprint,
//! then the store's answer for the key.

use axum::body::Body;
use axum::extract::MatchedPath;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response};
use leases::Lease;

use super::body::{Limited, read_limited};
use super::config::{Shared, Transactions};
use super::outcome::{count, problem};
use super::replay::replay;
use super::store::{Acquire, ScopedKey, Store, StoredResponse, TakenIn};
use super::tx::TxSlot;
use crate::{Error, Fingerprint, IdempotencyKey, KeyPolicy, Problem};

/// What the checks decided for a request, before any handler runs.
pub(super) enum Decision<St> {
    /// Answered by the layer itself (rejected, replayed, in flight, store down); counted.
    Answer(Response<Body>),
    /// Runs without idempotency (safe method, no key, policy off, fail-open).
    PassThrough(Request<Body>),
    /// Runs holding the key.
    Run(Request<Body>, Holder<St>),
}

/// How a running request holds its key.
pub(super) enum Holder<St> {
    /// Lease mode: a committed lease.
    Lease(Lease<i64>),
    /// Transactional mode: the request's transaction took it.
    Transaction(InTx<St>),
}

/// A key held by the request's transaction, and what storing it needs.
pub(super) struct InTx<St> {
    pub(super) transactions: Transactions<St>,
    pub(super) slot: TxSlot,
    pub(super) key: ScopedKey,
    pub(super) fingerprint: Fingerprint,
    /// A lease of the lease mode, taken over in the transaction (rare; see [`TakenIn::Taken`]).
    pub(super) lease: Option<Lease<i64>>,
}

/// What the store said about a key, in either mode.
enum Found<St> {
    Free(Holder<St>),
    Busy,
    Completed(StoredResponse),
    Mismatch,
}

/// The checks: key, scope, body, fingerprint, then the store's answer.
pub(super) async fn decide<St: Store>(shared: &Shared<St>, request: Request<Body>) -> Decision<St> {
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
    let found = match &shared.transactions {
        Some(transactions) => take_in(shared, transactions, &key, &fingerprint).await,
        None => shared
            .store
            .acquire(&key, &fingerprint, config.lease_ttl, config.retention)
            .await
            .map(|acquired| match acquired {
                Acquire::Acquired(lease) => Found::Free(Holder::Lease(lease)),
                Acquire::InFlight { .. } => Found::Busy,
                Acquire::Completed(response) => Found::Completed(response),
                Acquire::Mismatch => Found::Mismatch,
            }),
    };
    match found {
        Ok(Found::Free(holder)) => Decision::Run(request, holder),
        Ok(Found::Completed(response)) => {
            count("replayed");
            Decision::Answer(replay(response))
        }
        Ok(Found::Busy) => reject(Problem::in_progress(config.retry_after), "in_flight"),
        Ok(Found::Mismatch) => reject(Problem::key_reused(), "mismatch"),
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

/// Transactional mode: begins the request's transaction and takes the key in it. A key that is
/// not free rolls the transaction back before the answer, so its lock is gone by then.
async fn take_in<St: Store>(
    shared: &Shared<St>,
    transactions: &Transactions<St>,
    key: &ScopedKey,
    fingerprint: &Fingerprint,
) -> Result<Found<St>, Error> {
    let config = &shared.config;
    let mut tx = transactions.pool.begin().await?;
    let lifetimes = (config.lease_ttl, config.retention);
    let taken = (transactions.take_in)(&shared.store, &mut tx, key, fingerprint, lifetimes).await?;
    let found = match taken {
        TakenIn::Taken(lease) => {
            return Ok(Found::Free(Holder::Transaction(InTx {
                transactions: transactions.clone(),
                slot: TxSlot::begun(&transactions.pool, tx),
                key: key.clone(),
                fingerprint: *fingerprint,
                lease,
            })));
        }
        TakenIn::Busy => Found::Busy,
        TakenIn::Completed(response) => Found::Completed(response),
        TakenIn::Mismatch => Found::Mismatch,
    };
    tx.rollback().await?;
    Ok(found)
}
