//! Row leases: claim due rows of a table, then renew, release or complete them while still the owner.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgHasArrayType, PgRow};
use sqlx::{AssertSqlSafe, FromRow, PgExecutor, Postgres, Row};

use crate::Result;
use crate::clock::{Clock, DatabaseClock, micros, positive_micros};
use crate::table::{Completion, TableSpec};

/// A type that can be a leased row's key: anything sqlx can bind and decode for PostgreSQL, and
/// bind as an array (`i64`, `i32`, `uuid::Uuid`, `String`, ...).
pub trait LeaseId:
    for<'q> sqlx::Encode<'q, Postgres>
    + for<'r> sqlx::Decode<'r, Postgres>
    + sqlx::Type<Postgres>
    + PgHasArrayType
    + Clone
    + PartialEq
    + Send
    + Sync
    + Unpin
    + 'static
{
}

impl<T> LeaseId for T where
    T: for<'q> sqlx::Encode<'q, Postgres>
        + for<'r> sqlx::Decode<'r, Postgres>
        + sqlx::Type<Postgres>
        + PgHasArrayType
        + Clone
        + PartialEq
        + Send
        + Sync
        + Unpin
        + 'static
{
}

/// A lease held on one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease<I> {
    /// The row's key.
    pub id: I,
    /// The fencing token: strictly greater than every earlier claim of this row.
    pub token: i64,
    /// When the lease runs out, in the clock's time.
    pub expires_at: DateTime<Utc>,
    /// How many times the row has been claimed, this claim included.
    pub attempts: i32,
}

/// Claims and manages leases on the rows of one table for one owner.
///
/// Every method is a single statement. `claim` picks due rows with `FOR UPDATE SKIP LOCKED`, so
/// concurrent claimers never wait on each other and never get the same row while its lease is
/// valid. `renew`, `release` and `complete` check owner and fencing token in the same statement and
/// change nothing when the lease was lost (expired and claimed by someone else, or already
/// completed or released).
///
/// Cloning is cheap; clones share the prepared statement texts.
#[derive(Debug, Clone)]
pub struct RowLeases {
    sql: Arc<Statements>,
    owner: Arc<str>,
    clock: Arc<dyn Clock>,
}

#[derive(Debug)]
struct Statements {
    claim: Arc<str>,
    claim_rows: Arc<str>,
    renew: Arc<str>,
    release: Arc<str>,
    complete: Arc<str>,
}

impl Statements {
    fn new(t: &TableSpec) -> Self {
        let TableSpec {
            table,
            id,
            owner,
            token,
            expires_at,
            attempts,
            next_attempt_at,
            ..
        } = t;
        let now = "coalesce($1::timestamptz, statement_timestamp())";
        let filter = t
            .claim_filter
            .map(|f| format!("AND ({f})"))
            .unwrap_or_default();
        let claim = |returning: &str| {
            format!(
                "WITH due AS (
                    SELECT c.{id} FROM {table} AS c
                    WHERE c.{next_attempt_at} <= {now}
                      AND (c.{expires_at} IS NULL OR c.{expires_at} <= {now})
                      {filter}
                    ORDER BY c.{next_attempt_at}, c.{id}
                    LIMIT $3
                    FOR UPDATE SKIP LOCKED
                )
                UPDATE {table} AS t
                SET {owner} = $2, {token} = t.{token} + 1, {attempts} = t.{attempts} + 1,
                    {expires_at} = {now} + $4::int8 * interval '1 microsecond'
                FROM due WHERE t.{id} = due.{id}
                RETURNING {returning}"
            )
        };
        // The lease columns come back under fixed aliases so `Lease` decodes the same whatever
        // the table calls them.
        let lease_cols = format!(
            "t.{id} AS lease_id, t.{token} AS lease_token, t.{expires_at} AS lease_expires_at, t.{attempts} AS lease_attempts"
        );
        // Statements over leases still held: `$1` ids, `$2` tokens (same positions), `$3` owner,
        // `$4` now (then `$5` a duration in microseconds where needed). The rows are found
        // through the key index (`id = ANY`), whatever the planner thinks of the other
        // predicates; each row's token is then looked up by its position in `$1`.
        let held = format!(
            "WHERE t.{id} = ANY($1) AND t.{token} = ($2::int8[])[array_position($1, t.{id})]
               AND t.{owner} = $3 AND t.{expires_at} IS NOT NULL"
        );
        let now4 = "coalesce($4::timestamptz, statement_timestamp())";
        let complete = match t.completion {
            Completion::Delete => format!("DELETE FROM {table} AS t {held} RETURNING t.{id}"),
            Completion::Keep => {
                let stamp = t
                    .completed_at
                    .as_ref()
                    .map(|column| format!(", {column} = {now4}"))
                    .unwrap_or_default();
                format!(
                    "UPDATE {table} AS t SET {expires_at} = NULL, {next_attempt_at} = NULL{stamp}
                     {held} RETURNING t.{id}"
                )
            }
        };
        Statements {
            claim: claim(&lease_cols).into(),
            claim_rows: claim(&format!("t.*, {lease_cols}")).into(),
            renew: format!(
                "UPDATE {table} AS t SET {expires_at} = {now4} + $5::int8 * interval '1 microsecond'
                 {held} RETURNING t.{id}, t.{expires_at}"
            )
            .into(),
            release: format!(
                "UPDATE {table} AS t SET {owner} = NULL, {expires_at} = NULL,
                    {next_attempt_at} = {now4} + $5::int8 * interval '1 microsecond'
                 {held} RETURNING t.{id}"
            )
            .into(),
            complete: complete.into(),
        }
    }
}

impl RowLeases {
    /// Leases on `table`'s rows held under the name `owner`, timed by the database clock.
    ///
    /// `owner` should be unique per worker (for example host, process id and a random suffix): two
    /// workers that share a name are one owner as far as the checks go, and only the fencing token
    /// tells their claims apart.
    pub fn new(table: &TableSpec, owner: impl Into<Arc<str>>) -> Self {
        Self {
            sql: Arc::new(Statements::new(table)),
            owner: owner.into(),
            clock: Arc::new(DatabaseClock),
        }
    }

    /// Replaces the clock (a [`ManualClock`](crate::ManualClock) in tests). Default: [`DatabaseClock`].
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The owner name every lease of this handle is held under.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Claims up to `limit` due rows (`next_attempt_at <= now` and no valid lease), oldest due
    /// first, for `ttl`. Each claim increments the row's token and attempts.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a zero `ttl`; [`Error::Database`](crate::Error::Database) when the statement fails.
    pub async fn claim<'e, I: LeaseId>(
        &self,
        executor: impl PgExecutor<'e>,
        limit: u32,
        ttl: Duration,
    ) -> Result<Vec<Lease<I>>> {
        let rows = self
            .claim_query(&self.sql.claim, limit, ttl)?
            .fetch_all(executor)
            .await?;
        rows.iter().map(lease_from_row).collect()
    }

    /// Like [`claim`](Self::claim), and also decodes each whole claimed row (after the claim's
    /// update) as `R`, so a worker gets its payload in the same round trip.
    ///
    /// # Errors
    ///
    /// As [`claim`](Self::claim), plus [`Error::Database`](crate::Error::Database) when a row does not decode as `R`.
    pub async fn claim_rows<'e, I, R>(
        &self,
        executor: impl PgExecutor<'e>,
        limit: u32,
        ttl: Duration,
    ) -> Result<Vec<(Lease<I>, R)>>
    where
        I: LeaseId,
        R: for<'r> FromRow<'r, PgRow>,
    {
        let rows = self
            .claim_query(&self.sql.claim_rows, limit, ttl)?
            .fetch_all(executor)
            .await?;
        rows.iter()
            .map(|row| Ok((lease_from_row(row)?, R::from_row(row)?)))
            .collect()
    }

    fn claim_query(
        &self,
        sql: &Arc<str>,
        limit: u32,
        ttl: Duration,
    ) -> Result<sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments>> {
        let ttl = positive_micros("ttl", ttl)?;
        Ok(sqlx::query(AssertSqlSafe(Arc::clone(sql)))
            .bind(self.clock.now())
            .bind(self.owner.to_string())
            .bind(i64::from(limit))
            .bind(ttl))
    }

    /// Extends one lease to `ttl` from now. Returns the new expiry, or `None` when the lease was lost.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a zero `ttl`; [`Error::Database`](crate::Error::Database) when the statement fails.
    pub async fn renew<'e, I: LeaseId>(
        &self,
        executor: impl PgExecutor<'e>,
        lease: &Lease<I>,
        ttl: Duration,
    ) -> Result<Option<DateTime<Utc>>> {
        let renewed = self
            .renew_many(executor, std::slice::from_ref(lease), ttl)
            .await?;
        Ok(renewed.into_iter().next().map(|(_, expires_at)| expires_at))
    }

    /// Extends many leases in one round trip. Returns the ids still held with their new expiry;
    /// a lease missing from the result was lost.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a zero `ttl`; [`Error::Database`](crate::Error::Database) when the statement fails.
    pub async fn renew_many<'e, I: LeaseId>(
        &self,
        executor: impl PgExecutor<'e>,
        leases: &[Lease<I>],
        ttl: Duration,
    ) -> Result<Vec<(I, DateTime<Utc>)>> {
        let ttl = positive_micros("ttl", ttl)?;
        let rows = self
            .held_query(&self.sql.renew, leases)
            .bind(ttl)
            .fetch_all(executor)
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    /// Gives one lease back. The row becomes due again `retry_after` from now (zero: at once), which
    /// is how a worker schedules a retry with backoff. Returns whether the lease was still held.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) when the statement fails.
    pub async fn release<'e, I: LeaseId>(
        &self,
        executor: impl PgExecutor<'e>,
        lease: &Lease<I>,
        retry_after: Duration,
    ) -> Result<bool> {
        let released = self
            .release_many(executor, std::slice::from_ref(lease), retry_after)
            .await?;
        Ok(!released.is_empty())
    }

    /// Gives many leases back in one round trip, all due again `retry_after` from now. Returns the
    /// ids that were still held.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) when the statement fails.
    pub async fn release_many<'e, I: LeaseId>(
        &self,
        executor: impl PgExecutor<'e>,
        leases: &[Lease<I>],
        retry_after: Duration,
    ) -> Result<Vec<I>> {
        let delay = micros("retry delay", retry_after)?;
        let rows = self
            .held_query(&self.sql.release, leases)
            .bind(delay)
            .fetch_all(executor)
            .await?;
        ids(&rows)
    }

    /// Finishes one lease: deletes or keeps the row as the table's [`Completion`] says. Returns
    /// whether the lease was still held; when it was not, nothing changed.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) when the statement fails.
    pub async fn complete<'e, I: LeaseId>(
        &self,
        executor: impl PgExecutor<'e>,
        lease: &Lease<I>,
    ) -> Result<bool> {
        let done = self
            .complete_many(executor, std::slice::from_ref(lease))
            .await?;
        Ok(!done.is_empty())
    }

    /// Finishes many leases in one round trip. Returns the ids that were still held (and are now
    /// finished); the others were lost and are unchanged.
    ///
    /// Pass a transaction as `executor` to make completion atomic with the work's own writes.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) when the statement fails.
    pub async fn complete_many<'e, I: LeaseId>(
        &self,
        executor: impl PgExecutor<'e>,
        leases: &[Lease<I>],
    ) -> Result<Vec<I>> {
        let rows = self
            .held_query(&self.sql.complete, leases)
            .fetch_all(executor)
            .await?;
        ids(&rows)
    }

    /// A statement over "leases still held": `$1` ids, `$2` tokens, `$3` owner, `$4` now.
    fn held_query<I: LeaseId>(
        &self,
        sql: &Arc<str>,
        leases: &[Lease<I>],
    ) -> sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments> {
        let ids: Vec<I> = leases.iter().map(|l| l.id.clone()).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| l.token).collect();
        sqlx::query(AssertSqlSafe(Arc::clone(sql)))
            .bind(ids)
            .bind(tokens)
            .bind(self.owner.to_string())
            .bind(self.clock.now())
    }
}

fn lease_from_row<I: LeaseId>(row: &PgRow) -> Result<Lease<I>> {
    Ok(Lease {
        id: row.try_get("lease_id")?,
        token: row.try_get("lease_token")?,
        expires_at: row.try_get("lease_expires_at")?,
        attempts: row.try_get("lease_attempts")?,
    })
}

fn ids<I: LeaseId>(rows: &[PgRow]) -> Result<Vec<I>> {
    rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
}
