//! Routes: `GET /api/v1/notifications` (the caller's own) and `GET /openapi.json`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use commerce_platform::openapi::{Problem, SecuritySchemes};
use commerce_platform::{ApiError, Caller};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::domain::Kind;
use crate::repo::{self, StoredNotification};

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/notifications", get(list))
        .route("/openapi.json", get(openapi))
        .with_state(state)
}

/// `GET /api/v1/notifications` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only the notifications about this order.
    order_id: Option<Uuid>,
    /// How many notifications, 1 to 500.
    #[param(minimum = 1, maximum = 500, default = 100)]
    limit: Option<i64>,
}

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 500;

// The schema attributes above take literals only; this keeps them in step with the rules.
const _: () = assert!(DEFAULT_LIMIT == 100 && MAX_LIMIT == 500);

/// The caller's notifications.
#[derive(Debug, Serialize, ToSchema)]
struct Notifications {
    /// Oldest first.
    notifications: Vec<StoredNotification>,
}

/// The caller's notifications, oldest first.
///
/// Any bearer token; a customer sees only their own (those of the token's `sub`).
#[utoipa::path(
    get,
    path = "/api/v1/notifications",
    operation_id = "listNotifications",
    tag = "notifications",
    params(ListParams),
    responses(
        (status = 200, description = "The caller's notifications, oldest first", body = Notifications),
        (status = 400, description = "Invalid order id or limit, or an unknown parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn list(
    State(state): State<AppState>,
    Caller(claims): Caller,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Notifications>, ApiError> {
    let Query(params) = query?;
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let notifications = repo::list(&state.pool, &claims.sub, params.order_id, limit).await?;
    tracing::debug!(customer_id = %claims.sub, count = notifications.len(), "notification: listed");
    Ok(Json(Notifications { notifications }))
}

/// The service's OpenAPI document, served at `GET /openapi.json`.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "commerce notification service",
        description = "One notification per customer-visible event (order placed, confirmed, cancelled, shipped, delivered, payment refunded); driven by events, this API only reads."
    ),
    paths(list),
    components(schemas(Notifications, StoredNotification, Kind, Problem)),
    modifiers(&SecuritySchemes),
    tags((name = "notifications", description = "A customer's notifications"))
)]
pub struct ApiDoc;

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
