//! SQL: orders and their lines, state changes under the order's row lock (with their events in
//! the same transaction), reservation expiry and archiving.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use commerce_events::{Cause, Topics};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::Result;
use crate::domain::{self, Input, Order, OrderLine, OrderState, Transition};

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    customer_id: String,
    state: String,
    reason: Option<String>,
    total_cents: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct LineRow {
    order_id: Uuid,
    product_id: Uuid,
    quantity: i32,
    unit_price_cents: i64,
}

fn state(name: &str) -> Result<OrderState, sqlx::Error> {
    OrderState::parse(name)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown order state {name:?}").into()))
}

impl OrderRow {
    fn into_order(self, lines: Vec<OrderLine>) -> Result<Order, sqlx::Error> {
        Ok(Order {
            id: self.id,
            customer_id: self.customer_id,
            state: state(&self.state)?,
            reason: self.reason,
            lines,
            total_cents: self.total_cents,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// Inserts a `PENDING` order with its lines, in the caller's transaction, and returns it as
/// stored.
///
/// # Errors
///
/// When a statement fails.
pub async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    customer_id: &str,
    lines: &[OrderLine],
    total_cents: i64,
) -> Result<Order> {
    let row: OrderRow = sqlx::query_as(
        "INSERT INTO orders (id, customer_id, state, total_cents) VALUES ($1, $2, 'PENDING', $3)
         RETURNING id, customer_id, state, reason, total_cents, created_at, updated_at",
    )
    .bind(id)
    .bind(customer_id)
    .bind(total_cents)
    .fetch_one(&mut *conn)
    .await?;
    let products: Vec<Uuid> = lines.iter().map(|l| l.product_id).collect();
    let quantities: Vec<i32> = lines.iter().map(|l| l.quantity).collect();
    let prices: Vec<i64> = lines.iter().map(|l| l.unit_price_cents).collect();
    sqlx::query(
        "INSERT INTO order_lines (order_id, line_no, product_id, quantity, unit_price_cents)
         SELECT $1, n::int, product_id, quantity, unit_price_cents
         FROM unnest($2::uuid[], $3::int4[], $4::int8[]) WITH ORDINALITY
              AS l(product_id, quantity, unit_price_cents, n)",
    )
    .bind(id)
    .bind(products)
    .bind(quantities)
    .bind(prices)
    .execute(&mut *conn)
    .await?;
    Ok(row.into_order(lines.to_vec())?)
}

async fn lines_of(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<OrderLine>>, sqlx::Error> {
    let rows: Vec<LineRow> = sqlx::query_as(
        "SELECT order_id, product_id, quantity, unit_price_cents FROM order_lines_all
         WHERE order_id = ANY($1) ORDER BY order_id, line_no",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    let mut lines: HashMap<Uuid, Vec<OrderLine>> = HashMap::new();
    for row in rows {
        lines.entry(row.order_id).or_default().push(OrderLine {
            product_id: row.product_id,
            quantity: row.quantity,
            unit_price_cents: row.unit_price_cents,
        });
    }
    Ok(lines)
}

async fn with_lines(conn: &mut PgConnection, rows: Vec<OrderRow>) -> Result<Vec<Order>> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut lines = lines_of(conn, &ids).await?;
    let orders = rows
        .into_iter()
        .map(|row| {
            let lines = lines.remove(&row.id).unwrap_or_default();
            row.into_order(lines)
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(orders)
}

/// The order `id`, live or archived.
///
/// # Errors
///
/// When a statement fails.
pub async fn find(conn: &mut PgConnection, id: Uuid) -> Result<Option<Order>> {
    let row: Option<OrderRow> = sqlx::query_as(
        "SELECT id, customer_id, state, reason, total_cents, created_at, updated_at
         FROM orders_all WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => Ok(with_lines(conn, vec![row]).await?.pop()),
        None => Ok(None),
    }
}

/// Up to `limit` of `customer_id`'s orders (live and archived), newest first, older than the
/// order `before` when given.
///
/// # Errors
///
/// When a statement fails.
pub async fn list(
    pool: &PgPool,
    customer_id: &str,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Order>> {
    let mut conn = pool.acquire().await?;
    let rows: Vec<OrderRow> = sqlx::query_as(
        "SELECT id, customer_id, state, reason, total_cents, created_at, updated_at
         FROM orders_all
         WHERE customer_id = $1 AND ($2::uuid IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3",
    )
    .bind(customer_id)
    .bind(before)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    with_lines(&mut conn, rows).await
}

/// A live order locked for update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locked {
    /// Who placed it.
    pub customer_id: String,
    /// Its state.
    pub state: OrderState,
}

/// Locks the live order `id` (`SELECT ... FOR UPDATE`) until the caller's transaction ends.
///
/// # Errors
///
/// When the statement fails.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<Locked>> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT customer_id, state FROM orders WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(conn)
            .await?;
    match row {
        Some((customer_id, name)) => Ok(Some(Locked {
            customer_id,
            state: state(&name)?,
        })),
        None => Ok(None),
    }
}

/// Locks the live orders `ids` (`FOR UPDATE`), in id order, so that transactions locking several
/// orders take them in one order.
///
/// # Errors
///
/// When the statement fails.
pub async fn lock_all(conn: &mut PgConnection, ids: &[Uuid]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT 1 FROM orders WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(ids)
        .execute(conn)
        .await?;
    Ok(())
}

/// Writes `transition` to `orders` (`(id, customer_id)`, locked by the caller's transaction)
/// and enqueues their announcements (`OrderConfirmed`, `OrderCompleted`, `OrderCancelled`), if it
/// has one, caused by `cause` (the event the saga is applying; `None` for a request or a job).
///
/// # Errors
///
/// When a statement fails.
pub async fn write(
    conn: &mut PgConnection,
    topics: &Topics,
    cause: Option<Cause>,
    orders: &[(Uuid, String)],
    transition: &Transition,
) -> Result<()> {
    let ids: Vec<Uuid> = orders.iter().map(|(id, _)| *id).collect();
    sqlx::query(
        "UPDATE orders SET state = $2, reason = coalesce($3, reason),
                reserved_at = CASE WHEN $4 THEN now() ELSE reserved_at END,
                updated_at = now()
         WHERE id = ANY($1)",
    )
    .bind(&ids)
    .bind(transition.to.as_str())
    .bind(transition.reason.as_deref())
    .bind(transition.reserved)
    .execute(&mut *conn)
    .await?;
    let mut events = Vec::new();
    for (order_id, customer_id) in orders {
        let event_id = transition
            .announcement(*order_id, customer_id)
            .map(|event| {
                let envelope = match cause {
                    Some(cause) => event.caused_by(cause),
                    None => event.into_envelope(),
                };
                events.push(commerce_platform::events::to_outbox(&envelope, topics));
                envelope.event_id
            });
        tracing::info!(%order_id, event_id = event_id.map(tracing::field::display), state = %transition.to, reason = transition.reason.as_deref(), "order state changed");
    }
    if !events.is_empty() {
        outbox::enqueue_many(conn, &events).await?;
    }
    metrics::counter!("orders_transitions_total", "to" => transition.to.as_str())
        .increment(ids.len() as u64);
    Ok(())
}

/// What [`transition`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No such live order.
    Missing,
    /// The input does not apply to the order's state; nothing changed.
    Unchanged(OrderState),
    /// The order moved.
    Applied(Transition),
}

/// Applies `input` (from the event `cause`) to the live order `id` in the caller's transaction:
/// locks the row, asks [`domain::apply`], writes the transition and its event.
///
/// # Errors
///
/// When a statement fails.
pub async fn transition(
    conn: &mut PgConnection,
    topics: &Topics,
    cause: Cause,
    id: Uuid,
    input: &Input,
) -> Result<Outcome> {
    let Some(locked) = lock(conn, id).await? else {
        return Ok(Outcome::Missing);
    };
    match domain::apply(locked.state, input) {
        Some(transition) => {
            let order = [(id, locked.customer_id)];
            write(conn, topics, Some(cause), &order, &transition).await?;
            Ok(Outcome::Applied(transition))
        }
        None => Ok(Outcome::Unchanged(locked.state)),
    }
}

/// Cancels `RESERVED` orders whose reservation is older than `timeout` (by the database clock)
/// with the reason "payment timeout" and an `OrderCancelled` event each, `chunk` orders per
/// transaction, until none is left. Returns how many were cancelled. Orders locked by someone
/// else (a payment being applied) are skipped and picked up by the next run.
///
/// # Errors
///
/// When a statement fails (chunks already committed stay committed).
pub async fn expire_reservations(
    pool: &PgPool,
    topics: &Topics,
    timeout: Duration,
    chunk: i64,
) -> Result<u64> {
    const WAITING: &str = "SELECT id, customer_id FROM orders
         WHERE state = 'RESERVED' AND reserved_at < now() - $1::interval
         ORDER BY reserved_at LIMIT $2 FOR UPDATE SKIP LOCKED";
    let transition = domain::apply(OrderState::Reserved, &Input::ReservationExpired);
    cancel_waiting(pool, topics, WAITING, timeout, transition, chunk).await
}

/// Cancels orders stuck in `PENDING` (no reservation answered) or `PAID` (no confirmation) for
/// longer than `after` (by the database clock), with the reason "stuck: no progress in time" and
/// an `OrderCancelled` each, so inventory gives back every unit it holds for them and payment
/// refunds every charge (and charges none later). In `chunk`s, as [`expire_reservations`];
/// returns how many were cancelled.
///
/// # Errors
///
/// When a statement fails (chunks already committed stay committed).
pub async fn cancel_stuck(
    pool: &PgPool,
    topics: &Topics,
    after: Duration,
    chunk: i64,
) -> Result<u64> {
    const WAITING: &str = "SELECT id, customer_id FROM orders
         WHERE state IN ('PENDING', 'PAID') AND updated_at < now() - $1::interval
         ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED";
    // PENDING and PAID orders are cancelled alike.
    let transition = domain::apply(OrderState::Pending, &Input::Stuck);
    cancel_waiting(pool, topics, WAITING, after, transition, chunk).await
}

/// Applies `transition` to the orders `waiting` selects (locked, `$1` the age, `$2` the chunk),
/// a chunk per transaction, until none is left.
async fn cancel_waiting(
    pool: &PgPool,
    topics: &Topics,
    waiting: &'static str,
    older_than: Duration,
    transition: Option<Transition>,
    chunk: i64,
) -> Result<u64> {
    let Some(transition) = transition else {
        return Ok(0);
    };
    let chunk = chunk.max(1);
    let mut total = 0;
    loop {
        let mut tx = pool.begin().await?;
        let orders: Vec<(Uuid, String)> = sqlx::query_as(waiting)
            .bind(leases::pg::interval(older_than))
            .bind(chunk)
            .fetch_all(&mut *tx)
            .await?;
        if orders.is_empty() {
            return Ok(total);
        }
        write(&mut tx, topics, None, &orders, &transition).await?;
        tx.commit().await?;
        total += orders.len() as u64;
        if (orders.len() as i64) < chunk {
            return Ok(total);
        }
    }
}

/// Moves finished orders (`COMPLETED`, `CANCELLED`, `FAILED`) whose last change is older than
/// `older_than` to `orders_archive` and `order_lines_archive`, `chunk` orders per transaction,
/// until none is left. Returns how many were moved. Archived orders stay readable through the
/// API.
///
/// # Errors
///
/// When a statement fails (chunks already committed stay committed).
pub async fn archive_finished(pool: &PgPool, older_than: Duration, chunk: i64) -> Result<u64> {
    let chunk = chunk.max(1);
    let mut total = 0;
    loop {
        let mut tx = pool.begin().await?;
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM orders
             WHERE state IN ('COMPLETED', 'CANCELLED', 'FAILED')
               AND updated_at < now() - $1::interval
             ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(leases::pg::interval(older_than))
        .bind(chunk)
        .fetch_all(&mut *tx)
        .await?;
        if ids.is_empty() {
            return Ok(total);
        }
        sqlx::query(
            "INSERT INTO orders_archive
                (id, customer_id, state, reason, total_cents, reserved_at, created_at, updated_at)
             SELECT id, customer_id, state, reason, total_cents, reserved_at, created_at, updated_at
             FROM orders WHERE id = ANY($1)",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO order_lines_archive (order_id, line_no, product_id, quantity, unit_price_cents)
             SELECT order_id, line_no, product_id, quantity, unit_price_cents
             FROM order_lines WHERE order_id = ANY($1)",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        // The lines go with their orders (ON DELETE CASCADE).
        sqlx::query("DELETE FROM orders WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(orders = ids.len(), "archived finished orders");
        total += ids.len() as u64;
        if (ids.len() as i64) < chunk {
            return Ok(total);
        }
    }
}

/// Deletes archived orders (and their lines) archived longer than `retention` ago, `chunk` per
/// statement, until none is left. Returns how many were deleted.
///
/// # Errors
///
/// When a statement fails (chunks already deleted stay deleted).
pub async fn prune_archive(pool: &PgPool, retention: Duration, chunk: i64) -> Result<u64> {
    let mut total = 0;
    loop {
        // The lines go with their orders (ON DELETE CASCADE).
        let deleted = sqlx::query(
            "DELETE FROM orders_archive WHERE id IN (
                 SELECT id FROM orders_archive WHERE archived_at < now() - $1::interval
                 ORDER BY archived_at LIMIT $2)",
        )
        .bind(leases::pg::interval(retention))
        .bind(chunk.max(1))
        .execute(pool)
        .await?
        .rows_affected();
        total += deleted;
        if deleted < chunk.max(1) as u64 {
            return Ok(total);
        }
    }
}
