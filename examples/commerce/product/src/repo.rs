//! SQL on the product service's tables.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{Changes, NewProduct};

/// A product row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct Product {
    pub(crate) id: Uuid,
    pub(crate) sku: String,
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) price_cents: i64,
    pub(crate) active: bool,
    pub(crate) version: i64,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

/// Inserts a product (on the caller's connection, normally the request's transaction). A
/// duplicate SKU is a unique violation (see [`is_duplicate_sku`]).
pub(crate) async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    new: &NewProduct,
) -> sqlx::Result<Product> {
    sqlx::query_as(
        "INSERT INTO products (id, sku, name, description, price_cents)
         VALUES ($1, $2, $3, $4, $5)
         RETURNING id, sku, name, description, price_cents, active, version, created_at, updated_at",
    )
    .bind(id)
    .bind(&new.sku)
    .bind(&new.name)
    .bind(&new.description)
    .bind(new.price_cents)
    .fetch_one(conn)
    .await
}

/// Whether `error` is the SKU's unique constraint.
pub(crate) fn is_duplicate_sku(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation() && e.constraint() == Some("products_sku_key"))
}

/// Applies `changes` and counts a version (on the caller's connection, normally the request's
/// transaction); `None` when there is no such product.
pub(crate) async fn update(
    conn: &mut PgConnection,
    id: Uuid,
    changes: &Changes,
) -> sqlx::Result<Option<Product>> {
    sqlx::query_as(
        "UPDATE products SET
             name = coalesce($2, name),
             description = coalesce($3, description),
             price_cents = coalesce($4, price_cents),
             active = coalesce($5, active),
             version = version + 1,
             updated_at = now()
         WHERE id = $1
         RETURNING id, sku, name, description, price_cents, active, version, created_at, updated_at",
    )
    .bind(id)
    .bind(changes.name.as_deref())
    .bind(changes.description.as_deref())
    .bind(changes.price_cents)
    .bind(changes.active)
    .fetch_optional(conn)
    .await
}

/// The product, active or not.
pub(crate) async fn get(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<Product>> {
    sqlx::query_as(
        "SELECT id, sku, name, description, price_cents, active, version, created_at, updated_at
         FROM products WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Every product, for the start-up snapshot (on the caller's transaction).
pub(crate) async fn all(conn: &mut PgConnection) -> sqlx::Result<Vec<Product>> {
    sqlx::query_as(
        "SELECT id, sku, name, description, price_cents, active, version, created_at, updated_at
         FROM products ORDER BY id",
    )
    .fetch_all(conn)
    .await
}

/// A page of products by SKU, only the active ones when `active_only`.
pub(crate) async fn list(
    pool: &PgPool,
    active_only: bool,
    limit: i64,
    offset: i64,
) -> sqlx::Result<Vec<Product>> {
    sqlx::query_as(
        "SELECT id, sku, name, description, price_cents, active, version, created_at, updated_at
         FROM products WHERE active OR NOT $1
         ORDER BY sku LIMIT $2 OFFSET $3",
    )
    .bind(active_only)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await
}

/// `(product id, available, version)` of the stored stock levels of `ids`.
pub(crate) async fn stock_levels(
    pool: &PgPool,
    ids: &[Uuid],
) -> sqlx::Result<Vec<(Uuid, i32, i64)>> {
    sqlx::query_as(
        "SELECT product_id, available, version FROM stock_levels WHERE product_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// Stores a product's stock figures if `version` is newer than the stored one
/// ([`is_newer`](crate::domain::is_newer)). Returns whether they were stored.
pub(crate) async fn upsert_stock_level(
    conn: &mut PgConnection,
    product_id: Uuid,
    total: i32,
    reserved: i32,
    available: i32,
    version: i64,
) -> sqlx::Result<bool> {
    let stored = sqlx::query(
        "INSERT INTO stock_levels (product_id, total, reserved, available, version)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (product_id) DO UPDATE SET
             total = EXCLUDED.total, reserved = EXCLUDED.reserved,
             available = EXCLUDED.available, version = EXCLUDED.version, updated_at = now()
         WHERE stock_levels.version < EXCLUDED.version",
    )
    .bind(product_id)
    .bind(total)
    .bind(reserved)
    .bind(available)
    .bind(version)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(stored == 1)
}
