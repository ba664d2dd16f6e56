//! RFC 9457 problem details: every response the layer makes itself.
//!
//! Each response has `content-type: application/problem+json` and a body with a stable `type`
//! (this page, with the code as its fragment: [`TYPE_BASE`]`#<code>`), a `code`, `title`, `status`
//! and `detail`. The `detail` never contains an internal error message: those are logged. The
//! codes:
//!
//! ## idempotency-key-missing
//!
//! 400: The route requires an `Idempotency-Key` and the request has none.
//!
//! ## idempotency-key-invalid
//!
//! 400: The key is empty, longer than 255 characters, not printable ASCII, malformed, or the header
//! is repeated.
//!
//! ## request-body-unreadable
//!
//! 400: The request body could not be read.
//!
//! ## scope-missing
//!
//! 401: The layer's scope function found no principal or tenant for the request.
//!
//! ## request-in-progress
//!
//! 409: A request with this key is still running; retry after `Retry-After` seconds.
//!
//! ## idempotency-key-superseded
//!
//! 409: This request lost its lock on the key to a retry (it ran past its lease); its effects were
//! rolled back; retry to get the retry's outcome.
//!
//! ## request-body-too-large
//!
//! 413: A request with a key has a body over the layer's cap.
//!
//! ## idempotency-key-reused
//!
//! 422: The key was used for a different request (method, path, query, content type or body).
//!
//! ## handler-panicked
//!
//! 500: The handler panicked; the key was released (by default).
//!
//! ## response-body-failed
//!
//! 500: The handler's response body failed while it was read.
//!
//! ## transaction-unavailable
//!
//! 500: The handler asked for [`Tx`](crate::Tx) but the route is not behind an
//! [`IdempotencyLayer::transactional`](crate::IdempotencyLayer::transactional) layer, or took it
//! twice.
//!
//! ## idempotency-misconfigured
//!
//! 500: The store refused the layer's settings (a [`Store`](crate::Store) with limits of its
//! own). The layer's own settings cannot be invalid: they are checked when it is built
//! ([`IdempotencyLayer::lifetimes`](crate::IdempotencyLayer::lifetimes)).
//!
//! ## store-unavailable
//!
//! 503: The idempotency store failed, or the commit of the request's transaction did; retry after
//! `Retry-After` seconds with the same key, which replays the outcome if there was one and runs the
//! request otherwise.

use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, StatusCode};

/// Where the problem types are documented; a problem's `type` is this plus `#` and its code.
pub const TYPE_BASE: &str = "https://docs.rs/idempotency/latest/idempotency/problem/index.html";

/// A problem response (RFC 9457). Implements [`IntoResponse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    detail: String,
    retry_after: Option<Duration>,
}

impl Problem {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            title,
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub(crate) fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable code (the table above).
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The problem type URI: [`TYPE_BASE`]`#<code>`.
    pub fn type_uri(&self) -> String {
        format!("{TYPE_BASE}#{}", self.code)
    }

    pub(crate) fn key_missing() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "idempotency-key-missing",
            "Idempotency-Key required",
            "This route requires an Idempotency-Key header.",
        )
    }

    pub(crate) fn key_invalid(error: crate::KeyError) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "idempotency-key-invalid",
            "Invalid Idempotency-Key",
            format!("{error}."),
        )
    }

    pub(crate) fn body_unreadable() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "request-body-unreadable",
            "Request body unreadable",
            "The request body could not be read.",
        )
    }

    pub(crate) fn scope_missing() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "scope-missing",
            "No principal for the Idempotency-Key",
            "Requests with an Idempotency-Key on this route must be authenticated.",
        )
    }

    pub(crate) fn in_progress(retry_after: Duration) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "request-in-progress",
            "Request in progress",
            "A request with this Idempotency-Key is still being processed; retry later.",
        )
        .retry_after(retry_after)
    }

    pub(crate) fn superseded(retry_after: Duration) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "idempotency-key-superseded",
            "Request superseded",
            "This request ran past its lock on the Idempotency-Key and a retry took over; its \
             effects were rolled back. Retry to get the outcome.",
        )
        .retry_after(retry_after)
    }

    pub(crate) fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request-body-too-large",
            "Request body too large",
            format!("Requests with an Idempotency-Key may have at most {limit} bytes of body."),
        )
    }

    pub(crate) fn key_reused() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency-Key reused",
            "This Idempotency-Key was used for a different request (method, path, query, \
             content type or body).",
        )
    }

    pub(crate) fn handler_panicked() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "handler-panicked",
            "Internal error",
            "The request failed.",
        )
    }

    pub(crate) fn response_body_failed() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "response-body-failed",
            "Internal error",
            "The response could not be produced.",
        )
    }

    pub(crate) fn transaction_unavailable(detail: &'static str) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "transaction-unavailable",
            "Internal error",
            detail,
        )
    }

    pub(crate) fn misconfigured() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "idempotency-misconfigured",
            "Internal error",
            "The request could not be processed.",
        )
    }

    pub(crate) fn store_unavailable(retry_after: Duration) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            "Service unavailable",
            "The request could not be processed now; retry later with the same Idempotency-Key.",
        )
        .retry_after(retry_after)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": self.type_uri(),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        });
        let mut response = Response::new(Body::from(body.to_string()));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(after) = self.retry_after {
            // Whole seconds, at least one.
            let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn renders_problem_json() {
        let problem = Problem::in_progress(Duration::from_millis(1500));
        assert_eq!(problem.code(), "request-in-progress");
        let response = problem.into_response();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
        assert_eq!(response.headers()[RETRY_AFTER], "2");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(json["status"], 409);
        assert_eq!(json["code"], "request-in-progress");
        assert_eq!(json["type"], format!("{TYPE_BASE}#request-in-progress"));
    }
}
