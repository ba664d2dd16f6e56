//! The dead-letter table: events that failed permanently, and the operations on them.

use chrono::{DateTime, Utc};
use leases::{Lease, RowLeases};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::Result;

/// An event that failed permanently.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeadLetter {
    /// The event's id.
    pub id: Uuid,
    /// Its topic.
    pub topic: String,
    /// Its aggregate type.
    pub aggregate_type: String,
    /// Its aggregate id.
    pub aggregate_id: String,
    /// Its type.
    pub event_type: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// How many times it was claimed.
    pub attempts: i32,
    /// Why it was dead-lettered (`permanent publish failure`, `attempts exhausted (N)`).
    pub reason: String,
    /// The last publish error.
    pub last_error: String,
    /// When it was dead-lettered.
    pub dead_at: DateTime<Utc>,
}

/// Moves a leased event to the dead-letter table with `reason` and `last_error`, if the lease is
/// still held: one fenced statement of `leases`.
pub(crate) async fn bury(
    pool: &PgPool,
    leases: &RowLeases,
    lease: &Lease<i64>,
    reason: &str,
    last_error: &str,
) -> Result<bool> {
    let moved = leases
        .move_query(
            lease,
            "INSERT INTO outbox_dead_letters
                (id, topic, aggregate_type, aggregate_id, event_type, payload, headers, dedup_key,
                 created_at, attempts, reason, last_error)
             SELECT id, topic, aggregate_type, aggregate_id, event_type, payload, headers, dedup_key,
                    created_at, attempts, $6, $7
             FROM moved
             ON CONFLICT (id) DO UPDATE SET attempts = EXCLUDED.attempts, reason = EXCLUDED.reason,
                last_error = EXCLUDED.last_error, dead_at = now()",
        )
        .bind(reason)
        .bind(last_error)
        .execute(pool)
        .await?;
    Ok(moved.rows_affected() == 1)
}

/// The oldest `limit` dead letters.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the query fails.
pub async fn list<'e>(executor: impl PgExecutor<'e>, limit: i64) -> Result<Vec<DeadLetter>> {
    Ok(sqlx::query_as(
        "SELECT id, topic, aggregate_type, aggregate_id, event_type, payload, created_at, attempts,
                reason, last_error, dead_at
         FROM outbox_dead_letters ORDER BY dead_at, id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(executor)
    .await?)
}

const REPLAY: &str = "WITH revived AS (
        DELETE FROM outbox_dead_letters WHERE $1::uuid IS NULL OR id = $1
        RETURNING id, topic, aggregate_type, aggregate_id, event_type, payload, headers, dedup_key,
                  created_at, dead_at)
    INSERT INTO outbox_events
        (id, topic, aggregate_type, aggregate_id, event_type, payload, headers, dedup_key, created_at)
    SELECT id, topic, aggregate_type, aggregate_id, event_type, payload, headers, dedup_key, created_at
    FROM revived ORDER BY dead_at, id";

/// Puts dead letter `id` back in the outbox with fresh attempts. It is published after every
/// event of its aggregate enqueued before the replay. Returns whether it existed.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the statement fails.
pub async fn replay<'e>(executor: impl PgExecutor<'e>, id: Uuid) -> Result<bool> {
    let done = sqlx::query(REPLAY).bind(Some(id)).execute(executor).await?;
    Ok(done.rows_affected() == 1)
}

/// Puts every dead letter back in the outbox, oldest first. Returns how many.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the statement fails.
pub async fn replay_all<'e>(executor: impl PgExecutor<'e>) -> Result<u64> {
    let done = sqlx::query(REPLAY)
        .bind(None::<Uuid>)
        .execute(executor)
        .await?;
    Ok(done.rows_affected())
}

/// Deletes dead letter `id` for good. Returns whether it existed.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the statement fails.
pub async fn discard<'e>(executor: impl PgExecutor<'e>, id: Uuid) -> Result<bool> {
    let done = sqlx::query("DELETE FROM outbox_dead_letters WHERE id = $1")
        .bind(id)
        .execute(executor)
        .await?;
    Ok(done.rows_affected() == 1)
}
