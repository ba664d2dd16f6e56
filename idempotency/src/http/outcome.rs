//! How each request's outcome is counted (`idempotency_requests_total{outcome}`) and, when the
//! layer answers it itself, answered.

use axum::body::Body;
use axum::response::IntoResponse;
use http::Response;

use crate::Problem;

/// Counts a request's outcome.
pub(super) fn count(outcome: &'static str) {
    metrics::counter!("idempotency_requests_total", "outcome" => outcome).increment(1);
}

/// Counts the outcome and answers with `problem`.
pub(super) fn problem(problem: Problem, outcome: &'static str) -> Response<Body> {
    count(outcome);
    problem.into_response()
}
