//! The `inbox` table: which events a consumer has already applied.
//!
//! A consumer records an event's id in the same transaction as the event's effects. The record
//! commits if and only if the effects do, so a redelivered event (the broker is at-least-once)
//! finds its id and is skipped: its effect happens once. Two instances handling the same event at
//! the same time serialize on the row: the second waits for the first's transaction, then sees a
//! duplicate (or, if the first rolled back, applies the event itself).
//!
//! [`Consumer`](crate::Consumer) does this for every message; call [`receive`] directly when you
//! consume events some other way.

use std::collections::HashSet;
use std::sync::LazyLock;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use crate::{Error, Result};

/// Whether an event is new to a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a duplicate must not be applied again"]
pub enum Delivery {
    /// First time: apply the effects in the same transaction.
    Fresh,
    /// Already applied (by a committed transaction): skip it.
    Duplicate,
}

/// Records that `consumer` received `event_id`, inside the caller's transaction on `conn`
/// (`INSERT ... ON CONFLICT DO NOTHING` on `inbox`). Duplicates are counted in the
/// `inbox_duplicates_total{consumer}` metric.
///
/// ```no_run
/// use inbox::Delivery;
///
/// # async fn on_event(pool: sqlx::PgPool, event_id: &str) -> inbox::Result<()> {
/// let mut tx = pool.begin().await?;
/// if inbox::receive(&mut tx, "inventory", event_id).await? == Delivery::Fresh {
///     sqlx::query("UPDATE stock SET reserved = reserved + 1 WHERE sku = 'a'")
///         .execute(&mut *tx)
///         .await?;
/// }
/// tx.commit().await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::Database`] when the insert fails (the caller's transaction is then aborted).
pub async fn receive(conn: &mut PgConnection, consumer: &str, event_id: &str) -> Result<Delivery> {
    let inserted = sqlx::query(
        "INSERT INTO inbox (consumer, event_id) VALUES ($1, $2)
         ON CONFLICT (consumer, event_id) DO NOTHING",
    )
    .bind(consumer)
    .bind(event_id)
    .execute(conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        Ok(Delivery::Fresh)
    } else {
        metrics::counter!("inbox_duplicates_total", "consumer" => consumer.to_owned()).increment(1);
        Ok(Delivery::Duplicate)
    }
}

/// Records that `consumer` received each of `event_ids`, in one statement inside the caller's
/// transaction on `conn`, and returns the ids that were fresh (an id given twice is fresh at
/// most once). Duplicates are counted in the `inbox_duplicates_total{consumer}` metric. This is
/// what [`Consumer`](crate::Consumer) does for each batch; call it directly when you consume
/// events some other way.
///
/// ```no_run
/// # async fn on_events(pool: sqlx::PgPool, ids: &[&str]) -> inbox::Result<()> {
/// let mut tx = pool.begin().await?;
/// let fresh = inbox::receive_batch(&mut tx, "inventory", ids).await?;
/// for id in ids.iter().filter(|id| fresh.contains(**id)) {
///     // ... apply the event `id` on &mut *tx ...
/// #   let _ = id;
/// }
/// tx.commit().await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::Database`] when the insert fails (the caller's transaction is then aborted).
pub async fn receive_batch(
    conn: &mut PgConnection,
    consumer: &str,
    event_ids: &[&str],
) -> Result<HashSet<String>> {
    let fresh: Vec<String> = sqlx::query_scalar(
        "INSERT INTO inbox (consumer, event_id) SELECT $1, unnest($2::text[])
         ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id",
    )
    .bind(consumer)
    .bind(event_ids)
    .fetch_all(conn)
    .await?;
    let duplicates = event_ids.len() - fresh.len();
    if duplicates > 0 {
        metrics::counter!("inbox_duplicates_total", "consumer" => consumer.to_owned())
            .increment(duplicates as u64);
    }
    Ok(fresh.into_iter().collect())
}

/// The inbox's size, as [`status`] read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxStatus {
    /// How many records it holds, of every consumer.
    pub rows: i64,
    /// How long ago the oldest record was written; `None` when there is none.
    pub oldest_age: Option<Duration>,
}

/// Reads how many records the inbox holds and how old the oldest is: what [`purge`] keeps in
/// check (the `outboxctl status` command prints it).
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> inbox::Result<()> {
/// let status = inbox::status(&pool).await?;
/// println!("{} records, oldest {:?}", status.rows, status.oldest_age);
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::Database`] when the statement fails (for example when the `inbox` table does not
/// exist).
pub async fn status(pool: &PgPool) -> Result<InboxStatus> {
    let (rows, oldest): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), extract(epoch FROM now() - min(received_at))::float8 FROM inbox",
    )
    .fetch_one(pool)
    .await?;
    Ok(InboxStatus {
        rows,
        // Zero for a negative age (a clock step on the server).
        oldest_age: oldest.map(|seconds| Duration::try_from_secs_f64(seconds).unwrap_or_default()),
    })
}

/// Which records a purge deletes: received more than `$1` (an interval) ago. The one predicate of
/// [`purge`] and of its dry run, [`count_purgeable`].
const PURGEABLE: &str = "received_at < now() - $1::interval";

/// Deletes up to `$2` purgeable records, oldest first.
static PURGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "DELETE FROM inbox WHERE (consumer, event_id) IN (
            SELECT consumer, event_id FROM inbox WHERE {PURGEABLE}
            ORDER BY received_at
            LIMIT $2 FOR UPDATE SKIP LOCKED)"
    )
});

/// Counts the purgeable records.
static COUNT_PURGEABLE: LazyLock<String> =
    LazyLock::new(|| format!("SELECT count(*) FROM inbox WHERE {PURGEABLE}"));

/// Deletes inbox records older than `older_than`, `batch_size` rows per statement, until none is
/// left. Returns how many were deleted. [`count_purgeable`] is its dry run.
///
/// `older_than` must exceed the longest time the broker may redeliver an event (its retention,
/// or how far back a consumer group may be reset): an event redelivered after its record was
/// purged is applied again.
///
/// # Errors
///
/// [`Error::InvalidConfig`] for a zero `batch_size`; [`Error::Database`] when a statement fails
/// (batches already deleted stay deleted).
pub async fn purge(pool: &PgPool, older_than: Duration, batch_size: u32) -> Result<u64> {
    if batch_size == 0 {
        return Err(Error::InvalidConfig(
            "purge batch size must be greater than zero".into(),
        ));
    }
    let older_than = leases::pg::interval(older_than);
    let mut total = 0;
    loop {
        let deleted = sqlx::query(PURGE.as_str())
            .bind(older_than)
            .bind(i64::from(batch_size))
            .execute(pool)
            .await?
            .rows_affected();
        total += deleted;
        if deleted < u64::from(batch_size) {
            return Ok(total);
        }
    }
}

/// The dry run of [`purge`]: how many records it would delete now, with the same `older_than`.
/// Deletes nothing.
///
/// ```no_run
/// use std::time::Duration;
///
/// # async fn run(pool: sqlx::PgPool) -> inbox::Result<()> {
/// let fortnight = Duration::from_secs(14 * 86_400);
/// println!("{} records would go", inbox::count_purgeable(&pool, fortnight).await?);
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::Database`] when the statement fails.
pub async fn count_purgeable(pool: &PgPool, older_than: Duration) -> Result<u64> {
    let count: i64 = sqlx::query_scalar(COUNT_PURGEABLE.as_str())
        .bind(leases::pg::interval(older_than))
        .fetch_one(pool)
        .await?;
    Ok(u64::try_from(count).unwrap_or_default())
}
