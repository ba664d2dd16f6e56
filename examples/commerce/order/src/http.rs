//! The HTTP API: routes, request and response shapes, validation, and the OpenAPI document.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use commerce_platform::extract::PathId;
use commerce_platform::openapi::{Problem, SecuritySchemes};
use commerce_platform::{ApiError, Caller, ServiceKey};
use idempotency::{IdempotencyLayer, KeyPolicy, PostgresStore, Tx};
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use crate::catalogue::{self, PriceError, Product};
use crate::domain::{self, Input, Order, OrderLine, OrderState};
use crate::{AppState, repo};

/// The largest request body accepted, in bytes (an order of 50 lines is about 4 KiB).
pub const MAX_BODY: usize = 64 * 1024;
/// How many orders a list returns unless `limit` says otherwise.
const DEFAULT_LIMIT: i64 = 50;
/// The most orders one list returns.
const MAX_LIMIT: i64 = 100;

/// `POST /api/v1/orders`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    /// 1 to 50 lines, each product at most once.
    pub lines: Vec<LineRequest>,
}

/// One requested line.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineRequest {
    /// The product.
    pub product_id: Uuid,
    /// 1 to 100 units.
    #[schema(minimum = 1, maximum = 100)]
    pub quantity: i32,
}

/// `GET /api/v1/orders` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// How many orders (1 to 100, default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Only orders older than this one (the last id of the previous page).
    pub before: Option<Uuid>,
}

impl From<PriceError> for ApiError {
    fn from(error: PriceError) -> Self {
        match error {
            PriceError::Unknown(_) | PriceError::Inactive(_) => {
                ApiError::Unprocessable(error.to_string())
            }
            PriceError::Database(error) => error.into(),
        }
    }
}

fn not_found() -> ApiError {
    ApiError::NotFound("no such order".into())
}

/// The routes, with authentication on `/api/v1` and the idempotency layer on order creation.
pub(crate) fn router(state: AppState) -> Router {
    let idempotency = IdempotencyLayer::transactional(PostgresStore::new(state.pool.clone()))
        .key_policy(KeyPolicy::Required)
        .max_request_body(MAX_BODY)
        .scope(|parts| {
            parts
                .extensions
                .get::<Caller>()
                .map(|Caller(claims)| claims.sub.clone())
        });
    Router::new()
        .route(
            "/api/v1/orders",
            post(create_order).route_layer(idempotency).get(list_orders),
        )
        .route("/api/v1/orders/{id}", get(get_order))
        .route("/api/v1/orders/{id}/cancel", post(cancel_order))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .route("/internal/v1/catalogue/{id}", get(catalogue_get))
        .route("/openapi.json", get(openapi))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Verifies the bearer token (401 otherwise) and hands the caller to the idempotency layer's
/// scope and to the handlers.
async fn authenticate(caller: Caller, mut request: Request, next: Next) -> Response {
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// Places an order.
///
/// Prices are read from the service's copy of the catalogue (see [`crate::catalogue`]) and
/// kept with the order. The order (`PENDING`) and
/// its `OrderPlaced` event commit together with the idempotency key's stored response: a retry
/// with the same key gets the same 201, and the order exists once.
#[utoipa::path(
    post,
    path = "/api/v1/orders",
    tag = "orders",
    request_body = CreateOrder,
    params(("Idempotency-Key" = String, Header, description = "Required; one key per order the client means to place.")),
    responses(
        (status = 201, description = "Placed (or replayed, with `Idempotent-Replayed: true`)", body = Order,
            headers(("location" = String, description = "/api/v1/orders/{id}"))),
        (status = 400, description = "Malformed JSON, unknown fields, invalid lines, or no Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A request with this key is in progress", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown (not yet announced) or inactive product, or the key was used for another request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn create_order(
    State(state): State<AppState>,
    Extension(Caller(claims)): Extension<Caller>,
    mut tx: Tx,
    body: Result<Json<CreateOrder>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    let requested: Vec<(Uuid, i32)> = request
        .lines
        .iter()
        .map(|line| (line.product_id, line.quantity))
        .collect();
    domain::validate_lines(&requested).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let ids: Vec<Uuid> = requested.iter().map(|&(id, _)| id).collect();
    // The order, its prices and its event go into the layer's transaction, which commits them
    // with the stored response. Prices come from the service's copy of the catalogue: no call
    // to another service while the transaction is open.
    let conn = tx.conn().await.map_err(|_| {
        ApiError::Unavailable("the database is unavailable; retry with the same key".into())
    })?;
    let products = catalogue::for_sale(conn, &ids).await?;
    let lines: Vec<OrderLine> = requested
        .iter()
        .zip(&products)
        .map(|(&(product_id, quantity), product)| OrderLine {
            product_id,
            quantity,
            unit_price_cents: product.price_cents,
        })
        .collect();
    let total = domain::total_cents(&lines)
        .ok_or_else(|| ApiError::Unprocessable("the order's total is too large".into()))?;
    let order = repo::insert(conn, Uuid::now_v7(), &claims.sub, &lines, total).await?;
    let event = order.placed_event().into_envelope();
    outbox::enqueue(
        conn,
        &commerce_platform::events::to_outbox(&event, &state.topics),
    )
    .await
    .map_err(crate::Error::from)?;
    tracing::info!(order_id = %order.id, event_id = %event.event_id, customer_id = %order.customer_id, total_cents = order.total_cents, "order placed (commits with the response)");
    metrics::counter!("orders_placed_total").increment(1);
    let location = format!("/api/v1/orders/{}", order.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(order),
    )
        .into_response())
}

/// Lists the caller's orders (live and archived), newest first.
#[utoipa::path(
    get,
    path = "/api/v1/orders",
    tag = "orders",
    params(ListParams),
    responses(
        (status = 200, description = "The caller's orders, newest first", body = [Order]),
        (status = 400, description = "Invalid query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn list_orders(
    State(state): State<AppState>,
    Extension(Caller(claims)): Extension<Caller>,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Vec<Order>>, ApiError> {
    let Query(params) = query?;
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1 to {MAX_LIMIT}"
        )));
    }
    let orders = repo::list(&state.pool, &claims.sub, params.before, limit).await?;
    Ok(Json(orders))
}

/// Reads one of the caller's orders.
#[utoipa::path(
    get,
    path = "/api/v1/orders/{id}",
    tag = "orders",
    params(("id" = Uuid, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order", body = Order),
        (status = 401, description = "Missing, invalid or expired token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order, or not the caller's", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn get_order(
    State(state): State<AppState>,
    Extension(Caller(claims)): Extension<Caller>,
    PathId(id): PathId,
) -> Result<Json<Order>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    match repo::find(&mut conn, id).await? {
        Some(order) if order.customer_id == claims.sub => Ok(Json(order)),
        _ => Err(not_found()),
    }
}

/// Cancels one of the caller's orders until it ships (`PENDING`, `RESERVED`, `PAID` or
/// `CONFIRMED`): it becomes `CANCELLED` ("cancelled by customer") and `OrderCancelled` is
/// published (inventory releases reserved units and restocks sold ones, payment refunds a
/// charge, shipping cancels a shipment not yet handed over).
#[utoipa::path(
    post,
    path = "/api/v1/orders/{id}/cancel",
    tag = "orders",
    params(("id" = Uuid, Path, description = "The order's id")),
    responses(
        (status = 200, description = "Cancelled", body = Order),
        (status = 401, description = "Missing, invalid or expired token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order, or not the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order is SHIPPED, COMPLETED, CANCELLED or FAILED", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn cancel_order(
    State(state): State<AppState>,
    Extension(Caller(claims)): Extension<Caller>,
    PathId(id): PathId,
) -> Result<Json<Order>, ApiError> {
    let mut tx = state.pool.begin().await?;
    let Some(locked) = repo::lock(&mut tx, id).await? else {
        // Archived orders are finished.
        return match repo::find(&mut tx, id).await? {
            Some(order) if order.customer_id == claims.sub => Err(cannot_cancel(order.state)),
            _ => Err(not_found()),
        };
    };
    if locked.customer_id != claims.sub {
        return Err(not_found());
    }
    let customer_id = locked.customer_id.clone();
    let transition = domain::apply(locked.state, &Input::CustomerCancelled)
        .ok_or_else(|| cannot_cancel(locked.state))?;
    repo::write(
        &mut tx,
        &state.topics,
        None,
        &[(id, customer_id)],
        &transition,
    )
    .await?;
    let order = repo::find(&mut tx, id).await?.ok_or_else(not_found)?;
    tx.commit().await?;
    Ok(Json(order))
}

/// A product as this service prices it (its copy of the catalogue), for other services and
/// tools: a product can be ordered once it is answered here as active.
#[utoipa::path(
    get,
    path = "/internal/v1/catalogue/{id}",
    operation_id = "internalGetCatalogueProduct",
    tag = "internal",
    params(("id" = Uuid, Path, description = "The product")),
    responses(
        (status = 200, description = "The product's price and listing, and the version they are from", body = Product),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong x-api-key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No announcement of this product consumed", body = Problem, content_type = "application/problem+json"),
    ),
    security(("apiKey" = []))
)]
async fn catalogue_get(
    State(state): State<AppState>,
    _: ServiceKey,
    PathId(id): PathId,
) -> Result<Json<Product>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    catalogue::find(&mut conn, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no product {id} in the catalogue")))
}

fn cannot_cancel(state: OrderState) -> ApiError {
    ApiError::Conflict(format!("an order in state {state} cannot be cancelled"))
}

/// The OpenAPI document of this API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "commerce order service",
        description = "Orders of the reference commerce system: place (with an Idempotency-Key), read, cancel."
    ),
    paths(create_order, list_orders, get_order, cancel_order, catalogue_get),
    components(schemas(CreateOrder, LineRequest, Order, OrderLine, OrderState, Product, Problem)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "orders", description = "A customer's orders"),
        (name = "internal", description = "Lookups for other services (API key)")
    )
)]
#[derive(Debug)]
pub struct ApiDoc;

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
