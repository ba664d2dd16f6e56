//! SQL on the `notifications` table. The insert takes the caller's connection, so it shares the
//! consumer's transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{Kind, Notification};

/// A notification, as the API shows it to its customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = Notification)]
pub(crate) struct StoredNotification {
    /// The notification's id (increasing in insertion order).
    pub(crate) id: i64,
    /// The event that caused it (one notification per event).
    pub(crate) event_id: Uuid,
    /// The order it is about.
    pub(crate) order_id: Uuid,
    /// What it is about.
    pub(crate) kind: Kind,
    /// What the customer reads.
    pub(crate) message: String,
    /// When the event happened.
    pub(crate) occurred_at: DateTime<Utc>,
}

type Row = (i64, Uuid, Uuid, String, String, DateTime<Utc>);

fn stored(row: Row) -> Result<StoredNotification, sqlx::Error> {
    let (id, event_id, order_id, kind, message, occurred_at) = row;
    let kind = Kind::parse(&kind)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown notification kind {kind:?}").into()))?;
    Ok(StoredNotification {
        id,
        event_id,
        order_id,
        kind,
        message,
        occurred_at,
    })
}

/// Inserts the notification `event_id` made. Returns `false`, writing nothing, when that event
/// already made one: the unique `event_id` is the last word on "one notification per event".
pub(crate) async fn insert(
    conn: &mut PgConnection,
    event_id: Uuid,
    occurred_at: DateTime<Utc>,
    notification: &Notification,
) -> sqlx::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO notifications (event_id, customer_id, order_id, kind, message, occurred_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(&notification.customer_id)
    .bind(notification.order_id)
    .bind(notification.kind.as_str())
    .bind(&notification.message)
    .bind(occurred_at)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// The first `limit` notifications of `customer_id`, oldest first, only those about `order_id`
/// if given.
pub(crate) async fn list(
    pool: &PgPool,
    customer_id: &str,
    order_id: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<StoredNotification>> {
    sqlx::query_as::<_, Row>(
        "SELECT id, event_id, order_id, kind, message, occurred_at
         FROM notifications
         WHERE customer_id = $1 AND ($2::uuid IS NULL OR order_id = $2)
         ORDER BY occurred_at, id
         LIMIT $3",
    )
    .bind(customer_id)
    .bind(order_id)
    .bind(limit)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(stored)
    .collect()
}
