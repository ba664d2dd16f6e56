//! Where keys, their locks and their responses live: a [`Store`] per backend.

pub(crate) mod memory;
pub(crate) mod postgres;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use leases::Lease;
use sqlx::{PgConnection, PgPool};

use crate::{Error, Fingerprint, IdempotencyKey, Result};

/// A key in its scope: the same key sent by two principals, or to two routes, is two records.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScopedKey {
    /// The caller's scope (principal, tenant); empty when the layer has no scope function.
    pub scope: String,
    /// The route (axum's matched path, such as `/orders/{id}`), or empty when unknown.
    pub route: String,
    /// The client's key.
    pub key: IdempotencyKey,
}

/// A response as stored and replayed: status, end-to-end headers in order, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The status code.
    pub status: StatusCode,
    /// The headers, repeated ones (`Set-Cookie`) included, in their order.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl StoredResponse {
    /// Header names and values as two parallel lists (how the PostgreSQL store keeps them).
    pub(crate) fn header_lists(&self) -> (Vec<String>, Vec<Vec<u8>>) {
        self.headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .unzip()
    }

    /// The inverse of [`header_lists`](Self::header_lists).
    pub(crate) fn from_lists(
        status: i32,
        names: Vec<String>,
        values: Vec<Vec<u8>>,
        body: Vec<u8>,
    ) -> Result<Self> {
        let corrupt = |what: &str| Error::Corrupt(what.to_owned());
        let status = u16::try_from(status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| corrupt("status"))?;
        if names.len() != values.len() {
            return Err(corrupt("header lists of different lengths"));
        }
        let mut headers = HeaderMap::with_capacity(names.len());
        for (name, value) in names.into_iter().zip(values) {
            headers.append(
                HeaderName::try_from(name).map_err(|_| corrupt("header name"))?,
                HeaderValue::from_bytes(&value).map_err(|_| corrupt("header value"))?,
            );
        }
        Ok(Self {
            status,
            headers,
            body: Bytes::from(body),
        })
    }
}

/// What a store found when asked to take a key: [`Store::acquire`] (holding a lease) and
/// [`TransactionalStore::take_in`] (holding the key in a transaction, see [`TakenIn`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire<H = Lease<i64>> {
    /// The key was free (new, released, past its retention, or its holder's lease expired on the
    /// same request): the caller holds it and runs the request.
    Acquired(H),
    /// Another request holds the key (with a lease: one with the same fingerprint).
    InFlight {
        /// When that request's lease runs out; `None` when a transaction holds the key (it has no
        /// expiry: it ends with its transaction).
        lease_expires_at: Option<DateTime<Utc>>,
    },
    /// The key completed with this response (within its retention).
    Completed(StoredResponse),
    /// The key was used with a different fingerprint (and is not released or past retention).
    Mismatch,
}

impl<H> Acquire<H> {
    /// What the caller holds when the key was taken; otherwise the answer, which holds nothing.
    #[expect(
        clippy::result_large_err,
        reason = "moved once per request, like every `Acquire`; boxing it would only allocate"
    )]
    pub(crate) fn held<T>(self) -> Result<H, Acquire<T>> {
        match self {
            Self::Acquired(held) => Ok(held),
            Self::InFlight { lease_expires_at } => Err(Acquire::InFlight { lease_expires_at }),
            Self::Completed(response) => Err(Acquire::Completed(response)),
            Self::Mismatch => Err(Acquire::Mismatch),
        }
    }

    /// The same answer, with what the caller holds replaced by `f` of it.
    pub(crate) fn map<T>(self, f: impl FnOnce(H) -> T) -> Acquire<T> {
        self.held()
            .map_or_else(|answer| answer, |held| Acquire::Acquired(f(held)))
    }
}

/// The state of a stored key, for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The fingerprint of the request that took the key.
    pub fingerprint: Fingerprint,
    /// When the key was taken.
    pub created_at: DateTime<Utc>,
    /// When the key may be forgotten.
    pub retain_until: DateTime<Utc>,
    /// The current fencing token: how many times the key's lease was taken.
    pub token: i64,
    /// Where the key stands.
    pub state: RecordState,
}

/// Where a stored key stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// A request holds (or held, if expired) the lease and has not finished.
    InFlight {
        /// When the lease runs out.
        lease_expires_at: DateTime<Utc>,
    },
    /// The lease was released (5xx, panic, cancellation): the key is free.
    Released,
    /// The request finished with this response.
    Completed(StoredResponse),
}

/// A backend for idempotency keys: the in-flight lock is a lease with a fencing token, and
/// completing, renewing or releasing checks it, so a request that lost its lease changes nothing.
///
/// Two implementations ship: [`PostgresStore`](crate::PostgresStore) and
/// [`MemoryStore`](crate::MemoryStore).
pub trait Store: Send + Sync + 'static {
    /// Takes the key's lease for `lease_ttl` if the key is free, or reports why not. A key is
    /// free when it is new, past its retention, released, or held by an expired lease of a
    /// request with the same `fingerprint` (its holder died). A new key is retained for
    /// `retention`.
    ///
    /// # Errors
    ///
    /// When the store cannot be reached or refuses the operation; the layer answers 503.
    fn acquire(
        &self,
        key: &ScopedKey,
        fingerprint: &Fingerprint,
        lease_ttl: Duration,
        retention: Duration,
    ) -> impl Future<Output = Result<Acquire>> + Send;

    /// Extends a held lease to `ttl` from now. Returns `false` when the lease was lost.
    ///
    /// # Errors
    ///
    /// When the store cannot be reached.
    fn renew(&self, lease: &Lease<i64>, ttl: Duration)
    -> impl Future<Output = Result<bool>> + Send;

    /// Stores the response and ends the lease, if it is still held. Returns `false` (and stores
    /// nothing) when the lease was lost.
    ///
    /// # Errors
    ///
    /// When the store cannot be reached.
    fn complete(
        &self,
        lease: &Lease<i64>,
        response: &StoredResponse,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Frees the key (its next request runs, whatever its fingerprint), if the lease is still
    /// held. Returns `false` when it was lost.
    ///
    /// # Errors
    ///
    /// When the store cannot be reached.
    fn release(&self, lease: &Lease<i64>) -> impl Future<Output = Result<bool>> + Send;
}

/// What [`TransactionalStore::take_in`] found for a key. When the key is this transaction's
/// (`Acquired`), the request runs and its response is stored with
/// [`store_in`](TransactionalStore::store_in) before the commit. Usually nothing is written before
/// that (`Acquired(None)`); a key left by an expired lease of the lease mode is taken over with a
/// lease of its own, inside the transaction (`Acquired(Some(lease))`). A key held by another
/// request (its transaction, or a lease of the lease mode) is `InFlight`: answer 409 at once.
pub type TakenIn = Acquire<Option<Lease<i64>>>;

/// A [`Store`] whose keys can also be taken inside the handler's PostgreSQL transaction: what
/// [`IdempotencyLayer::transactional`](crate::IdempotencyLayer::transactional) needs for
/// [`Tx`](crate::Tx). [`PostgresStore`](crate::PostgresStore) is one.
///
/// The transaction holds the key: it takes a transaction-level lock on the key without waiting
/// (a concurrent request with the key finds it busy at once), and writes the completed key with
/// the response just before the commit. A rollback, however the request ended, frees the key at
/// once and leaves nothing.
pub trait TransactionalStore: Store {
    /// The pool the handlers' transactions come from (the store's own database).
    fn pool(&self) -> &PgPool;

    /// Takes the key inside the transaction on `conn` without waiting, or reports why not. A
    /// key is free when it is new, past its retention, released, or left by an expired lease of
    /// a request with the same `fingerprint` (taken over with a lease of `lease_ttl`).
    ///
    /// # Errors
    ///
    /// When a statement fails.
    fn take_in(
        &self,
        conn: &mut PgConnection,
        key: &ScopedKey,
        fingerprint: &Fingerprint,
        lease_ttl: Duration,
        retention: Duration,
    ) -> impl Future<Output = Result<TakenIn>> + Send;

    /// Stores the completed key with `response` in the transaction on `conn`, retained for
    /// `retention`; `lease` is the one [`take_in`](Self::take_in) took over, if any. Returns
    /// `false` (and stores nothing) when the key was taken by another request meanwhile (a
    /// lease-mode request on the same key): the transaction must then roll back.
    ///
    /// # Errors
    ///
    /// When the statement fails.
    fn store_in(
        &self,
        conn: &mut PgConnection,
        taken: (&ScopedKey, &Fingerprint, Option<&Lease<i64>>),
        response: &StoredResponse,
        retention: Duration,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Like [`release`](Store::release), inside the transaction on `conn`: for a lease taken over
    /// by [`take_in`](Self::take_in) when the handler's rows commit without a stored response
    /// (one too large to store).
    ///
    /// # Errors
    ///
    /// When the statement fails.
    fn release_in(
        &self,
        conn: &mut PgConnection,
        lease: &Lease<i64>,
    ) -> impl Future<Output = Result<bool>> + Send;
}
