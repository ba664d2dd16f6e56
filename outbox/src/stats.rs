//! Gauges of the outbox's backlog, and retention of published events.

use std::time::Duration;

use leases::task::{Background, CancellationToken};
use sqlx::PgPool;

use crate::{Result, table};

/// How often a relay records the gauges.
const EVERY: Duration = Duration::from_secs(5);

/// Records the gauges every [`EVERY`] until stopped, beside the relay's claims rather than between
/// them: counting a backlog of 200,000 events takes about 50 ms, and while the relay's own loop
/// ran the count it claimed nothing (it showed in the p99 of the relay's latency).
pub(crate) fn spawn(pool: PgPool, name: String) -> Background<()> {
    Background::spawn(|stop| gauges(pool, name, stop))
}

async fn gauges(pool: PgPool, name: String, stop: CancellationToken) {
    loop {
        if let Err(error) = record(&pool, &name).await {
            tracing::debug!(%error, "outbox: pending stats failed");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// Records the outbox's gauges, labelled `relay = name`: `outbox_pending` (unpublished events),
/// `outbox_oldest_pending_age_seconds`, `outbox_leased` (events leased by a relay right now) and
/// `outbox_dead_letters` (the dead-letter table's depth).
async fn record(pool: &PgPool, name: &str) -> Result<()> {
    let table::status::Gauges {
        pending,
        oldest_pending_secs,
        leased,
        dead_letters,
    } = table::status::gauges(pool).await?;
    let relay = name.to_owned();
    metrics::gauge!("outbox_pending", "relay" => relay.clone()).set(pending as f64);
    metrics::gauge!("outbox_oldest_pending_age_seconds", "relay" => relay.clone())
        .set(oldest_pending_secs.unwrap_or(0.0));
    metrics::gauge!("outbox_leased", "relay" => relay.clone()).set(leased as f64);
    metrics::gauge!("outbox_dead_letters", "relay" => relay).set(dead_letters as f64);
    Ok(())
}

/// With [`Retention::Keep`](crate::Retention::Keep): deletes events published more than
/// `older_than` ago, `batch_size` rows per statement so no statement holds many locks for long,
/// until none is left. Returns how many were deleted. [`count_purgeable`] is its dry run.
///
/// ```no_run
/// use std::time::Duration;
///
/// # async fn run(pool: sqlx::PgPool) -> outbox::Result<()> {
/// let week = Duration::from_secs(7 * 86_400);
/// let deleted = outbox::purge_published(&pool, week, 1000).await?;
/// # let _ = deleted; Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a zero `batch_size`;
/// [`Error::Database`](crate::Error::Database) when a statement fails (batches already deleted
/// stay deleted).
pub async fn purge_published(pool: &PgPool, older_than: Duration, batch_size: u32) -> Result<u64> {
    if batch_size == 0 {
        return Err(crate::Error::InvalidConfig(
            "purge batch size must be greater than zero".into(),
        ));
    }
    let mut total = 0;
    loop {
        let deleted = table::events::purge(pool, older_than, batch_size).await?;
        total += deleted;
        if deleted < u64::from(batch_size) {
            return Ok(total);
        }
    }
}

/// The dry run of [`purge_published`]: how many events it would delete now, with the same
/// `older_than`. Deletes nothing.
///
/// ```no_run
/// use std::time::Duration;
///
/// # async fn run(pool: sqlx::PgPool) -> outbox::Result<()> {
/// let week = Duration::from_secs(7 * 86_400);
/// println!("{} published events are older than a week", outbox::count_purgeable(&pool, week).await?);
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the statement fails.
pub async fn count_purgeable(pool: &PgPool, older_than: Duration) -> Result<u64> {
    table::events::count_purgeable(pool, older_than).await
}
