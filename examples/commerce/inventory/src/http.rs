//! The admin HTTP API: stock figures, restocks, counts and movements (bearer JWT with the `admin`
//! role), and its OpenAPI document at `GET /openapi.json`.
//!
//! A change writes the stock row, its movement and a `StockLevelChanged` outbox event in one
//! transaction. Bad input is a problem+json 4xx and writes nothing.
//!
//! `POST /api/v1/stock/{product_id}/add` is not idempotent by nature, so it takes a required
//! `Idempotency-Key` ([`IdempotencyLayer`] in transactional mode, keys scoped by the admin's
//! `sub`): its writes commit together with the stored response, and a retry with the same key
//! replays the first answer instead of adding again. The admin check runs before the layer, so a
//! refused token never touches a key.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRef, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use commerce_events::Topics;
use commerce_platform::extract::PathId;
use commerce_platform::openapi::{Problem, SecuritySchemes};
use commerce_platform::{Admin, ApiError, Authenticator};
use idempotency::{IdempotencyLayer, KeyPolicy, PostgresStore, Tx};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use crate::Error;
use crate::domain::{self, Level, MAX_ADD, MovementKind, StockError};
use commerce_platform::events::publish;

use crate::events::{change, level_changed};
use crate::repo::{self, StockRow};

/// What the HTTP handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The inventory database.
    pub pool: PgPool,
    /// Verifies bearer tokens.
    pub auth: Authenticator,
    /// Where `StockLevelChanged` events go.
    pub topics: Topics,
}

impl FromRef<AppState> for Authenticator {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

/// The largest request body the idempotency layer reads (an `AddStock` is a few bytes).
pub const MAX_BODY: usize = 16 * 1024;

/// The API's routes (the operations routes are added by `commerce_platform::runtime::start`),
/// with the idempotency layer on the add and remove routes, behind the admin check.
pub(crate) fn router(state: AppState) -> Router {
    let idempotency = IdempotencyLayer::transactional(PostgresStore::new(state.pool.clone()))
        .key_policy(KeyPolicy::Required)
        .max_request_body(MAX_BODY)
        .scope(|parts| {
            parts
                .extensions
                .get::<Admin>()
                .map(|Admin(claims)| claims.sub.clone())
        });
    Router::new()
        .route(
            "/api/v1/stock/{product_id}",
            get(get_stock).put(adjust_stock),
        )
        .route(
            "/api/v1/stock/{product_id}/add",
            post(add_stock)
                .route_layer(idempotency.clone())
                .route_layer(middleware::from_fn_with_state(state.clone(), require_admin)),
        )
        .route(
            "/api/v1/stock/{product_id}/remove",
            post(remove_stock)
                .route_layer(idempotency)
                .route_layer(middleware::from_fn_with_state(state.clone(), require_admin)),
        )
        .route("/api/v1/stock/{product_id}/movements", get(list_movements))
        .route("/openapi.json", get(openapi))
        .with_state(state)
}

/// Verifies the bearer token and the admin role (401, 403) before the idempotency layer, and
/// hands the admin to the layer's scope and to the handler.
async fn require_admin(admin: Admin, mut request: Request, next: Next) -> Response {
    request.extensions_mut().insert(admin);
    next.run(request).await
}

/// `POST /api/v1/stock/{product_id}/add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddStock {
    /// Units to add, `1..=1_000_000`.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub quantity: i64,
}

/// `POST /api/v1/stock/{product_id}/remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveStock {
    /// Units to take out, `1..=1_000_000`, no more than are not reserved.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub quantity: i64,
    /// Why (`shipped to the outlet`, `damaged`), 1 to 200 characters; kept with the movement.
    pub reason: String,
}

/// `PUT /api/v1/stock/{product_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustStock {
    /// The counted total, at least the reserved units.
    #[schema(minimum = 0, maximum = 2_147_483_647)]
    pub total: i64,
}

/// A product's stock figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StockView {
    /// The product.
    pub product_id: Uuid,
    /// Units owned.
    pub total: i32,
    /// Units held by reservations.
    pub reserved: i32,
    /// `total - reserved`.
    pub available: i32,
    /// Increases with every change.
    pub version: i64,
}

impl From<&StockRow> for StockView {
    fn from(row: &StockRow) -> Self {
        Self {
            product_id: row.product_id,
            total: row.level.total,
            reserved: row.level.reserved,
            available: row.level.available(),
            version: row.version,
        }
    }
}

/// One change of a product's stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MovementView {
    /// Increasing with time.
    pub id: i64,
    /// The order that caused it (reserve, confirm, release).
    pub order_id: Option<Uuid>,
    /// `add`, `adjust`, `reserve`, `confirm`, `release`, `restock` or `remove`.
    pub kind: String,
    /// Change of the total.
    pub delta_total: i32,
    /// Change of the reserved units.
    pub delta_reserved: i32,
    /// Why, for an admin's removal.
    pub reason: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// A product's movements, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MovementsView {
    /// The product.
    pub product_id: Uuid,
    /// Newest first.
    pub movements: Vec<MovementView>,
}

/// `GET /api/v1/stock/{product_id}/movements` query.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MovementsQuery {
    /// How many, `1..=1000` (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// The JSON body as `T`: an object (serde would also accept an array for a struct), with no
/// unknown fields.
fn object<T: DeserializeOwned>(body: Result<Json<Value>, JsonRejection>) -> Result<T, ApiError> {
    let Json(value) = body?;
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        ));
    }
    serde_json::from_value(value).map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))
}

fn no_stock(product_id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no stock for product {product_id}"))
}

/// A product's stock figures.
#[utoipa::path(
    get,
    path = "/api/v1/stock/{product_id}",
    tag = "stock",
    params(("product_id" = Uuid, Path, description = "The product")),
    responses(
        (status = 200, description = "The figures", body = StockView),
        (status = 400, description = "Invalid product id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No stock for the product", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn get_stock(
    State(state): State<AppState>,
    _admin: Admin,
    PathId(product_id): PathId,
) -> Result<Json<StockView>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let row = repo::stock(&mut conn, product_id)
        .await?
        .ok_or_else(|| no_stock(product_id))?;
    Ok(Json(StockView::from(&row)))
}

/// Adds units (creating the product's stock at zero first if it has none).
///
/// The stock row, its `add` movement and the `StockLevelChanged` event commit together with the
/// key's stored response: a retry with the same key gets the same answer (with
/// `Idempotent-Replayed: true`) and the units are added once.
#[utoipa::path(
    post,
    path = "/api/v1/stock/{product_id}/add",
    tag = "stock",
    params(
        ("product_id" = Uuid, Path, description = "The product"),
        ("Idempotency-Key" = String, Header, description = "Required; one key per restock the client means to make."),
    ),
    request_body = AddStock,
    responses(
        (status = 200, description = "The new figures (or the first answer replayed, with `Idempotent-Replayed: true`)", body = StockView),
        (status = 400, description = "Invalid body or product id, or no Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The total would overflow, or a request with this key is in progress", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The key was used for another request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn add_stock(
    State(state): State<AppState>,
    Extension(Admin(admin)): Extension<Admin>,
    PathId(product_id): PathId,
    mut tx: Tx,
    json: Result<Json<Value>, JsonRejection>,
) -> Result<Json<StockView>, ApiError> {
    let body: AddStock = object(json)?;
    let quantity = quantity(body.quantity)?;
    let changed = change_in(
        &mut tx,
        &state,
        product_id,
        MovementKind::Add,
        None,
        |level| domain::add(level, quantity),
    )
    .await?;
    tracing::info!(%product_id, admin = %admin.sub, quantity, version = changed.version, "inventory: stock added (commits with the response)");
    Ok(Json(StockView::from(&changed)))
}

/// Takes units out of a product's stock (outbound, write-off), with a reason; refused below
/// the reserved units.
#[utoipa::path(
    post,
    path = "/api/v1/stock/{product_id}/remove",
    tag = "stock",
    params(
        ("product_id" = Uuid, Path, description = "The product"),
        ("Idempotency-Key" = String, Header, description = "Required; one key per removal the client means to make."),
    ),
    request_body = RemoveStock,
    responses(
        (status = 200, description = "The new figures (or the first answer replayed, with `Idempotent-Replayed: true`)", body = StockView),
        (status = 400, description = "Invalid body or product id, or no Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No stock for the product", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Fewer units than reserved would be left, or a request with this key is in progress", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The key was used for another request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn remove_stock(
    State(state): State<AppState>,
    Extension(Admin(admin)): Extension<Admin>,
    PathId(product_id): PathId,
    mut tx: Tx,
    json: Result<Json<Value>, JsonRejection>,
) -> Result<Json<StockView>, ApiError> {
    let body: RemoveStock = object(json)?;
    let quantity = quantity(body.quantity)?;
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > 200 {
        return Err(ApiError::BadRequest(
            "reason must be 1 to 200 characters".into(),
        ));
    }
    let why = Some(reason.to_owned());
    let changed = change_in(
        &mut tx,
        &state,
        product_id,
        MovementKind::Remove,
        why,
        |level| domain::remove(level, quantity),
    )
    .await?;
    tracing::info!(%product_id, admin = %admin.sub, quantity, reason, version = changed.version, "inventory: stock removed (commits with the response)");
    Ok(Json(StockView::from(&changed)))
}

/// A body's quantity of units: `1..=MAX_ADD`.
fn quantity(requested: i64) -> Result<i32, ApiError> {
    i32::try_from(requested)
        .ok()
        .filter(|q| (1..=MAX_ADD).contains(q))
        .ok_or_else(|| ApiError::BadRequest(format!("quantity must be between 1 and {MAX_ADD}")))
}

/// Applies `op` to the product's locked stock row in the idempotency layer's transaction (which
/// commits it with the stored response), with its movement and its `StockLevelChanged`. An add
/// sets up a row the product does not have yet; anything else needs one (404).
async fn change_in(
    tx: &mut Tx,
    state: &AppState,
    product_id: Uuid,
    kind: MovementKind,
    reason: Option<String>,
    op: impl FnOnce(Level) -> Result<Level, StockError>,
) -> Result<StockRow, ApiError> {
    let conn = tx.conn().await.map_err(|_| {
        ApiError::Unavailable("the database is unavailable; retry with the same key".into())
    })?;
    if kind == MovementKind::Add {
        repo::ensure_stocks(conn, &[product_id]).await?;
    }
    let row = repo::lock_stock(conn, &[product_id])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| no_stock(product_id))?;
    let after = op(row.level).map_err(Error::from)?;
    let changed = change(conn, row, after, kind, reason).await?;
    publish(conn, &state.topics, None, [level_changed(&changed)]).await?;
    Ok(changed)
}

/// Sets the total (a stock count); refused below the reserved units.
#[utoipa::path(
    put,
    path = "/api/v1/stock/{product_id}",
    tag = "stock",
    params(("product_id" = Uuid, Path, description = "The product")),
    request_body = AdjustStock,
    responses(
        (status = 200, description = "The new figures (unchanged, and nothing recorded, when the total is the same)", body = StockView),
        (status = 400, description = "Invalid body or product id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No stock for the product", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The total is below the reserved units", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn adjust_stock(
    State(state): State<AppState>,
    Admin(admin): Admin,
    PathId(product_id): PathId,
    json: Result<Json<Value>, JsonRejection>,
) -> Result<Json<StockView>, ApiError> {
    let body: AdjustStock = object(json)?;
    if !(0..=i64::from(i32::MAX)).contains(&body.total) {
        return Err(ApiError::BadRequest(format!(
            "total must be between 0 and {}",
            i32::MAX
        )));
    }
    let mut tx = state.pool.begin().await?;
    let row = repo::lock_stock(&mut tx, &[product_id])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| no_stock(product_id))?;
    let after = domain::adjust(row.level, body.total).map_err(Error::from)?;
    if after == row.level {
        return Ok(Json(StockView::from(&row)));
    }
    let changed = change(&mut tx, row, after, MovementKind::Adjust, None).await?;
    publish(&mut tx, &state.topics, None, [level_changed(&changed)]).await?;
    tx.commit().await?;
    tracing::info!(%product_id, admin = %admin.sub, total = after.total, version = changed.version, "inventory: stock adjusted");
    Ok(Json(StockView::from(&changed)))
}

/// A product's movements, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/stock/{product_id}/movements",
    tag = "stock",
    params(("product_id" = Uuid, Path, description = "The product"), MovementsQuery),
    responses(
        (status = 200, description = "The movements", body = MovementsView),
        (status = 400, description = "Invalid product id or limit", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No stock for the product", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn list_movements(
    State(state): State<AppState>,
    _admin: Admin,
    PathId(product_id): PathId,
    query: Result<Query<MovementsQuery>, QueryRejection>,
) -> Result<Json<MovementsView>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 1000".into(),
        ));
    }
    let mut conn = state.pool.acquire().await?;
    if repo::stock(&mut conn, product_id).await?.is_none() {
        return Err(no_stock(product_id));
    }
    let movements = repo::movements(&mut conn, product_id, limit)
        .await?
        .into_iter()
        .map(|m| MovementView {
            id: m.id,
            order_id: m.order_id,
            kind: m.kind,
            delta_total: m.delta_total,
            delta_reserved: m.delta_reserved,
            reason: m.reason,
            at: m.at,
        })
        .collect();
    Ok(Json(MovementsView {
        product_id,
        movements,
    }))
}

/// The OpenAPI document of this API.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "commerce inventory",
        description = "Stock of the reference commerce system: figures, restocks (with an Idempotency-Key), counts and movements. Every route needs a bearer JWT with the admin role."
    ),
    paths(get_stock, add_stock, remove_stock, adjust_stock, list_movements),
    components(schemas(AddStock, RemoveStock, AdjustStock, StockView, MovementView, MovementsView, Problem)),
    modifiers(&SecuritySchemes),
    tags((name = "stock", description = "Stock figures and their changes"))
)]
pub struct ApiDoc;

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
