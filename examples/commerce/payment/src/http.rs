//! Routes: `GET /api/v1/payments/{order_id}` (admin) and `GET /openapi.json`.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use commerce_platform::extract::PathId;
use commerce_platform::openapi::{Problem, SecuritySchemes};
use commerce_platform::{Admin, ApiError};
use utoipa::OpenApi;

use crate::AppState;
use crate::domain::Status;
use crate::repo::{self, Payment};

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/payments/{order_id}", get(payment))
        .route("/openapi.json", get(openapi))
        .with_state(state)
}

/// The payment of an order.
///
/// Admins only.
#[utoipa::path(
    get,
    path = "/api/v1/payments/{order_id}",
    operation_id = "getPayment",
    tag = "payments",
    params(("order_id" = Uuid, Path, description = "The order whose payment to read")),
    responses(
        (status = 200, description = "The payment", body = Payment),
        (status = 400, description = "The order id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The order has no payment", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn payment(
    State(state): State<AppState>,
    Admin(admin): Admin,
    PathId(order_id): PathId,
) -> Result<Json<Payment>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let payment = repo::payment_of(&mut conn, order_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no payment for order {order_id}")))?;
    tracing::debug!(%order_id, admin = %admin.sub, "payment: read");
    Ok(Json(payment))
}

/// The service's OpenAPI document, served at `GET /openapi.json`.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "commerce payment service",
        description = "Charges reserved orders at most once through a fake provider and refunds cancelled ones; driven by events, this API only reads."
    ),
    paths(payment),
    components(schemas(Payment, Status, Problem)),
    modifiers(&SecuritySchemes),
    tags((name = "payments", description = "Payments of orders (admin)"))
)]
pub struct ApiDoc;

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
