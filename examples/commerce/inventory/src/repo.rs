//! SQL. Every function runs on the caller's connection, normally its open transaction.
//!
//! Lock order, which keeps concurrent transactions free of deadlocks: an order's reservation
//! rows first (only that order's), then stock rows in `product_id` order.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{Level, MovementKind, ReservationState};

/// A stock row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StockRow {
    pub(crate) product_id: Uuid,
    pub(crate) level: Level,
    pub(crate) version: i64,
}

type StockTuple = (Uuid, i32, i32, i64);

fn stock_row((product_id, total, reserved, version): StockTuple) -> StockRow {
    StockRow {
        product_id,
        level: Level { total, reserved },
        version,
    }
}

/// Locks the stock rows of `product_ids` (`FOR UPDATE`), one at a time in `product_id` order,
/// and returns those that exist.
pub(crate) async fn lock_stock(
    conn: &mut PgConnection,
    product_ids: &[Uuid],
) -> sqlx::Result<Vec<StockRow>> {
    let rows: Vec<StockTuple> = sqlx::query_as(
        "SELECT product_id, total, reserved, version FROM stock
         WHERE product_id = ANY($1) ORDER BY product_id FOR UPDATE",
    )
    .bind(product_ids)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(stock_row).collect())
}

/// Locks the reservations of `order_ids` (`FOR UPDATE`, in `order_id`, `product_id` order) and
/// returns their products.
pub(crate) async fn lock_orders_reservations(
    conn: &mut PgConnection,
    order_ids: &[Uuid],
) -> sqlx::Result<Vec<Uuid>> {
    if order_ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "SELECT product_id FROM reservations
         WHERE order_id = ANY($1) ORDER BY order_id, product_id FOR UPDATE",
    )
    .bind(order_ids)
    .fetch_all(conn)
    .await
}

/// Creates an empty stock row for `product_id` unless it exists.
pub(crate) async fn ensure_stock(conn: &mut PgConnection, product_id: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO stock (product_id, total, reserved, version) VALUES ($1, 0, 0, 0)
         ON CONFLICT (product_id) DO NOTHING",
    )
    .bind(product_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes a locked row's new figures and returns its new version (the old one plus one).
pub(crate) async fn write_level(
    conn: &mut PgConnection,
    product_id: Uuid,
    level: Level,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "UPDATE stock SET total = $2, reserved = $3, version = version + 1, updated_at = now()
         WHERE product_id = $1 RETURNING version",
    )
    .bind(product_id)
    .bind(level.total)
    .bind(level.reserved)
    .fetch_one(conn)
    .await
}

/// One product's stock row, if any (no lock).
pub(crate) async fn stock(
    conn: &mut PgConnection,
    product_id: Uuid,
) -> sqlx::Result<Option<StockRow>> {
    let row: Option<StockTuple> = sqlx::query_as(
        "SELECT product_id, total, reserved, version FROM stock WHERE product_id = $1",
    )
    .bind(product_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(stock_row))
}

/// Every stock row, share-locked (so no change commits while a snapshot is taken), in
/// `product_id` order.
pub(crate) async fn all_stock_shared(conn: &mut PgConnection) -> sqlx::Result<Vec<StockRow>> {
    let rows: Vec<StockTuple> = sqlx::query_as(
        "SELECT product_id, total, reserved, version FROM stock ORDER BY product_id FOR SHARE",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(stock_row).collect())
}

/// A movement to record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewMovement {
    pub(crate) product_id: Uuid,
    pub(crate) order_id: Option<Uuid>,
    pub(crate) kind: MovementKind,
    pub(crate) before: Level,
    pub(crate) after: Level,
}

/// Records a movement.
pub(crate) async fn record_movement(
    conn: &mut PgConnection,
    movement: &NewMovement,
) -> sqlx::Result<()> {
    let (delta_total, delta_reserved) = movement.before.delta_to(movement.after);
    sqlx::query(
        "INSERT INTO movements (product_id, order_id, kind, delta_total, delta_reserved)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(movement.product_id)
    .bind(movement.order_id)
    .bind(movement.kind.as_str())
    .bind(delta_total)
    .bind(delta_reserved)
    .execute(conn)
    .await?;
    Ok(())
}

/// A recorded movement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Movement {
    pub(crate) id: i64,
    pub(crate) order_id: Option<Uuid>,
    pub(crate) kind: String,
    pub(crate) delta_total: i32,
    pub(crate) delta_reserved: i32,
    pub(crate) at: DateTime<Utc>,
}

type MovementTuple = (i64, Option<Uuid>, String, i32, i32, DateTime<Utc>);

/// A product's newest `limit` movements, newest first.
pub(crate) async fn movements(
    conn: &mut PgConnection,
    product_id: Uuid,
    limit: i64,
) -> sqlx::Result<Vec<Movement>> {
    let rows: Vec<MovementTuple> = sqlx::query_as(
        "SELECT id, order_id, kind, delta_total, delta_reserved, at FROM movements
         WHERE product_id = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(product_id)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, order_id, kind, delta_total, delta_reserved, at)| Movement {
                id,
                order_id,
                kind,
                delta_total,
                delta_reserved,
                at,
            },
        )
        .collect())
}

/// Whether `order_id` has any reservation row, in any state.
pub(crate) async fn has_reservations(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM reservations WHERE order_id = $1)")
        .bind(order_id)
        .fetch_one(conn)
        .await
}

/// Inserts `RESERVED` rows for `order_id`.
pub(crate) async fn insert_reservations(
    conn: &mut PgConnection,
    order_id: Uuid,
    lines: &[(Uuid, i32)],
) -> sqlx::Result<()> {
    let (products, quantities): (Vec<Uuid>, Vec<i32>) = lines.iter().copied().unzip();
    sqlx::query(
        "INSERT INTO reservations (order_id, product_id, quantity, state)
         SELECT $1, product_id, quantity, $4
         FROM unnest($2::uuid[], $3::int[]) AS l(product_id, quantity)",
    )
    .bind(order_id)
    .bind(products)
    .bind(quantities)
    .bind(ReservationState::Reserved.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// Locks `order_id`'s reservations in `state` and returns `(product_id, quantity)` in
/// `product_id` order.
pub(crate) async fn lock_reservations(
    conn: &mut PgConnection,
    order_id: Uuid,
    state: ReservationState,
) -> sqlx::Result<Vec<(Uuid, i32)>> {
    sqlx::query_as(
        "SELECT product_id, quantity FROM reservations
         WHERE order_id = $1 AND state = $2 ORDER BY product_id FOR UPDATE",
    )
    .bind(order_id)
    .bind(state.as_str())
    .fetch_all(conn)
    .await
}

/// Moves `order_id`'s reservations from `from` to `to`.
pub(crate) async fn set_reservations_state(
    conn: &mut PgConnection,
    order_id: Uuid,
    from: ReservationState,
    to: ReservationState,
) -> sqlx::Result<u64> {
    let result = sqlx::query(
        "UPDATE reservations SET state = $3, updated_at = now() WHERE order_id = $1 AND state = $2",
    )
    .bind(order_id)
    .bind(from.as_str())
    .bind(to.as_str())
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}
