//! Reads that count what the outbox holds, for the relay's gauges and for
//! [`status`](crate::status). Lease liveness comes from [`spec`](super::spec).

use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use crate::Result;
use crate::status::{DeadLetterGroup, PendingEvent};

/// What the relay's gauges show, read in one statement.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gauges {
    /// Unpublished events.
    pub(crate) pending: i64,
    /// Seconds since the oldest unpublished event was enqueued; `None` when none is pending.
    pub(crate) oldest_pending_secs: Option<f64>,
    /// Unpublished events leased by a relay right now.
    pub(crate) leased: i64,
    /// The dead-letter table's depth.
    pub(crate) dead_letters: i64,
}

/// Reads the relay's [`Gauges`].
pub(crate) async fn gauges(pool: &PgPool) -> Result<Gauges> {
    let held = super::spec().build()?.leased_at("now()");
    let (pending, oldest_pending_secs, leased, dead_letters) =
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8,
                    count(*) FILTER (WHERE {held}),
                    (SELECT count(*) FROM outbox_dead_letters)
             FROM outbox_events WHERE next_attempt_at IS NOT NULL"
        )))
        .fetch_one(pool)
        .await?;
    Ok(Gauges {
        pending,
        oldest_pending_secs,
        leased,
        dead_letters,
    })
}

/// The event counts of [`status`](crate::status), read in one statement.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backlog {
    /// Unpublished events.
    pub(crate) pending: i64,
    /// Seconds since the oldest unpublished event was enqueued; `None` when none is pending.
    pub(crate) oldest_pending_secs: Option<f64>,
    /// Failed events waiting for their next attempt, leased by no relay.
    pub(crate) waiting_for_retry: i64,
    /// Published events kept by [`Retention::Keep`](crate::Retention::Keep).
    pub(crate) published_kept: i64,
}

/// Reads the [`Backlog`] on `conn`.
pub(crate) async fn backlog(conn: &mut PgConnection) -> Result<Backlog> {
    let free = super::spec().build()?.free_at("now()");
    let (pending, oldest_pending_secs, waiting_for_retry, published_kept) = sqlx::query_as(
        AssertSqlSafe(format!(
            "SELECT count(*) FILTER (WHERE next_attempt_at IS NOT NULL),
                extract(epoch FROM now() - min(created_at) FILTER (WHERE next_attempt_at IS NOT NULL))::float8,
                count(*) FILTER (WHERE next_attempt_at > now() AND attempts > 0 AND {free}),
                count(*) FILTER (WHERE published_at IS NOT NULL)
         FROM outbox_events"
        )),
    )
    .fetch_one(conn)
    .await?;
    Ok(Backlog {
        pending,
        oldest_pending_secs,
        waiting_for_retry,
        published_kept,
    })
}

/// The oldest unpublished event, if any, read on `conn`.
pub(crate) async fn oldest_pending(conn: &mut PgConnection) -> Result<Option<PendingEvent>> {
    let leased = super::spec().build()?.leased_at("now()");
    Ok(sqlx::query_as(AssertSqlSafe(format!(
        "SELECT id, topic, aggregate_type, aggregate_id, attempts, last_error,
                CASE WHEN {leased} THEN lease_owner END AS leased_by
         FROM outbox_events WHERE next_attempt_at IS NOT NULL ORDER BY seq LIMIT 1"
    )))
    .fetch_optional(conn)
    .await?)
}

/// The leases held right now, read on `conn`: per owner (by name), how many events it holds and
/// in how many seconds the last of its leases runs out.
pub(crate) async fn leases_by_owner(
    conn: &mut PgConnection,
) -> Result<Vec<(Option<String>, i64, f64)>> {
    let leased = super::spec().build()?.leased_at("now()");
    Ok(sqlx::query_as(AssertSqlSafe(format!(
        "SELECT lease_owner, count(*), extract(epoch FROM max(lease_expires_at) - now())::float8
         FROM outbox_events WHERE {leased}
         GROUP BY lease_owner ORDER BY lease_owner"
    )))
    .fetch_all(conn)
    .await?)
}

/// The dead letters per topic and reason, in that order, read on `conn`.
pub(crate) async fn dead_letter_groups(conn: &mut PgConnection) -> Result<Vec<DeadLetterGroup>> {
    Ok(sqlx::query_as(
        "SELECT topic, reason, count(*) AS count, min(dead_at) AS oldest, max(dead_at) AS newest
         FROM outbox_dead_letters GROUP BY topic, reason ORDER BY topic, reason",
    )
    .fetch_all(conn)
    .await?)
}
