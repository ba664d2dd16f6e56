//! Row leases: claim due rows of a table, then renew, release or complete them while still the owner.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::error::BoxDynError;
use sqlx::postgres::types::PgInterval;
use sqlx::postgres::{PgArguments, PgHasArrayType, PgRow};
use sqlx::{Arguments as _, AssertSqlSafe, FromRow, PgExecutor, Postgres, Row};

use crate::clock::{Clock, DatabaseClock, positive_interval};
use crate::cursor::ClaimCursor;
use crate::pg::interval;
use crate::sql::Binds;
use crate::statements::Statements;
use crate::table::TableSpec;
use crate::{Error, Result};

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
    /// The fencing token of the [`holder`](Self::holder): strictly greater than every earlier
    /// claim of the holder's row.
    pub token: i64,
    /// When the lease runs out, in the clock's time.
    pub expires_at: DateTime<Utc>,
    /// How many times the row has been tried, this claim included (a run's member, claimed behind
    /// its head, counts the attempt when it is released).
    pub attempts: i32,
    /// The row whose lease this is: the row itself, or, in a table with
    /// [group columns](crate::TableSpecBuilder::group_columns), the head of the run it was claimed
    /// with. `token` and `expires_at` are the holder's, and the lease is held while the holder's
    /// is.
    pub holder: I,
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
    pub(crate) sql: Arc<Statements>,
    pub(crate) owner: Arc<str>,
    pub(crate) clock: Arc<dyn Clock>,
    cursor: Option<Arc<ClaimCursor>>,
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
            cursor: None,
        }
    }

    /// Replaces the clock (a [`ManualClock`](crate::ManualClock) in tests). Default: [`DatabaseClock`].
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Starts each claim where the last one began when that claim came back full, instead of at
    /// the head of the due index, and from the head again after a claim that comes back short and
    /// at least every `rescan`. Default: every claim starts at the head.
    ///
    /// Turn it on for a queue that can fall behind while a long transaction (or a replica's
    /// `hot_standby_feedback`) holds back vacuum. Rows deleted after the oldest snapshot stay in
    /// the due index, where PostgreSQL cannot mark their entries dead, and a claim from the head
    /// steps over every one of them: `benches/lease_growth` measured a claim+complete loop falling
    /// to a tenth of its rate within a minute of a held snapshot. With the cursor a claim skips
    /// them, and only the walks from the head pay for them.
    ///
    /// The cost: a row left behind the cursor waits until a claim comes back short or `rescan`
    /// has passed: one whose lease expired, one committed late with an earlier due time, one that
    /// another claimer locked and then gave back, or, in a table with
    /// [group columns](crate::TableSpecBuilder::group_columns), one that became its group's head
    /// after a claim passed it. Clones share the cursor.
    ///
    /// ```
    /// use std::time::Duration;
    /// use leases::{RowLeases, TableSpec};
    ///
    /// let spec = TableSpec::builder("jobs").build()?;
    /// let leases = RowLeases::new(&spec, "worker-1").claim_cursor(Duration::from_secs(10));
    /// # Ok::<(), leases::Error>(())
    /// ```
    pub fn claim_cursor(mut self, rescan: Duration) -> Self {
        self.cursor = Some(Arc::new(ClaimCursor::new(rescan)));
        self
    }

    /// The owner name every lease of this handle is held under.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Claims up to `limit` due rows (`next_attempt_at <= now` and no valid lease), oldest due
    /// first, for `ttl`. Each claim increments the row's token and attempts (in a table with
    /// [group columns](crate::TableSpecBuilder::group_columns), the run's head's only).
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
            .claim_query(self.sql.claim.as_ref(), limit, ttl)?
            .fetch_all(executor)
            .await?;
        self.claimed(&rows, limit)?;
        rows.iter().map(lease_from_row).collect()
    }

    /// Like [`claim`](Self::claim), and also decodes each whole claimed row (after the claim's
    /// update; a run's member, which the claim does not write, as it was) as `R`, so a worker
    /// gets its payload in the same round trip.
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
            .claim_query(self.sql.claim_rows.as_ref(), limit, ttl)?
            .fetch_all(executor)
            .await?;
        self.claimed(&rows, limit)?;
        rows.iter()
            .map(|row| Ok((lease_from_row(row)?, R::from_row(row)?)))
            .collect()
    }

    fn claim_query(
        &self,
        sql: Option<&Arc<str>>,
        limit: u32,
        ttl: Duration,
    ) -> Result<sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments>> {
        let sql = sql.ok_or_else(|| {
            Error::InvalidConfig(
                "a table without a schedule is claimed by key only (claim_key_query)".into(),
            )
        })?;
        let ttl = positive_interval("ttl", ttl)?;
        Ok(sqlx::query(AssertSqlSafe(Arc::clone(sql)))
            .bind(self.clock.now())
            .bind(self.owner.to_string())
            .bind(i64::from(limit))
            .bind(ttl)
            .bind(self.cursor.as_ref().and_then(|cursor| cursor.start())))
    }

    /// Moves the claim cursor, if there is one, after a claim that returned `rows`.
    fn claimed(&self, rows: &[PgRow], limit: u32) -> Result<()> {
        if let Some(cursor) = &self.cursor {
            let due: Vec<Option<DateTime<Utc>>> = rows
                .iter()
                .map(|row| row.try_get("lease_due"))
                .collect::<sqlx::Result<_>>()?;
            let earliest = due.into_iter().flatten().min();
            cursor.claimed(rows.len() >= limit as usize, earliest);
        }
        Ok(())
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
    /// a lease missing from the result was lost. A run's member is renewed with its head.
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
        let ttl = positive_interval("ttl", ttl)?;
        let rows = self
            .held_query(&self.sql.renew, leases, ttl)?
            .fetch_all(executor)
            .await?;
        let renewed: Vec<(I, DateTime<Utc>)> = rows
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_>>()?;
        // The statement renews the holders; each lease takes its holder's expiry.
        Ok(leases
            .iter()
            .filter_map(|lease| {
                let (_, expires_at) = renewed.iter().find(|(id, _)| *id == lease.holder)?;
                Some((lease.id.clone(), *expires_at))
            })
            .collect())
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
        let delay = self.retry_delay(retry_after)?;
        let rows = self
            .held_query(&self.sql.release, leases, delay)?
            .fetch_all(executor)
            .await?;
        ids(&rows)
    }

    /// Finishes one lease: deletes or keeps the row as the table's [`Completion`](crate::Completion) says. Returns
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
            .held_query(&self.sql.complete, leases, interval(Duration::ZERO))?
            .fetch_all(executor)
            .await?;
        ids(&rows)
    }

    /// `retry_after` as an interval; a table without a schedule has no later due time to set.
    pub(crate) fn retry_delay(&self, retry_after: Duration) -> Result<PgInterval> {
        if !self.sql.spec.scheduled && !retry_after.is_zero() {
            return Err(Error::InvalidConfig(
                "a table without a schedule is free again at once: retry_after must be zero".into(),
            ));
        }
        Ok(interval(retry_after))
    }

    /// A statement over "leases still held": `$1` ids, `$2` tokens, `$3` owner, `$4` now,
    /// `$5` `interval` and `$6` the holders.
    pub(crate) fn held_query<I: LeaseId>(
        &self,
        sql: &Arc<str>,
        leases: &[Lease<I>],
        interval: PgInterval,
    ) -> Result<sqlx::query::Query<'static, Postgres, PgArguments>> {
        let args = self
            .held_arguments(leases, interval)
            .map_err(sqlx::Error::Encode)?;
        Ok(sqlx::query_with(AssertSqlSafe(Arc::clone(sql)), args))
    }

    /// [`held_query`](Self::held_query) over `sql` (a statement with the caller's SQL in it) for
    /// one lease, with the caller's values `binds` bound after the lease's.
    pub(crate) fn held_statement<I: LeaseId>(
        &self,
        sql: String,
        lease: &Lease<I>,
        interval: PgInterval,
        binds: Binds,
    ) -> Result<sqlx::query::Query<'static, Postgres, PgArguments>> {
        let own = self.held_arguments(std::slice::from_ref(lease), interval);
        crate::sql::statement(sql, own, binds)
    }

    fn held_arguments<I: LeaseId>(
        &self,
        leases: &[Lease<I>],
        interval: PgInterval,
    ) -> std::result::Result<PgArguments, BoxDynError> {
        let ids: Vec<I> = leases.iter().map(|l| l.id.clone()).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| l.token).collect();
        let holders: Vec<I> = leases.iter().map(|l| l.holder.clone()).collect();
        let mut args = PgArguments::default();
        args.add(ids)?;
        args.add(tokens)?;
        args.add(self.owner.to_string())?;
        args.add(self.clock.now())?;
        args.add(interval)?;
        args.add(holders)?;
        Ok(args)
    }
}

/// Decodes a lease from the columns every claim returns (`lease_id`, `lease_token`,
/// `lease_expires_at`, `lease_attempts`, `lease_holder`), as for the row of a
/// [`claim_key_query`](RowLeases::claim_key_query).
impl<'r, I: LeaseId> FromRow<'r, PgRow> for Lease<I> {
    fn from_row(row: &'r PgRow) -> sqlx::Result<Self> {
        Ok(Lease {
            id: row.try_get("lease_id")?,
            token: row.try_get("lease_token")?,
            expires_at: row.try_get("lease_expires_at")?,
            attempts: row.try_get("lease_attempts")?,
            holder: row.try_get("lease_holder")?,
        })
    }
}

fn lease_from_row<I: LeaseId>(row: &PgRow) -> Result<Lease<I>> {
    Ok(Lease::from_row(row)?)
}

fn ids<I: LeaseId>(rows: &[PgRow]) -> Result<Vec<I>> {
    rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
}
