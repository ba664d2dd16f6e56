//! Routes: `GET /api/v1/payments/{order_id}` (admin) and `GET /openapi.json`.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use commerce_platform::{Admin, ApiError};
use uuid::Uuid;

use crate::AppState;
use crate::repo::{self, Payment};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/payments/{order_id}", get(payment))
        .route("/openapi.json", get(openapi))
}

async fn payment(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(order_id): Path<String>,
) -> Result<Json<Payment>, ApiError> {
    let order_id: Uuid = order_id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{order_id:?} is not an order id (a UUID)")))?;
    let mut conn = state.pool.acquire().await?;
    let payment = repo::payment_of(&mut conn, order_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no payment for order {order_id}")))?;
    tracing::debug!(%order_id, admin = %admin.sub, "payment: read");
    Ok(Json(payment))
}

async fn openapi() -> Json<serde_json::Value> {
    Json(document())
}

/// The service's OpenAPI 3.1 document.
pub(crate) fn document() -> serde_json::Value {
    serde_json::json!({
        "openapi": "3.1.0",
        "info": {
            "title": "commerce payment service",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Charges reserved orders at most once through a fake provider and refunds cancelled ones; driven by events, this API only reads."
        },
        "paths": {
            "/api/v1/payments/{order_id}": {
                "get": {
                    "summary": "The payment of an order",
                    "operationId": "getPayment",
                    "security": [{ "bearer": [] }],
                    "parameters": [{
                        "name": "order_id", "in": "path", "required": true,
                        "schema": { "type": "string", "format": "uuid" }
                    }],
                    "responses": {
                        "200": {
                            "description": "The payment",
                            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Payment" } } }
                        },
                        "400": { "$ref": "#/components/responses/Problem" },
                        "401": { "$ref": "#/components/responses/Problem" },
                        "403": { "$ref": "#/components/responses/Problem" },
                        "404": { "$ref": "#/components/responses/Problem" }
                    }
                }
            }
        },
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "HS256; the `admin` role" }
            },
            "schemas": {
                "Payment": {
                    "type": "object",
                    "required": ["order_id", "payment_id", "customer_id", "amount_cents", "status", "reason", "created_at", "updated_at"],
                    "properties": {
                        "order_id": { "type": "string", "format": "uuid" },
                        "payment_id": { "type": "string", "format": "uuid" },
                        "customer_id": { "type": "string" },
                        "amount_cents": { "type": "integer", "format": "int64" },
                        "status": { "type": "string", "enum": ["PENDING", "APPROVED", "DECLINED", "REFUNDED"] },
                        "reason": { "type": ["string", "null"], "description": "Why it was declined or refunded" },
                        "created_at": { "type": "string", "format": "date-time" },
                        "updated_at": { "type": "string", "format": "date-time" }
                    }
                },
                "Problem": commerce_platform::problem::openapi_schema()
            },
            "responses": {
                "Problem": commerce_platform::problem::openapi_response()
            }
        }
    })
}
