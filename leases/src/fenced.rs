//! Fenced statements that also write the caller's own columns: release with a reason, complete with
//! a result, move a row to another table, and claim one row by key. Each is a single statement
//! returned unexecuted, so the caller binds its own values and runs it where it likes (in its
//! transaction, to make the lease change atomic with its other writes).

use std::time::Duration;

use sqlx::postgres::PgArguments;
use sqlx::{AssertSqlSafe, Postgres};

use crate::clock::{interval, positive_interval};
use crate::row::{Lease, LeaseId, RowLeases};
use crate::{Result, statements};

/// A statement built by [`RowLeases`], with the lease's parameters bound and the caller's still to
/// bind, in order, with [`bind`](sqlx::query::Query::bind).
pub type FencedQuery = sqlx::query::Query<'static, Postgres, PgArguments>;

/// How [`RowLeases::claim_key_query`] inserts a row or claims the existing one with the same key.
///
/// Every field is SQL written by the crate's user (`&'static str`, never input). The statement
/// binds `$1` (now), `$2` (owner) and `$3` (ttl); the caller's parameters are `$4` onward. The
/// lease columns (owner, token, expiry, and attempts and due time on a scheduled table) are set by
/// the statement itself.
#[derive(Debug, Clone, Copy)]
pub struct KeyClaim {
    /// The unique key, the `ON CONFLICT` target: `"scope, route, idempotency_key"`.
    pub conflict: &'static str,
    /// The caller's columns of a new row: `"scope, route, idempotency_key, created_at"`.
    pub columns: &'static str,
    /// Their values, in order; `claim.now` is the claim's time: `"$4, $5, $6, claim.now"`.
    pub values: &'static str,
    /// More `FROM` items for `values`, after `claim` (usually `""`): `", other_table AS o"`.
    pub from: &'static str,
    /// Assignments made when an existing row is claimed, over `excluded` (the new values), for
    /// example `"created_at = excluded.created_at, result = NULL"`; `""` for none.
    pub on_claim: &'static str,
    /// When an existing row whose lease is free (never held, released, finished or expired) may be
    /// claimed, referring to it by the table's name and to the new values as `excluded`; `"true"`
    /// for always. A row whose lease is valid is never claimed, whatever this says.
    pub claim_when: &'static str,
}

impl RowLeases {
    /// [`release`](Self::release), also setting the caller's columns in the same statement: `set`
    /// is a list of assignments whose parameters are `$7` onward (for example
    /// `"last_error = $7"`). It affects one row when the lease was still held, none when lost.
    /// In a table with [group columns](crate::TableSpecBuilder::group_columns) the release sets
    /// `attempts` itself (it counts a member's attempt), so `set` must not.
    ///
    /// ```no_run
    /// # async fn example(jobs: leases::RowLeases, pool: sqlx::PgPool, lease: leases::Lease<i64>) -> leases::Result<()> {
    /// use std::time::Duration;
    ///
    /// let held = jobs
    ///     .release_query(&lease, Duration::from_secs(5), "last_error = $7")?
    ///     .bind("broker unavailable")
    ///     .execute(&pool)
    ///     .await?
    ///     .rows_affected()
    ///     == 1;
    /// # let _ = held; Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a delay too large, or any delay on
    /// a table [without a schedule](crate::TableSpecBuilder::without_schedule).
    pub fn release_query<I: LeaseId>(
        &self,
        lease: &Lease<I>,
        retry_after: Duration,
        set: &'static str,
    ) -> Result<FencedQuery> {
        let delay = self.retry_delay(retry_after)?;
        let sql = statements::release(&self.sql.spec, set);
        Ok(self.held_query(&sql.into(), std::slice::from_ref(lease), delay))
    }

    /// [`complete`](Self::complete) on a table with [`Completion::Keep`](crate::Completion::Keep),
    /// also setting the caller's columns (a stored result, say): `set` is a list of assignments
    /// whose parameters are `$7` onward. It affects one row when the lease was still held.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) when the table deletes completed rows.
    pub fn complete_query<I: LeaseId>(
        &self,
        lease: &Lease<I>,
        set: &'static str,
    ) -> Result<FencedQuery> {
        let sql = statements::complete(&self.sql.spec, set)?;
        Ok(self.held_query(
            &sql.into(),
            std::slice::from_ref(lease),
            interval(Duration::ZERO),
        ))
    }

    /// Finishes a lease by moving its row: deletes it if the lease is still held and runs `insert`
    /// over the deleted row, available as `moved` with all the table's columns. `insert`'s
    /// parameters are `$7` onward. Nothing is deleted or inserted when the lease was lost.
    ///
    /// ```no_run
    /// # async fn example(jobs: leases::RowLeases, pool: sqlx::PgPool, lease: leases::Lease<i64>) -> leases::Result<()> {
    /// let moved = jobs
    ///     .move_query(&lease, "INSERT INTO failed_jobs (id, payload, reason)
    ///                          SELECT id, payload, $7 FROM moved")
    ///     .bind("payload does not parse")
    ///     .execute(&pool)
    ///     .await?
    ///     .rows_affected()
    ///     == 1;
    /// # let _ = moved; Ok(()) }
    /// ```
    pub fn move_query<I: LeaseId>(&self, lease: &Lease<I>, insert: &'static str) -> FencedQuery {
        let sql = statements::move_rows(&self.sql.spec, insert);
        self.held_query(
            &sql.into(),
            std::slice::from_ref(lease),
            interval(Duration::ZERO),
        )
    }

    /// Claims one row by its key for `ttl`: inserts it, or claims the existing row when its lease
    /// is free and [`KeyClaim::claim_when`] holds. Bind the caller's parameters (`$4` onward),
    /// then fetch: a row (decoded with [`sqlx::FromRow`] as a [`Lease`]) when claimed, none when
    /// the row exists and could not be claimed. Claiming increments the row's token, as every
    /// claim does.
    ///
    /// ```no_run
    /// # async fn example(locks: leases::RowLeases, pool: sqlx::PgPool) -> leases::Result<()> {
    /// use std::time::Duration;
    /// use leases::{KeyClaim, Lease};
    /// use sqlx::FromRow;
    ///
    /// const CLAIM: KeyClaim = KeyClaim {
    ///     conflict: "name",
    ///     columns: "name",
    ///     values: "$4",
    ///     from: "",
    ///     on_claim: "",
    ///     claim_when: "true",
    /// };
    /// let row = locks
    ///     .claim_key_query(&CLAIM, Duration::from_secs(30))?
    ///     .bind("nightly-report")
    ///     .fetch_optional(&pool)
    ///     .await?;
    /// let lease: Option<Lease<i64>> = row.as_ref().map(Lease::from_row).transpose()?;
    /// # let _ = lease; Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a zero `ttl`.
    pub fn claim_key_query(&self, claim: &KeyClaim, ttl: Duration) -> Result<FencedQuery> {
        let ttl = positive_interval("ttl", ttl)?;
        Ok(
            sqlx::query(AssertSqlSafe(statements::claim_key(&self.sql.spec, claim)))
                .bind(self.clock.now())
                .bind(self.owner.to_string())
                .bind(ttl),
        )
    }
}
