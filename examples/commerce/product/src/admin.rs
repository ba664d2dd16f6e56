//! The admin catalogue: create, change and list products (bearer JWT with the `admin` role).
//!
//! `POST /api/v1/products` is not idempotent by nature, so it takes a required `Idempotency-Key`
//! ([`IdempotencyLayer`] in transactional mode, keys scoped by the admin's `sub`): the product
//! row commits together with the stored response, and a retry with the same key replays the
//! first answer instead of creating another product. The admin check runs before the layer, so a
//! refused token never touches a key. The other admin routes are idempotent by nature.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use commerce_platform::extract::PathId;
use commerce_platform::openapi::Problem;
use commerce_platform::{Admin, ApiError};
use idempotency::{IdempotencyLayer, KeyPolicy, PostgresStore, Tx};
use serde::{Deserialize, Serialize};
use sqlx::Connection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::announce::announce;
use crate::domain;
use crate::http::{Page, invalid, page, stock};
use crate::repo::{self, Product};

/// The largest request body the idempotency layer reads when creating a product (a description
/// of 4000 characters is at most 24 KiB of JSON).
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// `POST /api/v1/products`: [`create`] behind the idempotency layer, behind the admin check.
pub(crate) fn create_route(state: &AppState) -> MethodRouter<AppState> {
    let idempotency = IdempotencyLayer::transactional(PostgresStore::new(state.pool.clone()))
        .key_policy(KeyPolicy::Required)
        .max_request_body(MAX_BODY)
        .scope(|parts| {
            parts
                .extensions
                .get::<Admin>()
                .map(|Admin(claims)| claims.sub.clone())
        });
    post(create)
        .route_layer(idempotency)
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin))
}

/// Verifies the bearer token and the admin role (401, 403) before the idempotency layer, and
/// hands the admin to the layer's scope and to the handler.
async fn require_admin(admin: Admin, mut request: Request, next: Next) -> Response {
    request.extensions_mut().insert(admin);
    next.run(request).await
}

/// `POST /api/v1/products`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateProduct {
    /// Letters, digits, `.`, `_` and `-`, starting with a letter or digit; unique.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length = 64)]
    sku: String,
    /// Not blank.
    #[schema(max_length = 200)]
    name: String,
    /// Free text.
    #[serde(default)]
    #[schema(max_length = 4000, default = "")]
    description: String,
    /// In cents.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    price_cents: i64,
}

/// `PUT /api/v1/products/{id}`: the fields to change (at least one).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateProduct {
    /// Not blank.
    #[schema(max_length = 200)]
    name: Option<String>,
    /// Free text.
    #[schema(max_length = 4000)]
    description: Option<String>,
    /// In cents.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    price_cents: Option<i64>,
    /// Listed (`true`) or withdrawn (`false`).
    active: Option<bool>,
}

// The schema attributes above take literals only; this keeps them in step with the rules.
const _: () = assert!(
    domain::MAX_SKU_LEN == 64
        && domain::MAX_NAME_LEN == 200
        && domain::MAX_DESCRIPTION_LEN == 4000
        && domain::MAX_PRICE_CENTS == 1_000_000_000
);

/// A product as admins see it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AdminProduct {
    id: Uuid,
    sku: String,
    name: String,
    description: String,
    /// In cents.
    price_cents: i64,
    /// Whether it is listed in the public catalogue.
    active: bool,
    /// Units available (cached; null when no stock figure is known).
    #[schema(required = true)]
    available: Option<i64>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl AdminProduct {
    fn new(p: Product, available: Option<i64>) -> Self {
        Self {
            id: p.id,
            sku: p.sku,
            name: p.name,
            description: p.description,
            price_cents: p.price_cents,
            active: p.active,
            available,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// Create a product (admin).
///
/// The product row commits together with the key's stored response: a retry with the same key
/// gets the same 201 (with `Idempotent-Replayed: true`) and the product exists once.
#[utoipa::path(
    post,
    path = "/api/v1/products",
    operation_id = "createProduct",
    tag = "products",
    request_body = CreateProduct,
    params(("Idempotency-Key" = String, Header, description = "Required; one key per product the client means to create.")),
    responses(
        (status = 201, description = "Created (or replayed, with `Idempotent-Replayed: true`)", body = AdminProduct,
            headers(("location" = String, description = "/api/v1/products/{id}"))),
        (status = 400, description = "Malformed JSON, unknown fields or invalid values, or no Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A product with this SKU exists, or a request with this key is in progress", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The key was used for another request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    Extension(Admin(admin)): Extension<Admin>,
    mut tx: Tx,
    body: Result<Json<CreateProduct>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let new = domain::new_product(&body.sku, &body.name, &body.description, body.price_cents)
        .map_err(invalid)?;
    // The layer commits this transaction with the stored response (or rolls it back).
    let conn = tx.conn().await.map_err(|_| {
        ApiError::Unavailable("the database is unavailable; retry with the same key".into())
    })?;
    // In a savepoint: a duplicate SKU undoes only the insert, and the 409 is stored in the
    // transaction like any other answer.
    let mut savepoint = conn.begin().await?;
    let product = match repo::insert(&mut savepoint, Uuid::now_v7(), &new).await {
        Ok(product) => product,
        Err(error) if repo::is_duplicate_sku(&error) => {
            savepoint.rollback().await?;
            return Err(ApiError::Conflict(format!(
                "a product with sku {:?} exists",
                new.sku
            )));
        }
        Err(error) => return Err(error.into()),
    };
    savepoint.commit().await?;
    announce(conn, &state.topics, &product).await?;
    tracing::info!(product_id = %product.id, sku = %product.sku, admin = %admin.sub, "product: created and announced (commits with the response)");
    let available = stock(&state, &[product.id]).await?.pop().flatten();
    let location = format!("/api/v1/products/{}", product.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(AdminProduct::new(product, available)),
    )
        .into_response())
}

/// Change a product's name, description, price or listing (admin).
#[utoipa::path(
    put,
    path = "/api/v1/products/{id}",
    operation_id = "updateProduct",
    tag = "products",
    params(("id" = Uuid, Path, description = "The product")),
    request_body = UpdateProduct,
    responses(
        (status = 200, description = "The changed product", body = AdminProduct),
        (status = 400, description = "Malformed JSON or id, unknown fields or invalid values", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn update(
    State(state): State<AppState>,
    Admin(admin): Admin,
    PathId(id): PathId,
    body: Result<Json<UpdateProduct>, JsonRejection>,
) -> Result<Json<AdminProduct>, ApiError> {
    let Json(body) = body?;
    let changes = domain::changes(
        body.name.as_deref(),
        body.description.as_deref(),
        body.price_cents,
        body.active,
    )
    .map_err(invalid)?;
    let mut tx = state.pool.begin().await?;
    let product = repo::update(&mut tx, id, &changes)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no product {id}")))?;
    announce(&mut tx, &state.topics, &product).await?;
    tx.commit().await?;
    tracing::info!(product_id = %id, version = product.version, admin = %admin.sub, "product: updated and announced");
    let available = stock(&state, &[id]).await?.pop().flatten();
    Ok(Json(AdminProduct::new(product, available)))
}

/// Every product, active or not, by SKU (admin).
#[utoipa::path(
    get,
    path = "/api/v1/admin/products",
    operation_id = "adminListProducts",
    tag = "products",
    params(Page),
    responses(
        (status = 200, description = "The products, by SKU", body = [AdminProduct]),
        (status = 400, description = "Invalid limit or offset", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn admin_list(
    State(state): State<AppState>,
    Admin(_): Admin,
    query: Result<Query<Page>, QueryRejection>,
) -> Result<Json<Vec<AdminProduct>>, ApiError> {
    let (limit, offset) = page(query)?;
    let products = repo::list(&state.pool, false, limit, offset).await?;
    let ids: Vec<Uuid> = products.iter().map(|p| p.id).collect();
    let available = stock(&state, &ids).await?;
    Ok(Json(
        products
            .into_iter()
            .zip(available)
            .map(|(p, a)| AdminProduct::new(p, a))
            .collect(),
    ))
}
