//! [`IdempotencyLayer`]: the `Idempotency-Key` middleware's configuration.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use http::request::Parts;
use tower::Layer;

use crate::service::{Idempotency, Shared};
use crate::{Error, FingerprintOptions, Result};

/// Whether a route takes an `Idempotency-Key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum KeyPolicy {
    /// A request without the header gets `400` (`idempotency-key-missing`).
    Required,
    /// A request without the header runs as if the layer were not there. The default.
    #[default]
    Optional,
    /// The header is ignored: every request runs as if the layer were not there (handlers can
    /// still take a [`Tx`](crate::Tx)).
    Off,
}

/// A function from a request to its key scope (the principal or tenant); see
/// [`IdempotencyLayer::scope`].
pub(crate) type ScopeFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// Whether a response with this status is stored (and, for a handler that took a
/// [`Tx`](crate::Tx), whether its transaction commits): the default of
/// [`IdempotencyLayer::store_if`].
///
/// Every status is stored except server errors (5xx: the key is released, so a retry runs the
/// request again) and the client errors that mean the request was refused before it took effect:
/// malformed or invalid (400, 413, 415, 422 — axum's extractor rejections among them), not
/// authenticated or not allowed (401, 403), timed out or throttled (408, 429). A refused request
/// does not consume its key: the client can fix it and send it again under the same key.
pub fn stores_by_default(status: StatusCode) -> bool {
    !status.is_server_error()
        && !matches!(
            status.as_u16(),
            400 | 401 | 403 | 408 | 413 | 415 | 422 | 429
        )
}

/// Like [`stores_by_default`], and server errors are stored too (see
/// [`IdempotencyLayer::store_server_errors`]).
pub fn stores_server_errors_too(status: StatusCode) -> bool {
    status.is_server_error() || stores_by_default(status)
}

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
/// 3. The store takes the key's lease, or answers: the stored response is replayed with
///    `Idempotent-Replayed: true`; 409 with `Retry-After` while another request with the key
///    runs; 422 if the key was used for a different request; 503 if the store is down (or the
///    request runs unprotected with [`fail_open`](Self::fail_open)).
/// 4. The handler runs; the lease is renewed every third of its ttl while it does.
/// 5. A response that [should be stored](Self::store_if) and fits in
///    [`max_response_body`](Self::max_response_body) is stored, fenced by the lease (in the
///    handler's transaction if it took a [`Tx`](crate::Tx)); any other outcome releases the key.
///
/// Safe methods (`GET`, `HEAD`, `OPTIONS`, `TRACE`) and requests without a key (unless the key
/// is [required](Self::required)) pass through.
///
/// ```
/// use std::time::Duration;
/// use idempotency::{IdempotencyLayer, MemoryStore};
///
/// let layer = IdempotencyLayer::new(MemoryStore::new())
///     .required()
///     .lease_ttl(Duration::from_secs(10))
///     .scope(|parts| parts.headers.get("x-tenant")?.to_str().ok().map(str::to_owned));
/// layer.validate()?;
/// # Ok::<(), idempotency::Error>(())
/// ```
#[derive(Clone)]
pub struct IdempotencyLayer<St> {
    pub(crate) store: St,
    pub(crate) config: Config,
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) policy: KeyPolicy,
    pub(crate) lease_ttl: Duration,
    pub(crate) retention: Duration,
    pub(crate) max_request_body: usize,
    pub(crate) max_response_body: usize,
    pub(crate) retry_after: Duration,
    pub(crate) fail_open: bool,
    pub(crate) fingerprint: FingerprintOptions,
    pub(crate) release_on_cancel: bool,
    pub(crate) store_if: fn(StatusCode) -> bool,
    pub(crate) scope: Option<ScopeFn>,
}

impl<St> IdempotencyLayer<St> {
    /// A layer over `store` with the defaults every setter documents.
    pub const fn new(store: St) -> Self {
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
        }
    }

    /// Whether requests need a key. Default: [`KeyPolicy::Optional`].
    pub fn key_policy(mut self, policy: KeyPolicy) -> Self {
        self.config.policy = policy;
        self
    }

    /// Shorthand for [`key_policy`](Self::key_policy)`(KeyPolicy::Required)`.
    pub fn required(self) -> Self {
        self.key_policy(KeyPolicy::Required)
    }

    /// How long a request holds its key's in-flight lease; the layer renews it every third of
    /// this while the handler runs. When a process dies mid-request, its key is free again this
    /// long after the last renewal (not after the retention). A handler that stalls past it
    /// loses the key to a retry, and its response is then refused. Must be greater than zero.
    /// Default: 30 s.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.config.lease_ttl = ttl;
        self
    }

    /// How long a completed key is remembered (replayed, and refused for other requests),
    /// from when the request began. Checked on every read; delete old rows with
    /// [`PostgresStore::purge_expired`](crate::PostgresStore::purge_expired). Must be greater
    /// than zero. Default: 24 h.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.config.retention = retention;
        self
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
    /// decides whether a handler's [`Tx`](crate::Tx) commits. Default: [`stores_by_default`].
    pub fn store_if(mut self, predicate: fn(StatusCode) -> bool) -> Self {
        self.config.store_if = predicate;
        self
    }

    /// Whether server errors (5xx, handler panics included) are stored and replayed instead of
    /// releasing the key: [`store_if`](Self::store_if)`(`[`stores_server_errors_too`]`)`, or back
    /// to [`stores_by_default`]. Default: `false`.
    pub fn store_server_errors(self, on: bool) -> Self {
        self.store_if(if on {
            stores_server_errors_too
        } else {
            stores_by_default
        })
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

    /// Checks the configuration. A layer that fails this answers every request with a key with
    /// 500 (`idempotency-misconfigured`) and logs why; call it at startup.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a zero lease ttl or retention, or a retention shorter than
    /// the lease ttl.
    pub fn validate(&self) -> Result<()> {
        let Config {
            lease_ttl,
            retention,
            ..
        } = self.config;
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
        Ok(())
    }
}

impl<St: fmt::Debug> fmt::Debug for IdempotencyLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("store", &self.store)
            .field("config", &self.config)
            .finish()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("policy", &self.policy)
            .field("lease_ttl", &self.lease_ttl)
            .field("retention", &self.retention)
            .field("max_request_body", &self.max_request_body)
            .field("max_response_body", &self.max_response_body)
            .field("retry_after", &self.retry_after)
            .field("fail_open", &self.fail_open)
            .field("fingerprint", &self.fingerprint)
            .field("release_on_cancel", &self.release_on_cancel)
            .field("scoped", &self.scope.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, St: Clone> Layer<S> for IdempotencyLayer<St> {
    type Service = Idempotency<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency::new(
            inner,
            Arc::new(Shared {
                store: self.store.clone(),
                config: self.config.clone(),
            }),
        )
    }
}
