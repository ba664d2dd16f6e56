//! [`IdempotencyLayer`]: the `Idempotency-Key` middleware's configuration.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use http::request::Parts;
use tower::Layer;

use super::config::{Config, KeyPolicy, stores_by_default};
use super::mode::{LeaseMode, Mode, TransactionalMode};
use super::service::Idempotency;
use super::shared::Shared;
use super::store::{Store, TransactionalStore};
use crate::{Error, FingerprintOptions, Result};

/// A [`tower::Layer`] that makes requests with an `Idempotency-Key` header take effect once.
///
/// For each request with a key, on a method that is not safe (`POST`, `PUT`, `PATCH`, `DELETE`,
/// ...):
///
/// 1. The key is checked (400 if malformed) and scoped: the [scope](Self::scope) (principal or
///    tenant) plus the route (axum's `MatchedPath` when the layer runs after routing, as with
///    [`Router::route_layer`](axum::Router::route_layer) or on a method router; empty
///    otherwise).
/// 2. The body is read (413 over [`max_request_body`](Self::max_request_body)) and the request
///    [fingerprinted](crate::Fingerprint).
/// 3. The store takes the key (in transactional mode inside the request's transaction, begun
///    here; in lease mode as a committed lease), or answers: the stored response is replayed with
///    `Idempotent-Replayed: true`; 409 with `Retry-After` while another request with the key
///    runs; 422 if the key was used for a different request; 503 if the store is down (or the
///    request runs unprotected with [`fail_open`](Self::fail_open)).
/// 4. The handler runs; in lease mode the lease is renewed every third of its ttl while it does.
/// 5. A response that [should be stored](Self::store_if) and fits in
///    [`max_response_body`](Self::max_response_body) is stored, fenced by the lease; in
///    transactional mode in the request's transaction, which then commits. Any other outcome
///    releases the key (in transactional mode: rolls the transaction back).
///
/// Safe methods (`GET`, `HEAD`, `OPTIONS`, `TRACE`) and requests without a key (unless the key
/// is [required](KeyPolicy::Required)) pass through.
///
/// ```
/// use std::time::Duration;
/// use idempotency::{IdempotencyLayer, KeyPolicy, MemoryStore};
///
/// let layer = IdempotencyLayer::new(MemoryStore::new())
///     .lifetimes(Duration::from_secs(10), Duration::from_secs(24 * 3600))?
///     .key_policy(KeyPolicy::Required)
///     .scope(|parts| parts.headers.get("x-tenant")?.to_str().ok().map(str::to_owned));
/// # let _ = layer;
/// # Ok::<(), idempotency::Error>(())
/// ```
pub struct IdempotencyLayer<St> {
    store: St,
    config: Config,
    mode: Arc<dyn Mode<St>>,
}

impl<St: Clone> Clone for IdempotencyLayer<St> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            config: self.config.clone(),
            mode: Arc::clone(&self.mode),
        }
    }
}

impl<St: TransactionalStore> IdempotencyLayer<St> {
    /// Transactional mode, for handlers whose effects are all in the database: each keyed
    /// request runs in a transaction the layer begins before the handler, which takes the key in
    /// it ([`TransactionalStore::take_in`]: a lock taken without waiting, so a concurrent
    /// duplicate gets 409 at once). The handler writes through [`Tx`](crate::Tx); the response
    /// is stored in the same transaction, and one commit makes both durable. There is no lease
    /// to renew and no separate commit for the lock; the connection is held for the whole
    /// handler, so a handler that waits on slow calls to other systems, or whose effects are
    /// outside the database, belongs in lease mode ([`new`](Self::new)). The lease ttl only
    /// applies to a key taken over from an expired lease of the lease mode (after a route changed
    /// modes). While a request runs, its key has no row yet: [`PostgresStore::get`](crate::PostgresStore::get) shows only
    /// completed keys. Requests without a key get a [`Tx`](crate::Tx) too, begun at its first
    /// use.
    ///
    /// ```
    /// use idempotency::{IdempotencyLayer, KeyPolicy, PostgresStore};
    ///
    /// # fn layer(pool: sqlx::PgPool) {
    /// let layer = IdempotencyLayer::transactional(PostgresStore::new(pool))
    ///     .key_policy(KeyPolicy::Required);
    /// # let _ = layer; }
    /// ```
    pub fn transactional(store: St) -> Self {
        Self {
            mode: Arc::new(TransactionalMode),
            ..Self::new(store)
        }
    }
}

impl<St: Store> IdempotencyLayer<St> {
    /// Lease mode, over `store`, with the defaults every setter documents: for handlers with
    /// effects outside the database. The key is locked by a committed lease before the handler
    /// runs, renewed while it runs, and the response is stored after it returns. Handlers behind
    /// it cannot take a [`Tx`](crate::Tx); see [`transactional`](Self::transactional).
    pub fn new(store: St) -> Self {
        Self {
            store,
            config: Config {
                policy: KeyPolicy::Optional,
                lease_ttl: Duration::from_secs(30),
                retention: Duration::from_secs(24 * 60 * 60),
                max_request_body: 1024 * 1024,
                max_response_body: 1024 * 1024,
                retry_after: Duration::from_secs(1),
                fail_open: false,
                fingerprint: FingerprintOptions::new(),
                release_on_cancel: true,
                store_if: stores_by_default,
                scope: None,
            },
            mode: Arc::new(LeaseMode),
        }
    }
}

impl<St> IdempotencyLayer<St> {
    /// Whether requests need a key. Default: [`KeyPolicy::Optional`].
    pub fn key_policy(mut self, policy: KeyPolicy) -> Self {
        self.config.policy = policy;
        self
    }

    /// How long a request holds its key's in-flight lease, and how long a completed key is
    /// remembered. Defaults: 30 s and 24 h.
    ///
    /// The layer renews the lease every third of `lease_ttl` while the handler runs. When a
    /// process dies mid-request, its key is free again this long after the last renewal (not
    /// after the retention). A handler that stalls past it loses the key to a retry, and its
    /// response is then refused.
    ///
    /// `retention` counts from when the request began; within it the key's response is replayed
    /// and other requests with the key are refused. Checked on every read; delete old rows with
    /// [`PostgresStore::purge_expired`](crate::PostgresStore::purge_expired).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when either is zero or the retention is shorter than the lease
    /// ttl: a layer is refused when it is built, never at its first request.
    pub fn lifetimes(mut self, lease_ttl: Duration, retention: Duration) -> Result<Self> {
        if lease_ttl.is_zero() || retention.is_zero() {
            return Err(Error::InvalidConfig(
                "the lease ttl and the retention must be greater than zero".into(),
            ));
        }
        if retention < lease_ttl {
            return Err(Error::InvalidConfig(format!(
                "the retention ({retention:?}) must not be shorter than the lease ttl \
                 ({lease_ttl:?})"
            )));
        }
        self.config.lease_ttl = lease_ttl;
        self.config.retention = retention;
        Ok(self)
    }

    /// The largest request body accepted with a key, in bytes (the body is read whole to
    /// fingerprint it); larger ones get 413 before anything is stored. Default: 1 MiB.
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.config.max_request_body = bytes;
        self
    }

    /// The largest response body stored, in bytes. A larger response is sent to the client but
    /// not stored: the key is released (a retry runs the request again) and a warning logged;
    /// a handler's [`Tx`](crate::Tx) still commits. Default: 1 MiB.
    pub fn max_response_body(mut self, bytes: usize) -> Self {
        self.config.max_response_body = bytes;
        self
    }

    /// The `Retry-After` sent with 409 (request in progress) and 503 (store unavailable).
    /// Default: 1 s.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.config.retry_after = after;
        self
    }

    /// When the store cannot be reached: `false` answers 503 (fail closed: no request runs
    /// unprotected); `true` runs the request without idempotency and logs a warning. Default:
    /// `false`.
    pub fn fail_open(mut self, on: bool) -> Self {
        self.config.fail_open = on;
        self
    }

    /// Whether JSON bodies are fingerprinted as canonical JSON (key order and whitespace do not
    /// make a different request); see [`FingerprintOptions::canonical_json`]. Default: `false`.
    pub fn canonical_json(mut self, on: bool) -> Self {
        self.config.fingerprint = self.config.fingerprint.canonical_json(on);
        self
    }

    /// What happens to the key when the request's future is dropped before the handler
    /// finished (the client went away, a timeout layer fired): `true` releases it, so a retry
    /// runs at once; `false` keeps it locked until its lease expires (choose this when handlers
    /// have effects outside their [`Tx`](crate::Tx) that may already have happened). A handler
    /// panic is answered with 500 and treated like any other 5xx. Default: `true`.
    pub fn release_on_cancel(mut self, on: bool) -> Self {
        self.config.release_on_cancel = on;
        self
    }

    /// Which responses are stored (and replayed); for the others the key is released. It also
    /// decides whether a handler's [`Tx`](crate::Tx) commits. Default: [`stores_by_default`];
    /// [`stores_server_errors_too`](crate::stores_server_errors_too) also stores server errors (5xx, handler panics included).
    pub fn store_if(mut self, predicate: fn(StatusCode) -> bool) -> Self {
        self.config.store_if = predicate;
        self
    }

    /// The key's scope: a function from the request to the principal or tenant whose keys are
    /// separate from everyone else's, typically read from an extension that an authentication
    /// layer (placed outside this one) inserted. A request with a key for which it returns
    /// `None` gets 401 (`scope-missing`). Default: none (one scope for all clients, which is
    /// only safe when clients cannot see each other's responses).
    pub fn scope<F>(mut self, scope: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.config.scope = Some(Arc::new(scope));
        self
    }
}

impl<St: fmt::Debug> fmt::Debug for IdempotencyLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("store", &self.store)
            .field("config", &self.config)
            .field("mode", &self.mode)
            .finish()
    }
}

impl<S, St: Clone> Layer<S> for IdempotencyLayer<St> {
    type Service = Idempotency<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency::new(
            inner,
            Arc::new(Shared {
                store: Arc::new(self.store.clone()),
                config: self.config.clone(),
                mode: Arc::clone(&self.mode),
            }),
        )
    }
}
