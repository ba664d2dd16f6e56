//! SQL on the shipping service's table. Every function takes the caller's connection, so the
//! saga's writes share the consumer's transaction and the API's its request's.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::ShipmentState;

/// A shipment, as stored and as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub(crate) struct Shipment {
    /// The order shipped (one shipment per order).
    pub(crate) order_id: Uuid,
    /// The shipment's own id.
    pub(crate) shipment_id: Uuid,
    /// Who placed the order and receives the parcel.
    pub(crate) customer_id: String,
    /// Where the shipment stands.
    pub(crate) state: ShipmentState,
    /// The carrier, absent for an order cancelled before it was ever shipped.
    #[schema(required = true)]
    pub(crate) carrier: Option<String>,
    /// The carrier's tracking number, absent for an order cancelled before it was ever shipped.
    #[schema(required = true)]
    pub(crate) tracking_number: Option<String>,
    /// Why it was cancelled.
    #[schema(required = true)]
    pub(crate) reason: Option<String>,
    /// When the shipment (or the cancellation that prevents it) was recorded.
    pub(crate) created_at: DateTime<Utc>,
    /// When its state last changed.
    pub(crate) updated_at: DateTime<Utc>,
    /// When it was delivered.
    #[schema(required = true)]
    pub(crate) delivered_at: Option<DateTime<Utc>>,
}

type ShipmentRow = (
    Uuid,
    Uuid,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

fn shipment(row: ShipmentRow) -> Result<Shipment, sqlx::Error> {
    let (
        order_id,
        shipment_id,
        customer_id,
        state,
        carrier,
        tracking_number,
        reason,
        created_at,
        updated_at,
        delivered_at,
    ) = row;
    let state = ShipmentState::parse(&state)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown shipment state {state:?}").into()))?;
    Ok(Shipment {
        order_id,
        shipment_id,
        customer_id,
        state,
        carrier,
        tracking_number,
        reason,
        created_at,
        updated_at,
        delivered_at,
    })
}

/// The columns of a [`ShipmentRow`], for `concat!` into static statements.
macro_rules! columns {
    () => {
        "order_id, shipment_id, customer_id, state, carrier, tracking_number, reason, created_at,
         updated_at, delivered_at"
    };
}

/// Serializes the saga's work on one order until the transaction ends: a confirmation and a
/// cancellation of the same order handled at the same time (possibly on different instances)
/// would otherwise both find no row and both insert one.
pub(crate) async fn lock_order(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<()> {
    // Class 5 (shipping saga) in the two-key advisory lock space; a hash collision only makes
    // two orders wait for each other.
    sqlx::query("SELECT pg_advisory_xact_lock(5, hashtext($1::text))")
        .bind(order_id)
        .execute(conn)
        .await
        .map(drop)
}

/// The order's shipment, if it has one.
pub(crate) async fn shipment_of(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> sqlx::Result<Option<Shipment>> {
    sqlx::query_as::<_, ShipmentRow>(concat!(
        "SELECT ",
        columns!(),
        " FROM shipments WHERE order_id = $1"
    ))
    .bind(order_id)
    .fetch_optional(conn)
    .await?
    .map(shipment)
    .transpose()
}

/// The order's shipment, if it has one, locked until the transaction ends: a delivery and a
/// cancellation of the same shipment wait for each other and see each other's result.
pub(crate) async fn lock_shipment(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> sqlx::Result<Option<Shipment>> {
    sqlx::query_as::<_, ShipmentRow>(concat!(
        "SELECT ",
        columns!(),
        " FROM shipments WHERE order_id = $1 FOR UPDATE"
    ))
    .bind(order_id)
    .fetch_optional(conn)
    .await?
    .map(shipment)
    .transpose()
}

/// A new shipment row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewShipment<'a> {
    pub(crate) order_id: Uuid,
    pub(crate) shipment_id: Uuid,
    pub(crate) customer_id: &'a str,
}

/// Inserts a `CREATED` shipment handed to `carrier` under `tracking_number`. Returns it, or
/// `None`, writing nothing, when the order already has a row: the primary key on `order_id` is
/// the last word on "one shipment per order".
pub(crate) async fn insert_created(
    conn: &mut PgConnection,
    new: NewShipment<'_>,
    carrier: &str,
    tracking_number: &str,
) -> sqlx::Result<Option<Shipment>> {
    sqlx::query_as::<_, ShipmentRow>(concat!(
        "INSERT INTO shipments
             (order_id, shipment_id, customer_id, state, carrier, tracking_number)
         VALUES ($1, $2, $3, 'CREATED', $4, $5)
         ON CONFLICT (order_id) DO NOTHING
         RETURNING ",
        columns!()
    ))
    .bind(new.order_id)
    .bind(new.shipment_id)
    .bind(new.customer_id)
    .bind(carrier)
    .bind(tracking_number)
    .fetch_optional(conn)
    .await?
    .map(shipment)
    .transpose()
}

/// Records a cancellation seen before any shipment: a `CANCELLED` row without carrier, so the
/// order is never shipped afterwards. Returns `false`, writing nothing, when the order already
/// has a row.
pub(crate) async fn insert_cancelled(
    conn: &mut PgConnection,
    new: NewShipment<'_>,
    reason: &str,
) -> sqlx::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO shipments (order_id, shipment_id, customer_id, state, reason)
         VALUES ($1, $2, $3, 'CANCELLED', $4)
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(new.order_id)
    .bind(new.shipment_id)
    .bind(new.customer_id)
    .bind(reason)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// `CREATED` -> `CANCELLED` with `reason`. Returns `false`, writing nothing, when the shipment
/// is not `CREATED` (anymore).
pub(crate) async fn cancel(
    conn: &mut PgConnection,
    order_id: Uuid,
    reason: &str,
) -> sqlx::Result<bool> {
    let updated = sqlx::query(
        "UPDATE shipments SET state = 'CANCELLED', reason = $2, updated_at = now()
         WHERE order_id = $1 AND state = 'CREATED'",
    )
    .bind(order_id)
    .bind(reason)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// `CREATED` -> `DELIVERED` (now). Returns the delivered shipment, or `None`, writing nothing,
/// when it is not `CREATED` (anymore).
pub(crate) async fn deliver(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> sqlx::Result<Option<Shipment>> {
    sqlx::query_as::<_, ShipmentRow>(concat!(
        "UPDATE shipments SET state = 'DELIVERED', delivered_at = now(), updated_at = now()
         WHERE order_id = $1 AND state = 'CREATED'
         RETURNING ",
        columns!()
    ))
    .bind(order_id)
    .fetch_optional(conn)
    .await?
    .map(shipment)
    .transpose()
}
