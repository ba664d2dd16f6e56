//! Cross-origin calls from browsers to the public API, allowed for the configured origins only
//! ([`Config::cors_origins`](crate::Config::cors_origins)).

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may keep a preflight's answer.
const MAX_AGE: Duration = Duration::from_secs(600);

/// The CORS layer of a service's public routes: pages from `origins` may call them with a
/// bearer token, a JSON body and an `Idempotency-Key`, and read `Location`, `Retry-After`,
/// `Idempotent-Replayed` and `X-Request-Id` from the answer; no other origin may. No cookies
/// are involved (tokens travel in `Authorization`), so credentials are not allowed.
pub fn layer(origins: &[HeaderValue]) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins.iter().cloned()))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([
            header::LOCATION,
            header::RETRY_AFTER,
            HeaderName::from_static("idempotent-replayed"),
            HeaderName::from_static("x-request-id"),
        ])
        .max_age(MAX_AGE)
}
