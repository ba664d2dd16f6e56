//! Typed request parts every service takes the same way.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use uuid::Uuid;

use crate::ApiError;

/// A route's single UUID path parameter (`/orders/{id}`, `/stock/{product_id}/add`), refused
/// with a problem+json 400 `bad-request` when it is not a UUID.
///
/// ```
/// use axum::{Json, Router, routing::get};
/// use commerce_platform::{ApiError, extract::PathId};
///
/// async fn read(PathId(id): PathId) -> Result<Json<String>, ApiError> {
///     Ok(Json(id.to_string()))
/// }
/// let app: Router = Router::new().route("/things/{id}", get(read));
/// # let _ = app;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<Uuid>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(PathId(id)),
            Err(rejection) => Err(ApiError::BadRequest(format!(
                "the id in the path is not a UUID: {}",
                rejection.body_text()
            ))),
        }
    }
}
