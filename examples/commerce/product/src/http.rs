//! Routes and DTOs: the public catalogue with stock and the OpenAPI
//! document at `GET /openapi.json`; the admin catalogue's handlers are in [`crate::admin`].

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use commerce_platform::ApiError;
use commerce_platform::extract::PathId;
use commerce_platform::openapi::{Problem, SecuritySchemes};
use serde::{Deserialize, Serialize};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::admin::{self, AdminProduct, CreateProduct, UpdateProduct, create_route};
use crate::domain;
use crate::repo::{self, Product};

/// The routes; `POST /api/v1/products` is behind the admin check and the idempotency layer
/// ([`create_route`]).
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/products", create_route(&state).get(public_list))
        .route("/api/v1/products/{id}", get(public_get).put(admin::update))
        .route("/api/v1/admin/products", get(admin::admin_list))
        .route("/openapi.json", get(openapi))
        .with_state(state)
}

/// `?limit=&offset=` of the lists.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct Page {
    /// How many products, 1 to 500.
    #[param(minimum = 1, maximum = 500, default = 100)]
    limit: Option<i64>,
    /// How many to skip.
    #[param(minimum = 0, default = 0)]
    offset: Option<i64>,
}

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 500;

// The param attributes above take literals only; this keeps them in step with the rules.
const _: () = assert!(DEFAULT_LIMIT == 100 && MAX_LIMIT == 500);

/// An active product as everyone sees it.
#[derive(Debug, Serialize, ToSchema)]
struct PublicProduct {
    id: Uuid,
    sku: String,
    name: String,
    description: String,
    /// In cents.
    price_cents: i64,
    /// Units available (cached; null when no stock figure is known).
    #[schema(required = true)]
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

pub(crate) fn page(query: Result<Query<Page>, QueryRejection>) -> Result<(i64, i64), ApiError> {
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

pub(crate) fn invalid(error: domain::Invalid) -> ApiError {
    ApiError::BadRequest(error.0)
}

/// The available stock of `ids`, in order: from Redis, else from `stock_levels`, else `None`.
/// A figure found only in PostgreSQL is written back to Redis (version-guarded, so it can never
/// replace a newer one).
pub(crate) async fn stock(state: &AppState, ids: &[Uuid]) -> Result<Vec<Option<i64>>, ApiError> {
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

/// Active products, by SKU, with available stock.
#[utoipa::path(
    get,
    path = "/api/v1/products",
    operation_id = "listProducts",
    tag = "products",
    params(Page),
    responses(
        (status = 200, description = "The active products, by SKU", body = [PublicProduct]),
        (status = 400, description = "Invalid limit or offset", body = Problem, content_type = "application/problem+json"),
    )
)]
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

/// An active product with its available stock.
#[utoipa::path(
    get,
    path = "/api/v1/products/{id}",
    operation_id = "getProduct",
    tag = "products",
    params(("id" = Uuid, Path, description = "The product")),
    responses(
        (status = 200, description = "The product", body = PublicProduct),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such product, or not active", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn public_get(
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<PublicProduct>, ApiError> {
    let product = repo::get(&state.pool, id)
        .await?
        .filter(|p| p.active)
        .ok_or_else(|| ApiError::NotFound(format!("no product {id}")))?;
    let available = stock(&state, &[id]).await?.pop().flatten();
    Ok(Json(PublicProduct::new(product, available)))
}

/// The service's OpenAPI document, served at `GET /openapi.json`.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "commerce product service",
        description = "The catalogue (admins write it, everyone reads active products with their available stock)."
    ),
    paths(
        public_list,
        admin::create,
        public_get,
        admin::update,
        admin::admin_list
    ),
    components(schemas(
        CreateProduct,
        UpdateProduct,
        AdminProduct,
        PublicProduct,
        Problem
    )),
    modifiers(&SecuritySchemes, &AtLeastOneChange),
    tags(
        (name = "products", description = "The catalogue")
    )
)]
pub struct ApiDoc;

/// Declares `minProperties: 1` on `UpdateProduct`: utoipa 5.5's `#[schema(min_properties = 1)]`
/// emits `maxProperties` instead.
#[derive(Debug)]
struct AtLeastOneChange;

impl Modify for AtLeastOneChange {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let schemas = openapi.components.as_mut().map(|c| &mut c.schemas);
        if let Some(RefOr::T(Schema::Object(update))) =
            schemas.and_then(|s| s.get_mut("UpdateProduct"))
        {
            update.min_properties = Some(1);
        }
    }
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
