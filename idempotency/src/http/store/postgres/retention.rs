//! The keys' retention, for an operator: how many keys the table holds and how many have expired
//! ([`PostgresStore::status`]), and the purge of the expired ones
//! ([`PostgresStore::purge_expired`], dry run [`PostgresStore::count_expired`]).

use std::sync::LazyLock;

use leases::Clock as _;

use super::{PostgresStore, table_spec};
use crate::{Error, Result};

/// "Now" in these statements: the store's clock, bound as `$1`.
const NOW: &str = "coalesce($1::timestamptz, statement_timestamp())";

/// Which keys are expired, and purged: past their retention and not leased. The one predicate of
/// [`PostgresStore::purge_expired`], its dry run and [`KeysStatus::expired`].
static EXPIRED: LazyLock<String> =
    LazyLock::new(|| format!("retain_until <= {NOW} AND {}", table_spec().free_at(NOW)));

/// Deletes up to `$2` expired keys, those longest past their retention first.
static PURGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "DELETE FROM idempotency_keys WHERE id IN (
            SELECT id FROM idempotency_keys WHERE {}
            ORDER BY retain_until
            LIMIT $2
            FOR UPDATE SKIP LOCKED)",
        *EXPIRED
    )
});

/// Counts the expired keys.
static COUNT_EXPIRED: LazyLock<String> =
    LazyLock::new(|| format!("SELECT count(*) FROM idempotency_keys WHERE {}", *EXPIRED));

/// Counts all keys, the keys in flight and the expired keys.
static STATUS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT count(*), count(*) FILTER (WHERE {}), count(*) FILTER (WHERE {})
         FROM idempotency_keys",
        table_spec().leased_at(NOW),
        *EXPIRED
    )
});

/// The key table's size, as [`PostgresStore::status`] read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeysStatus {
    /// How many keys the table holds, expired ones included.
    pub keys: i64,
    /// Keys whose lease is held: a request with the key is running in lease mode.
    pub in_flight: i64,
    /// Keys past their retention and not leased: what
    /// [`purge_expired`](PostgresStore::purge_expired) would delete now.
    pub expired: i64,
}

impl PostgresStore {
    /// Counts the keys: all of them, those in flight, and those expired (by the store's clock).
    ///
    /// ```no_run
    /// # async fn run(pool: sqlx::PgPool) -> idempotency::Result<()> {
    /// let status = idempotency::PostgresStore::new(pool).status().await?;
    /// println!("{} keys ({} in flight, {} expired)", status.keys, status.in_flight, status.expired);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the statement fails (for example when the table does not exist).
    pub async fn status(&self) -> Result<KeysStatus> {
        let (keys, in_flight, expired) = sqlx::query_as(STATUS.as_str())
            .bind(self.clock.now())
            .fetch_one(&self.pool)
            .await?;
        Ok(KeysStatus {
            keys,
            in_flight,
            expired,
        })
    }

    /// Deletes keys past their retention (and not leased), `batch_size` rows per statement so
    /// no statement holds many locks for long, until none is left. Returns how many were
    /// deleted. Run it periodically (hourly, say); keys past retention are ignored on read
    /// anyway. [`count_expired`](Self::count_expired) is its dry run.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a zero `batch_size`; [`Error::Database`] when a statement
    /// fails (batches already deleted stay deleted).
    pub async fn purge_expired(&self, batch_size: u32) -> Result<u64> {
        if batch_size == 0 {
            return Err(Error::InvalidConfig(
                "purge batch size must be greater than zero".into(),
            ));
        }
        let mut total = 0;
        loop {
            let deleted = sqlx::query(PURGE.as_str())
                .bind(self.clock.now())
                .bind(i64::from(batch_size))
                .execute(&self.pool)
                .await?
                .rows_affected();
            total += deleted;
            if deleted < u64::from(batch_size) {
                return Ok(total);
            }
        }
    }

    /// The dry run of [`purge_expired`](Self::purge_expired): how many keys it would delete now.
    /// Deletes nothing.
    ///
    /// ```no_run
    /// # async fn run(pool: sqlx::PgPool) -> idempotency::Result<()> {
    /// let store = idempotency::PostgresStore::new(pool);
    /// println!("{} keys would go", store.count_expired().await?);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the statement fails.
    pub async fn count_expired(&self) -> Result<u64> {
        let count: i64 = sqlx::query_scalar(COUNT_EXPIRED.as_str())
            .bind(self.clock.now())
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(count).unwrap_or_default())
    }
}
