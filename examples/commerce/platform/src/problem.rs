//! RFC 9457 problem+json errors with stable codes; internals are logged, never sent.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::openapi::Problem;

/// An error a handler returns; the response is `application/problem+json`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or fails validation.
    #[error("{0}")]
    BadRequest(String),
    /// 401: missing or invalid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: valid credentials without the needed role.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such resource (or not the caller's).
    #[error("{0}")]
    NotFound(String),
    /// 409: the resource is in a state that forbids the action.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is larger than the route accepts.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: the body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed, but refers to something that cannot be used (an unknown product).
    #[error("{0}")]
    Unprocessable(String),
    /// 429: over a rate limit; the answer carries `Retry-After`.
    #[error("too many requests; retry in {retry_after} s")]
    TooManyRequests {
        /// Seconds until a request is allowed again.
        retry_after: u64,
    },
    /// 503: a dependency (database, another service) is unavailable.
    #[error("{0}")]
    Unavailable(String),
    /// 500: anything else; the detail is logged, the client sees a generic message.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// `(status, stable code)`.
    pub fn kind(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type")
            }
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            ApiError::TooManyRequests { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "too-many-requests")
            }
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// A transient database failure (no connection free in time, a lost connection, a
/// serialization failure) is a 503 the client may retry; anything else is a 500.
impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if leases::retry::is_retriable_db_error(&e) {
            tracing::warn!(error = %e, "database busy or unavailable");
            ApiError::Unavailable("the database is busy or unavailable; retry later".into())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

/// A failed outbox write: a 503 when transient (as [`From<sqlx::Error>`]), else a 500.
impl From<outbox::Error> for ApiError {
    fn from(e: outbox::Error) -> Self {
        if e.is_retriable() {
            tracing::warn!(error = %e, "database busy or unavailable");
            ApiError::Unavailable("the database is busy or unavailable; retry later".into())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

/// Body rejections keep their status when it is 413 (too large) or 415 (not JSON); every other
/// one (malformed JSON, an unknown field, a wrong type) is a 400.
impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(e.body_text()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(e.body_text()),
            _ => ApiError::BadRequest(e.body_text()),
        }
    }
}

/// A query string that does not parse (an unknown parameter, a wrong type) is a 400.
impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::BadRequest(e.body_text())
    }
}

/// A problem+json response; `code` is stable and `type` is derived from it.
fn problem(status: StatusCode, code: &str, detail: impl Into<String>) -> Response {
    let body = Problem {
        kind: format!("https://errors.commerce.example/{code}"),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail: detail.into(),
        code: code.to_owned(),
        instance: None,
        timestamp: None,
    };
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.kind();
        let detail = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                "the server failed to handle the request".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = problem(status, code, detail);
        if let ApiError::TooManyRequests { retry_after } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        response
    }
}

/// The largest problem+json body [`stamp`] reads; problems are a few hundred bytes.
const MAX_PROBLEM: usize = 64 * 1024;

/// Middleware that adds `instance` (the request's path, unless the problem names one) and
/// `timestamp` (now, RFC 3339) to every `application/problem+json` answer, whichever part of
/// the stack wrote it (a handler's [`ApiError`], an extractor's rejection, the idempotency
/// layer). Other answers pass untouched. [`runtime::start`](crate::runtime::start) puts it on
/// every service's routes.
pub async fn stamp(request: Request, next: Next) -> Response {
    let instance = request.uri().path().to_owned();
    let response = next.run(request).await;
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/problem+json"));
    if !is_problem {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_PROBLEM).await {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::error!(%error, "a problem+json body could not be read");
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the server failed to handle the request",
            );
        }
    };
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_slice(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    fields
        .entry("instance")
        .or_insert_with(|| serde_json::Value::String(instance));
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    fields.insert("timestamp".to_owned(), serde_json::Value::String(now));
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = serde_json::to_vec(&fields).unwrap_or_else(|_| bytes.to_vec());
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn problems_carry_their_request_path_and_a_timestamp() {
        use axum::routing::get;
        use tower::ServiceExt as _;
        let app = axum::Router::new()
            .route(
                "/things/{id}",
                get(|| async { ApiError::NotFound("no such thing".into()) }),
            )
            .route("/ok", get(|| async { "fine" }))
            .layer(axum::middleware::from_fn(stamp));
        let call = |uri: &'static str| {
            let app = app.clone();
            async move {
                let request = Request::get(uri).body(Body::empty()).expect("request");
                let response = app.oneshot(request).await.expect("answer");
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), MAX_PROBLEM)
                    .await
                    .expect("body");
                (status, body)
            }
        };
        let (status, body) = call("/things/7?verbose=1").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let problem: Problem = serde_json::from_slice(&body).expect("a problem");
        assert_eq!(problem.code, "not-found");
        assert_eq!(problem.instance.as_deref(), Some("/things/7"));
        let at = problem.timestamp.expect("a timestamp");
        assert!(chrono::DateTime::parse_from_rfc3339(&at).is_ok(), "{at}");
        let (status, body) = call("/ok").await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"fine"[..]));
    }

    #[test]
    fn transient_database_errors_are_retryable_503s() {
        let status = |e: sqlx::Error| ApiError::from(e).kind().0;
        assert_eq!(
            status(sqlx::Error::PoolTimedOut),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(sqlx::Error::RowNotFound),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
