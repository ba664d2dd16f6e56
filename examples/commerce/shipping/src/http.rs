//! Routes: `GET /api/v1/shipments/{order_id}` (the owner or an admin),
//! `POST /api/v1/shipments/{order_id}/deliver` (admin) and `GET /openapi.json`.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use commerce_events::Event;
use commerce_platform::events::publish;
use commerce_platform::extract::PathId;
use commerce_platform::openapi::{Problem, SecuritySchemes};
use commerce_platform::{Admin, ApiError, Caller};
use utoipa::OpenApi;
use uuid::Uuid;

use crate::AppState;
use crate::domain::{self, OnDeliver, ShipmentState};
use crate::repo::{self, Shipment};

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/shipments/{order_id}", get(shipment))
        .route("/api/v1/shipments/{order_id}/deliver", post(deliver))
        .route("/openapi.json", get(openapi))
        .with_state(state)
}

fn not_found(order_id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no shipment for order {order_id}"))
}

/// The shipment of an order.
///
/// Admins read any shipment; a customer only the shipments of their own orders (any other is a
/// 404, as if it did not exist).
#[utoipa::path(
    get,
    path = "/api/v1/shipments/{order_id}",
    operation_id = "getShipment",
    tag = "shipments",
    params(("order_id" = Uuid, Path, description = "The order whose shipment to read")),
    responses(
        (status = 200, description = "The shipment", body = Shipment),
        (status = 400, description = "The order id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The order has no shipment, or is not the caller's", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn shipment(
    State(state): State<AppState>,
    Caller(claims): Caller,
    PathId(order_id): PathId,
) -> Result<Json<Shipment>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let is_admin = claims.roles.iter().any(|role| role == "admin");
    match repo::shipment_of(&mut conn, order_id).await? {
        Some(shipment) if is_admin || shipment.customer_id == claims.sub => {
            tracing::debug!(%order_id, caller = %claims.sub, "shipping: read");
            Ok(Json(shipment))
        }
        _ => Err(not_found(order_id)),
    }
}

/// Marks an order's shipment delivered.
///
/// Admins only. A `CREATED` shipment becomes `DELIVERED` and `ShipmentDelivered` is published;
/// an already delivered one is answered as it is, without a second event (so the call can be
/// retried safely); a `CANCELLED` one is refused.
#[utoipa::path(
    post,
    path = "/api/v1/shipments/{order_id}/deliver",
    operation_id = "deliverShipment",
    tag = "shipments",
    params(("order_id" = Uuid, Path, description = "The order whose shipment was delivered")),
    responses(
        (status = 200, description = "The delivered shipment", body = Shipment),
        (status = 400, description = "The order id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The order has no shipment", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The shipment is CANCELLED", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn deliver(
    State(state): State<AppState>,
    Admin(admin): Admin,
    PathId(order_id): PathId,
) -> Result<Json<Shipment>, ApiError> {
    let mut tx = state.pool.begin().await?;
    // Locked until the commit: a concurrent cancellation (or delivery) waits, then sees this one.
    let shipment = repo::lock_shipment(&mut tx, order_id)
        .await?
        .ok_or_else(|| not_found(order_id))?;
    match domain::on_deliver(shipment.state) {
        OnDeliver::AlreadyDelivered => Ok(Json(shipment)),
        OnDeliver::Refuse => Err(ApiError::Conflict(format!(
            "the shipment of order {order_id} is {}: a cancelled order is never delivered",
            shipment.state
        ))),
        OnDeliver::Deliver => {
            let shipment = repo::deliver(&mut tx, order_id).await?.ok_or_else(|| {
                ApiError::Internal("a locked CREATED shipment did not update".into())
            })?;
            let delivered = Event::ShipmentDelivered {
                order_id,
                shipment_id: shipment.shipment_id,
                customer_id: shipment.customer_id.clone(),
            };
            publish(&mut tx, &state.topics, None, [delivered]).await?;
            tx.commit().await?;
            tracing::info!(%order_id, shipment_id = %shipment.shipment_id, admin = %admin.sub, "shipping: delivered");
            Ok(Json(shipment))
        }
    }
}

/// The service's OpenAPI document, served at `GET /openapi.json`.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "commerce shipping service",
        description = "One shipment per confirmed order through a deterministic fake carrier, cancelled with its order; admins mark shipments delivered."
    ),
    paths(shipment, deliver),
    components(schemas(Shipment, ShipmentState, Problem)),
    modifiers(&SecuritySchemes),
    tags((name = "shipments", description = "Shipments of orders (the customer's own, or any for admins)"))
)]
pub struct ApiDoc;

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
