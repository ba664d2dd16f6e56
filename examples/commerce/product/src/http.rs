//! Routes and DTOs: the admin catalogue, the public catalogue with stock, the internal price
//! lookup, and `GET /openapi.json`.

use std::collections::HashMap;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use commerce_platform::{Admin, ApiError, ServiceKey};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::domain;
use crate::repo::{self, Product};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/products", get(public_list).post(create))
        .route("/api/v1/products/{id}", get(public_get).put(update))
        .route("/api/v1/admin/products", get(admin_list))
        .route("/internal/v1/products/{id}", get(internal_get))
        .route("/openapi.json", get(openapi))
}

/// `POST /api/v1/products`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateProduct {
    sku: String,
    name: String,
    #[serde(default)]
    description: String,
    price_cents: i64,
}

/// `PUT /api/v1/products/{id}`: the fields to change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateProduct {
    name: Option<String>,
    description: Option<String>,
    price_cents: Option<i64>,
    active: Option<bool>,
}

/// `?limit=&offset=` of the lists.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    limit: Option<i64>,
    offset: Option<i64>,
}

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 500;

/// A product as admins see it.
#[derive(Debug, Serialize)]
struct AdminProduct {
    id: Uuid,
    sku: String,
    name: String,
    description: String,
    price_cents: i64,
    active: bool,
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

/// An active product as everyone sees it.
#[derive(Debug, Serialize)]
struct PublicProduct {
    id: Uuid,
    sku: String,
    name: String,
    description: String,
    price_cents: i64,
    available: Option<i64>,
}

impl PublicProduct {
    fn new(p: Product, available: Option<i64>) -> Self {
        Self {
            id: p.id,
            sku: p.sku,
            name: p.name,
            description: p.description,
            price_cents: p.price_cents,
            available,
        }
    }
}

/// What other services read (the order service snapshots prices from it).
#[derive(Debug, Serialize)]
struct InternalProduct {
    id: Uuid,
    sku: String,
    name: String,
    price_cents: i64,
    active: bool,
}

fn product_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::BadRequest(format!("{raw:?} is not a product id (a UUID)")))
}

fn page(query: Result<Query<Page>, QueryRejection>) -> Result<(i64, i64), ApiError> {
    let Query(page) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = page.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let offset = page.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::BadRequest("offset must not be negative".into()));
    }
    Ok((limit, offset))
}

fn invalid(error: domain::Invalid) -> ApiError {
    ApiError::BadRequest(error.0)
}

/// The available stock of `ids`, in order: from Redis, else from `stock_levels`, else `None`.
/// A figure found only in PostgreSQL is written back to Redis (version-guarded, so it can never
/// replace a newer one).
async fn stock(state: &AppState, ids: &[Uuid]) -> Result<Vec<Option<i64>>, ApiError> {
    let cached = match state.stock.available(ids).await {
        Ok(values) => Some(values),
        Err(error) => {
            tracing::warn!(%error, "product: redis unavailable; reading stock from PostgreSQL");
            None
        }
    };
    let redis_up = cached.is_some();
    let mut values = cached.unwrap_or_else(|| vec![None; ids.len()]);
    let missing: Vec<Uuid> = ids
        .iter()
        .zip(&values)
        .filter(|(_, value)| value.is_none())
        .map(|(&id, _)| id)
        .collect();
    if missing.is_empty() {
        return Ok(values);
    }
    let stored: HashMap<Uuid, (i32, i64)> = repo::stock_levels(&state.pool, &missing)
        .await?
        .into_iter()
        .map(|(id, available, version)| (id, (available, version)))
        .collect();
    for (id, value) in ids.iter().zip(values.iter_mut()) {
        if value.is_none() {
            *value = stored.get(id).map(|&(available, _)| i64::from(available));
        }
    }
    if redis_up {
        for (&product_id, &(available, version)) in &stored {
            if let Err(error) = state
                .stock
                .apply(product_id, i64::from(available), version)
                .await
            {
                tracing::warn!(%product_id, %error, "product: could not repopulate the stock cache");
                break;
            }
        }
    }
    Ok(values)
}

async fn create(
    State(state): State<AppState>,
    Admin(admin): Admin,
    body: Result<Json<CreateProduct>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(body) = body?;
    let new = domain::new_product(&body.sku, &body.name, &body.description, body.price_cents)
        .map_err(invalid)?;
    let product = repo::insert(&state.pool, Uuid::now_v7(), &new)
        .await
        .map_err(|error| {
            if repo::is_duplicate_sku(&error) {
                ApiError::Conflict(format!("a product with sku {:?} exists", new.sku))
            } else {
                error.into()
            }
        })?;
    tracing::info!(product_id = %product.id, sku = %product.sku, admin = %admin.sub, "product: created");
    let available = stock(&state, &[product.id]).await?.pop().flatten();
    let location = format!("/api/v1/products/{}", product.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(AdminProduct::new(product, available)),
    ))
}

async fn update(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(id): Path<String>,
    body: Result<Json<UpdateProduct>, JsonRejection>,
) -> Result<Json<AdminProduct>, ApiError> {
    let id = product_id(&id)?;
    let Json(body) = body?;
    let changes = domain::changes(
        body.name.as_deref(),
        body.description.as_deref(),
        body.price_cents,
        body.active,
    )
    .map_err(invalid)?;
    let product = repo::update(&state.pool, id, &changes)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no product {id}")))?;
    tracing::info!(product_id = %id, admin = %admin.sub, "product: updated");
    let available = stock(&state, &[id]).await?.pop().flatten();
    Ok(Json(AdminProduct::new(product, available)))
}

async fn admin_list(
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

async fn public_list(
    State(state): State<AppState>,
    query: Result<Query<Page>, QueryRejection>,
) -> Result<Json<Vec<PublicProduct>>, ApiError> {
    let (limit, offset) = page(query)?;
    let products = repo::list(&state.pool, true, limit, offset).await?;
    let ids: Vec<Uuid> = products.iter().map(|p| p.id).collect();
    let available = stock(&state, &ids).await?;
    Ok(Json(
        products
            .into_iter()
            .zip(available)
            .map(|(p, a)| PublicProduct::new(p, a))
            .collect(),
    ))
}

async fn public_get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PublicProduct>, ApiError> {
    let id = product_id(&id)?;
    let product = repo::get(&state.pool, id)
        .await?
        .filter(|p| p.active)
        .ok_or_else(|| ApiError::NotFound(format!("no product {id}")))?;
    let available = stock(&state, &[id]).await?.pop().flatten();
    Ok(Json(PublicProduct::new(product, available)))
}

async fn internal_get(
    State(state): State<AppState>,
    _: ServiceKey,
    Path(id): Path<String>,
) -> Result<Json<InternalProduct>, ApiError> {
    let id = product_id(&id)?;
    let p = repo::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no product {id}")))?;
    Ok(Json(InternalProduct {
        id: p.id,
        sku: p.sku,
        name: p.name,
        price_cents: p.price_cents,
        active: p.active,
    }))
}

async fn openapi() -> Json<serde_json::Value> {
    Json(document())
}

/// The service's OpenAPI 3.1 document.
fn document() -> serde_json::Value {
    use serde_json::json;
    let problem = |codes: &[&str]| -> serde_json::Value {
        codes
            .iter()
            .map(|code| {
                (
                    (*code).to_owned(),
                    json!({ "$ref": "#/components/responses/Problem" }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let with = |mut base: serde_json::Value, extra: serde_json::Value| {
        if let (Some(base), serde_json::Value::Object(extra)) = (base.as_object_mut(), extra) {
            base.extend(extra);
        }
        base
    };
    let id = json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } });
    let page = json!([
        { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT } },
        { "name": "offset", "in": "query", "schema": { "type": "integer", "minimum": 0, "default": 0 } }
    ]);
    let ok = |schema: serde_json::Value| json!({ "description": "OK", "content": { "application/json": { "schema": schema } } });
    let schema = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });
    let array = |name: &str| json!({ "type": "array", "items": schema(name) });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "commerce product service",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The catalogue (admins write it, everyone reads active products with their available stock) and the internal price lookup other services use."
        },
        "paths": {
            "/api/v1/products": {
                "get": {
                    "summary": "Active products, by SKU, with available stock",
                    "operationId": "listProducts",
                    "parameters": page,
                    "responses": with(json!({ "200": ok(array("PublicProduct")) }), problem(&["400"]))
                },
                "post": {
                    "summary": "Create a product (admin)",
                    "operationId": "createProduct",
                    "security": [{ "bearer": [] }],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": schema("CreateProduct") } } },
                    "responses": with(json!({
                        "201": {
                            "description": "Created",
                            "headers": { "Location": { "schema": { "type": "string" } } },
                            "content": { "application/json": { "schema": schema("AdminProduct") } }
                        }
                    }), problem(&["400", "401", "403", "409"]))
                }
            },
            "/api/v1/products/{id}": {
                "get": {
                    "summary": "An active product with its available stock",
                    "operationId": "getProduct",
                    "parameters": [id],
                    "responses": with(json!({ "200": ok(schema("PublicProduct")) }), problem(&["400", "404"]))
                },
                "put": {
                    "summary": "Change a product's name, description, price or listing (admin)",
                    "operationId": "updateProduct",
                    "security": [{ "bearer": [] }],
                    "parameters": [id],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": schema("UpdateProduct") } } },
                    "responses": with(json!({ "200": ok(schema("AdminProduct")) }), problem(&["400", "401", "403", "404"]))
                }
            },
            "/api/v1/admin/products": {
                "get": {
                    "summary": "Every product, active or not, by SKU (admin)",
                    "operationId": "adminListProducts",
                    "security": [{ "bearer": [] }],
                    "parameters": page,
                    "responses": with(json!({ "200": ok(array("AdminProduct")) }), problem(&["400", "401", "403"]))
                }
            },
            "/internal/v1/products/{id}": {
                "get": {
                    "summary": "A product's price and listing, for other services",
                    "operationId": "internalGetProduct",
                    "security": [{ "apiKey": [] }],
                    "parameters": [id],
                    "responses": with(json!({ "200": ok(schema("InternalProduct")) }), problem(&["400", "401", "404"]))
                }
            }
        },
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "HS256; the `admin` role" },
                "apiKey": { "type": "apiKey", "in": "header", "name": "x-api-key" }
            },
            "schemas": {
                "CreateProduct": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["sku", "name", "price_cents"],
                    "properties": {
                        "sku": { "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$", "maxLength": domain::MAX_SKU_LEN },
                        "name": { "type": "string", "maxLength": domain::MAX_NAME_LEN },
                        "description": { "type": "string", "maxLength": domain::MAX_DESCRIPTION_LEN, "default": "" },
                        "price_cents": { "type": "integer", "format": "int64", "minimum": 1, "maximum": domain::MAX_PRICE_CENTS }
                    }
                },
                "UpdateProduct": {
                    "type": "object",
                    "additionalProperties": false,
                    "minProperties": 1,
                    "properties": {
                        "name": { "type": "string", "maxLength": domain::MAX_NAME_LEN },
                        "description": { "type": "string", "maxLength": domain::MAX_DESCRIPTION_LEN },
                        "price_cents": { "type": "integer", "format": "int64", "minimum": 1, "maximum": domain::MAX_PRICE_CENTS },
                        "active": { "type": "boolean" }
                    }
                },
                "PublicProduct": {
                    "type": "object",
                    "required": ["id", "sku", "name", "description", "price_cents", "available"],
                    "properties": {
                        "id": { "type": "string", "format": "uuid" },
                        "sku": { "type": "string" },
                        "name": { "type": "string" },
                        "description": { "type": "string" },
                        "price_cents": { "type": "integer", "format": "int64" },
                        "available": { "type": ["integer", "null"], "description": "Units available (cached; null when no stock figure is known)" }
                    }
                },
                "AdminProduct": {
                    "type": "object",
                    "required": ["id", "sku", "name", "description", "price_cents", "active", "available", "created_at", "updated_at"],
                    "properties": {
                        "id": { "type": "string", "format": "uuid" },
                        "sku": { "type": "string" },
                        "name": { "type": "string" },
                        "description": { "type": "string" },
                        "price_cents": { "type": "integer", "format": "int64" },
                        "active": { "type": "boolean" },
                        "available": { "type": ["integer", "null"] },
                        "created_at": { "type": "string", "format": "date-time" },
                        "updated_at": { "type": "string", "format": "date-time" }
                    }
                },
                "InternalProduct": {
                    "type": "object",
                    "required": ["id", "sku", "name", "price_cents", "active"],
                    "properties": {
                        "id": { "type": "string", "format": "uuid" },
                        "sku": { "type": "string" },
                        "name": { "type": "string" },
                        "price_cents": { "type": "integer", "format": "int64" },
                        "active": { "type": "boolean" }
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
