//! [`status`]: what the outbox holds right now, for an operator (the `outboxctl status` command)
//! or a health page. Every number is read in one snapshot.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Result, table};

/// The outbox's backlog, leases and dead letters, as [`status`] read them.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OutboxStatus {
    /// Events not published yet: due, leased by a relay, or waiting for a retry.
    pub pending: i64,
    /// How long ago the oldest pending event was enqueued; `None` when none is pending.
    pub oldest_pending_age: Option<Duration>,
    /// The oldest pending event: the one holding up the backlog.
    pub oldest_pending: Option<PendingEvent>,
    /// Pending events that failed and wait for their next attempt, leased by no relay.
    pub waiting_for_retry: i64,
    /// Published events kept by [`Retention::Keep`](crate::Retention::Keep), until
    /// [`purge_published`](crate::purge_published) deletes them.
    pub published_kept: i64,
    /// The leases held right now, one entry per owner, by owner name.
    pub leases: Vec<OwnerLeases>,
    /// The dead-letter table, one entry per topic and reason, in that order.
    pub dead_letters: Vec<DeadLetterGroup>,
}

/// A pending event, as [`OutboxStatus::oldest_pending`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
#[non_exhaustive]
pub struct PendingEvent {
    /// The event's id.
    pub id: Uuid,
    /// Its topic.
    pub topic: String,
    /// Its aggregate type.
    pub aggregate_type: String,
    /// Its aggregate id.
    pub aggregate_id: String,
    /// How many times it was tried.
    pub attempts: i32,
    /// The last publish error, if it failed.
    pub last_error: Option<String>,
    /// The relay whose lease it is in right now, if any.
    pub leased_by: Option<String>,
}

/// The leases one owner (a relay) holds right now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OwnerLeases {
    /// The owner's name ([`RelayConfig::owner`](crate::RelayConfig::owner)).
    pub owner: Option<String>,
    /// How many events it holds leases on (with per-aggregate order, one per run: a run's first
    /// event holds the lease of the run).
    pub events: i64,
    /// How long until the last of its leases runs out, unless renewed.
    pub last_expires_in: Duration,
}

/// The dead letters of one topic and reason.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
#[non_exhaustive]
pub struct DeadLetterGroup {
    /// The topic.
    pub topic: String,
    /// Why they were dead-lettered (`permanent publish failure`, `attempts exhausted (N)`).
    pub reason: String,
    /// How many.
    pub count: i64,
    /// When the first of them was dead-lettered.
    pub oldest: DateTime<Utc>,
    /// When the last of them was dead-lettered.
    pub newest: DateTime<Utc>,
}

/// Reads the outbox's status in `pool`'s database (run [`MIGRATOR`](crate::MIGRATOR) first): its
/// backlog, the leases relays hold, the retries waiting and the dead letters. The statements run
/// in one read-only, repeatable-read transaction, so the numbers agree with each other; each
/// counts its table, so expect tens of milliseconds for a backlog of 100,000 events.
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> outbox::Result<()> {
/// let status = outbox::status(&pool).await?;
/// println!("{} pending, {} relays holding leases", status.pending, status.leases.len());
/// if let Some(event) = &status.oldest_pending {
///     println!("oldest: {} ({} attempts)", event.id, event.attempts);
/// }
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when a statement fails (for example when the
/// outbox's tables do not exist).
pub async fn status(pool: &PgPool) -> Result<OutboxStatus> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let backlog = table::status::backlog(&mut tx).await?;
    let oldest_pending = table::status::oldest_pending(&mut tx).await?;
    let leases = table::status::leases_by_owner(&mut tx).await?;
    let dead_letters = table::status::dead_letter_groups(&mut tx).await?;
    tx.commit().await?;
    Ok(OutboxStatus {
        pending: backlog.pending,
        oldest_pending_age: backlog.oldest_pending_secs.map(seconds),
        oldest_pending,
        waiting_for_retry: backlog.waiting_for_retry,
        published_kept: backlog.published_kept,
        leases: leases
            .into_iter()
            .map(|(owner, events, expires_in)| OwnerLeases {
                owner,
                events,
                last_expires_in: seconds(expires_in),
            })
            .collect(),
        dead_letters,
    })
}

/// `seconds` as a [`Duration`]; zero for a negative age (a clock step on the server).
fn seconds(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds).unwrap_or_default()
}
