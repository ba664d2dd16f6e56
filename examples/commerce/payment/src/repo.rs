//! SQL on the payment service's tables. Every function takes the caller's connection, so the
//! saga's writes share the consumer's transaction.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use commerce_events::Cause;
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::Status;

/// A payment, as stored and as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub(crate) struct Payment {
    /// The order paid for (one payment per order).
    pub(crate) order_id: Uuid,
    /// The payment's own id (a real provider's idempotency key).
    pub(crate) payment_id: Uuid,
    /// Who placed the order.
    pub(crate) customer_id: String,
    /// The amount charged, in cents of `currency`.
    pub(crate) amount_cents: i64,
    /// The amount's currency, an ISO 4217 code.
    pub(crate) currency: String,
    /// Where the payment stands.
    pub(crate) status: Status,
    /// Why it was declined or refunded.
    #[schema(required = true)]
    pub(crate) reason: Option<String>,
    /// The provider's id of the charge, once it approved it.
    #[schema(required = true)]
    pub(crate) provider_payment_id: Option<String>,
    /// When the payment was asked for.
    pub(crate) created_at: DateTime<Utc>,
    /// When its status last changed.
    pub(crate) updated_at: DateTime<Utc>,
}

/// A `payments` row as [`SELECT_PAYMENT`] reads it.
#[derive(sqlx::FromRow)]
struct PaymentRow {
    order_id: Uuid,
    payment_id: Uuid,
    customer_id: String,
    amount_cents: i64,
    currency: String,
    status: String,
    reason: Option<String>,
    provider_payment_id: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn payment(row: PaymentRow) -> Result<Payment, sqlx::Error> {
    let PaymentRow {
        order_id,
        payment_id,
        customer_id,
        amount_cents,
        currency,
        status,
        reason,
        provider_payment_id,
        created_at,
        updated_at,
    } = row;
    let status = Status::parse(&status)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown payment status {status:?}").into()))?;
    Ok(Payment {
        order_id,
        payment_id,
        customer_id,
        amount_cents,
        currency,
        status,
        reason,
        provider_payment_id,
        created_at,
        updated_at,
    })
}

/// Serializes the saga's work on one order until the transaction ends: a reservation and a
/// cancellation of the same order, handled at the same time (they come from different topics,
/// possibly on different instances), would otherwise both miss the other's uncommitted row.
pub(crate) async fn lock_order(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<()> {
    lock_orders(conn, &[order_id]).await
}

/// [`lock_order`] of each of `order_ids`, in one statement and in the order of their lock keys,
/// so that transactions locking several orders take them in one order.
pub(crate) async fn lock_orders(conn: &mut PgConnection, order_ids: &[Uuid]) -> sqlx::Result<()> {
    if order_ids.is_empty() {
        return Ok(());
    }
    // Class 3 (payment saga) in the two-key advisory lock space; a hash collision only makes
    // two orders wait for each other.
    sqlx::query(
        "SELECT pg_advisory_xact_lock(3, key)
         FROM (SELECT DISTINCT hashtext(id::text) AS key FROM unnest($1::uuid[]) AS o(id)) k
         ORDER BY key",
    )
    .bind(order_ids)
    .execute(conn)
    .await
    .map(drop)
}

/// Whether the order was cancelled.
pub(crate) async fn is_cancelled(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM cancelled_orders WHERE order_id = $1)")
        .bind(order_id)
        .fetch_one(conn)
        .await
}

/// Records the cancellation (a second one changes nothing).
pub(crate) async fn record_cancellation(
    conn: &mut PgConnection,
    order_id: Uuid,
    reason: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO cancelled_orders (order_id, reason) VALUES ($1, $2)
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(reason)
    .execute(conn)
    .await
    .map(drop)
}

const SELECT_PAYMENT: &str = "SELECT order_id, payment_id, customer_id, amount_cents, currency,
         status, reason, provider_payment_id, created_at, updated_at
     FROM payments WHERE order_id = $1";

/// The order's payment, if it has one.
pub(crate) async fn payment_of(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> sqlx::Result<Option<Payment>> {
    sqlx::query_as::<_, PaymentRow>(SELECT_PAYMENT)
        .bind(order_id)
        .fetch_optional(conn)
        .await?
        .map(payment)
        .transpose()
}

/// Inserts a `PENDING` payment, due for the charger at once, asked for by `cause` in the trace
/// `traceparent`. Returns `false`, writing nothing, when the order already has one: the primary
/// key on `order_id` is the last word on "at most one charge per order".
pub(crate) async fn insert_pending(
    conn: &mut PgConnection,
    order_id: Uuid,
    payment_id: Uuid,
    customer_id: &str,
    amount_cents: i64,
    cause: Cause,
    traceparent: Option<String>,
) -> sqlx::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO payments (order_id, payment_id, customer_id, amount_cents, status,
             next_attempt_at, cause_event_id, correlation_id, traceparent)
         VALUES ($1, $2, $3, $4, 'PENDING', now(), $5, $6, $7)
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(payment_id)
    .bind(customer_id)
    .bind(amount_cents)
    .bind(cause.event_id)
    .bind(cause.correlation_id)
    .bind(traceparent)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// A payment as the charger settles it.
#[derive(Debug, Clone)]
pub(crate) struct Settling {
    pub(crate) order_id: Uuid,
    pub(crate) payment_id: Uuid,
    pub(crate) customer_id: String,
    pub(crate) amount_cents: i64,
    pub(crate) status: Status,
    /// Whether the order was cancelled.
    pub(crate) cancelled: bool,
    /// The event that asked for it (`None` for payments recorded before it was stored).
    pub(crate) cause: Option<Cause>,
    /// The trace it was asked for in.
    pub(crate) traceparent: Option<String>,
}

type SettlingRow = (
    Uuid,
    Uuid,
    String,
    i64,
    String,
    bool,
    Option<Uuid>,
    Option<Uuid>,
    Option<String>,
);

/// The payments of `order_ids` (locked by the caller) as the charger settles them, by order.
pub(crate) async fn settling(
    conn: &mut PgConnection,
    order_ids: &[Uuid],
) -> sqlx::Result<HashMap<Uuid, Settling>> {
    let rows: Vec<SettlingRow> = sqlx::query_as(
        "SELECT p.order_id, p.payment_id, p.customer_id, p.amount_cents, p.status,
             EXISTS (SELECT 1 FROM cancelled_orders c WHERE c.order_id = p.order_id),
             p.cause_event_id, p.correlation_id, p.traceparent
         FROM payments p WHERE p.order_id = ANY($1)",
    )
    .bind(order_ids)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            let (order_id, payment_id, customer_id, amount_cents, status, cancelled) =
                (row.0, row.1, row.2, row.3, row.4, row.5);
            let status = Status::parse(&status).ok_or_else(|| {
                sqlx::Error::Decode(format!("unknown payment status {status:?}").into())
            })?;
            let cause = row.6.zip(row.7).map(|(event_id, correlation_id)| Cause {
                event_id,
                correlation_id,
            });
            let settling = Settling {
                order_id,
                payment_id,
                customer_id,
                amount_cents,
                status,
                cancelled,
                cause,
                traceparent: row.8,
            };
            Ok((order_id, settling))
        })
        .collect()
}

/// Writes charges' outcomes: `(order, status, reason, provider's charge id)`, the reason and
/// the charge id kept when `None`.
pub(crate) async fn set_outcomes(
    conn: &mut PgConnection,
    outcomes: &[(Uuid, Status, Option<String>, Option<String>)],
) -> sqlx::Result<()> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let orders: Vec<Uuid> = outcomes.iter().map(|o| o.0).collect();
    let statuses: Vec<&str> = outcomes.iter().map(|o| o.1.as_str()).collect();
    let reasons: Vec<Option<&str>> = outcomes.iter().map(|o| o.2.as_deref()).collect();
    let charges: Vec<Option<&str>> = outcomes.iter().map(|o| o.3.as_deref()).collect();
    sqlx::query(
        "UPDATE payments AS p SET status = u.status, reason = coalesce(u.reason, p.reason),
             provider_payment_id = coalesce(u.charge, p.provider_payment_id), updated_at = now()
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[])
             AS u(order_id, status, reason, charge)
         WHERE p.order_id = u.order_id",
    )
    .bind(orders)
    .bind(statuses)
    .bind(reasons)
    .bind(charges)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets the order's payment's status and reason.
pub(crate) async fn set_status(
    conn: &mut PgConnection,
    order_id: Uuid,
    status: Status,
    reason: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE payments SET status = $2, reason = coalesce($3, reason), updated_at = now()
         WHERE order_id = $1",
    )
    .bind(order_id)
    .bind(status.as_str())
    .bind(reason)
    .execute(conn)
    .await
    .map(drop)
}
