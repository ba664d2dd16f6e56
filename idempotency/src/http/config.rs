//! What an [`IdempotencyLayer`](crate::IdempotencyLayer) is configured with: read by the layer
//! that builds it and by the service that applies it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use http::request::Parts;

use crate::FingerprintOptions;

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
/// [`IdempotencyLayer::store_if`](crate::IdempotencyLayer::store_if).
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
/// [`IdempotencyLayer::store_if`](crate::IdempotencyLayer::store_if)).
pub fn stores_server_errors_too(status: StatusCode) -> bool {
    status.is_server_error() || stores_by_default(status)
}

/// The layer's settings, shared by every request the service handles.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_stores_what_took_effect() {
        for status in [200, 201, 202, 204, 302, 402, 404, 409, 410] {
            assert!(stores_by_default(
                StatusCode::from_u16(status).expect("status")
            ));
        }
        for status in [400, 401, 403, 408, 413, 415, 422, 429, 500, 502, 503] {
            assert!(!stores_by_default(
                StatusCode::from_u16(status).expect("status")
            ));
        }
        assert!(stores_server_errors_too(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(!stores_server_errors_too(StatusCode::UNPROCESSABLE_ENTITY));
    }
}
