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

/// A stored reservation row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reservation {
    pub(crate) order_id: Uuid,
    pub(crate) product_id: Uuid,
    pub(crate) quantity: i32,
    pub(crate) state: ReservationState,
}

/// Locks the reservations of `order_ids` (`FOR UPDATE`, in `order_id`, `product_id` order) and
/// returns them.
pub(crate) async fn lock_orders_reservations(
    conn: &mut PgConnection,
    order_ids: &[Uuid],
) -> sqlx::Result<Vec<Reservation>> {
    let rows: Vec<(Uuid, Uuid, i32, String)> = sqlx::query_as(
        "SELECT order_id, product_id, quantity, state FROM reservations
         WHERE order_id = ANY($1) ORDER BY order_id, product_id FOR UPDATE",
    )
    .bind(order_ids)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(order_id, product_id, quantity, state)| {
            let state = ReservationState::from_column(&state).ok_or_else(|| {
                sqlx::Error::Decode(format!("unknown reservation state {state:?}").into())
            })?;
            Ok(Reservation {
                order_id,
                product_id,
                quantity,
                state,
            })
        })
        .collect()
}

/// Creates an empty stock row for each of `product_ids` that has none.
pub(crate) async fn ensure_stocks(
    conn: &mut PgConnection,
    product_ids: &[Uuid],
) -> sqlx::Result<()> {
    if product_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO stock (product_id, total, reserved, version)
         SELECT id, 0, 0, 0 FROM unnest($1::uuid[]) AS p(id) ORDER BY id
         ON CONFLICT (product_id) DO NOTHING",
    )
    .bind(product_ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes locked rows' new figures, each row's version counting `changes` more.
pub(crate) async fn write_levels(
    conn: &mut PgConnection,
    rows: &[(StockRow, i64)],
) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let products: Vec<Uuid> = rows.iter().map(|(r, _)| r.product_id).collect();
    let totals: Vec<i32> = rows.iter().map(|(r, _)| r.level.total).collect();
    let reserved: Vec<i32> = rows.iter().map(|(r, _)| r.level.reserved).collect();
    let changes: Vec<i64> = rows.iter().map(|&(_, c)| c).collect();
    sqlx::query(
        "UPDATE stock AS s
         SET total = u.total, reserved = u.reserved, version = s.version + u.changes,
             updated_at = now()
         FROM unnest($1::uuid[], $2::int[], $3::int[], $4::bigint[])
             AS u(product_id, total, reserved, changes)
         WHERE s.product_id = u.product_id",
    )
    .bind(products)
    .bind(totals)
    .bind(reserved)
    .bind(changes)
    .execute(conn)
    .await?;
    Ok(())
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
#[derive(Debug, Clone)]
pub(crate) struct NewMovement {
    pub(crate) product_id: Uuid,
    pub(crate) order_id: Option<Uuid>,
    pub(crate) kind: MovementKind,
    pub(crate) before: Level,
    pub(crate) after: Level,
    /// Why, for an admin's removal.
    pub(crate) reason: Option<String>,
}

/// Records movements, in order.
pub(crate) async fn record_movements(
    conn: &mut PgConnection,
    movements: &[NewMovement],
) -> sqlx::Result<()> {
    if movements.is_empty() {
        return Ok(());
    }
    let mut products = Vec::with_capacity(movements.len());
    let mut orders = Vec::with_capacity(movements.len());
    let mut kinds = Vec::with_capacity(movements.len());
    let mut totals = Vec::with_capacity(movements.len());
    let mut reserved = Vec::with_capacity(movements.len());
    let mut reasons = Vec::with_capacity(movements.len());
    for movement in movements {
        let (delta_total, delta_reserved) = movement.before.delta_to(movement.after);
        products.push(movement.product_id);
        orders.push(movement.order_id);
        kinds.push(movement.kind.as_str());
        totals.push(delta_total);
        reserved.push(delta_reserved);
        reasons.push(movement.reason.as_deref());
    }
    sqlx::query(
        "INSERT INTO movements (product_id, order_id, kind, delta_total, delta_reserved, reason)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::int[], $5::int[], $6::text[])",
    )
    .bind(products)
    .bind(orders)
    .bind(kinds)
    .bind(totals)
    .bind(reserved)
    .bind(reasons)
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
    pub(crate) reason: Option<String>,
    pub(crate) at: DateTime<Utc>,
}

type MovementTuple = (
    i64,
    Option<Uuid>,
    String,
    i32,
    i32,
    Option<String>,
    DateTime<Utc>,
);

/// A product's newest `limit` movements, newest first.
pub(crate) async fn movements(
    conn: &mut PgConnection,
    product_id: Uuid,
    limit: i64,
) -> sqlx::Result<Vec<Movement>> {
    let rows: Vec<MovementTuple> = sqlx::query_as(
        "SELECT id, order_id, kind, delta_total, delta_reserved, reason, at FROM movements
         WHERE product_id = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(product_id)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, order_id, kind, delta_total, delta_reserved, reason, at)| Movement {
                id,
                order_id,
                kind,
                delta_total,
                delta_reserved,
                reason,
                at,
            },
        )
        .collect())
}

/// Inserts reservation rows `(order, product, quantity, state)`.
pub(crate) async fn insert_reservations(
    conn: &mut PgConnection,
    rows: &[(Uuid, Uuid, i32, ReservationState)],
) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let orders: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
    let products: Vec<Uuid> = rows.iter().map(|r| r.1).collect();
    let quantities: Vec<i32> = rows.iter().map(|r| r.2).collect();
    let states: Vec<&str> = rows.iter().map(|r| r.3.as_str()).collect();
    sqlx::query(
        "INSERT INTO reservations (order_id, product_id, quantity, state)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[])",
    )
    .bind(orders)
    .bind(products)
    .bind(quantities)
    .bind(states)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets the state of locked reservation rows `(order, product, state)`.
pub(crate) async fn set_reservations_states(
    conn: &mut PgConnection,
    rows: &[(Uuid, Uuid, ReservationState)],
) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let orders: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
    let products: Vec<Uuid> = rows.iter().map(|r| r.1).collect();
    let states: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    sqlx::query(
        "UPDATE reservations AS r SET state = u.state, updated_at = now()
         FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS u(order_id, product_id, state)
         WHERE r.order_id = u.order_id AND r.product_id = u.product_id",
    )
    .bind(orders)
    .bind(products)
    .bind(states)
    .execute(conn)
    .await?;
    Ok(())
}
