//! Fenced statements that also write the caller's own columns: release with a reason, complete with
//! a result, move a row to another table, and claim one row by key. Each is a single statement
//! returned unexecuted, every value bound, so the caller runs it where it likes (in its
//! transaction, to make the lease change atomic with its other writes). The caller's SQL comes as
//! an [`Sql`] (or a [`KeyClaim`] with its [`Binds`]) whose parameters are numbered from `$1`.

use std::time::Duration;

use sqlx::postgres::PgArguments;
use sqlx::{Arguments as _, Postgres};

use crate::Result;
use crate::clock::positive_interval;
use crate::pg::interval;
use crate::row::{Lease, LeaseId, RowLeases};
use crate::sql::{self, Binds, Sql};
use crate::statements::{self, KeyClaim};

/// A statement built by this crate, every value bound (the crate's and the caller's): run it
/// with `execute`, `fetch_one` and the like. Binding more values makes PostgreSQL refuse it.
pub type FencedQuery = sqlx::query::Query<'static, Postgres, PgArguments>;

impl RowLeases {
    /// [`release`](Self::release), also setting the caller's columns in the same statement: `set`
    /// is a list of assignments (for example `Sql::new("last_error = $1").bind(reason)`). It
    /// affects one row when the lease was still held, none when lost.
    /// In a table with [group columns](crate::TableSpecBuilder::group_columns) the release sets
    /// `attempts` itself (it counts a member's attempt), so `set` must not.
    ///
    /// ```no_run
    /// # async fn example(jobs: leases::RowLeases, pool: sqlx::PgPool, lease: leases::Lease<i64>) -> leases::Result<()> {
    /// use std::time::Duration;
    /// use leases::Sql;
    ///
    /// let set = Sql::new("last_error = $1").bind("broker unavailable");
    /// let held = jobs
    ///     .release_query(&lease, Duration::from_secs(5), set)?
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
    /// a table [without a schedule](crate::TableSpecBuilder::without_schedule);
    /// [`Error::InvalidStatement`](crate::Error::InvalidStatement) when `set`'s parameters are
    /// not `$1` to `$n` for its `n` values.
    pub fn release_query<I: LeaseId>(
        &self,
        lease: &Lease<I>,
        retry_after: Duration,
        set: Sql,
    ) -> Result<FencedQuery> {
        let delay = self.retry_delay(retry_after)?;
        let (set, binds) = set.after(HELD_PARAMETERS)?;
        let sql = statements::release(&self.sql.spec, &set);
        self.held_statement(sql, lease, delay, binds)
    }

    /// [`complete`](Self::complete) on a table with [`Completion::Keep`](crate::Completion::Keep),
    /// also setting the caller's columns (a stored result, say): `set` is a list of assignments.
    /// It affects one row when the lease was still held.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) when the table deletes completed rows
    /// and `set` is not empty; [`Error::InvalidStatement`](crate::Error::InvalidStatement) when
    /// `set`'s parameters are not `$1` to `$n` for its `n` values.
    pub fn complete_query<I: LeaseId>(&self, lease: &Lease<I>, set: Sql) -> Result<FencedQuery> {
        let (set, binds) = set.after(HELD_PARAMETERS)?;
        let sql = statements::complete(&self.sql.spec, &set)?;
        self.held_statement(sql, lease, interval(Duration::ZERO), binds)
    }

    /// Finishes a lease by moving its row: deletes it if the lease is still held and runs `insert`
    /// over the deleted row, available as `moved` with all the table's columns. Nothing is deleted
    /// or inserted when the lease was lost.
    ///
    /// ```no_run
    /// # async fn example(jobs: leases::RowLeases, pool: sqlx::PgPool, lease: leases::Lease<i64>) -> leases::Result<()> {
    /// use leases::Sql;
    ///
    /// let insert = Sql::new(
    ///     "INSERT INTO failed_jobs (id, payload, reason) SELECT id, payload, $1 FROM moved",
    /// )
    /// .bind("payload does not parse");
    /// let moved = jobs
    ///     .move_query(&lease, insert)?
    ///     .execute(&pool)
    ///     .await?
    ///     .rows_affected()
    ///     == 1;
    /// # let _ = moved; Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidStatement`](crate::Error::InvalidStatement) when `insert`'s parameters are
    /// not `$1` to `$n` for its `n` values.
    pub fn move_query<I: LeaseId>(&self, lease: &Lease<I>, insert: Sql) -> Result<FencedQuery> {
        let (insert, binds) = insert.after(HELD_PARAMETERS)?;
        let sql = statements::move_rows(&self.sql.spec, &insert);
        self.held_statement(sql, lease, interval(Duration::ZERO), binds)
    }

    /// Claims one row by its key for `ttl`: inserts it, or claims the existing row when its lease
    /// is free and [`KeyClaim::claim_when`] holds. `binds` are the values of the claim's
    /// parameters (`$1` onward, across all its fields). Fetch: a row (decoded with [`sqlx::FromRow`] as a [`Lease`]) when claimed, none when
    /// the row exists and could not be claimed. Claiming increments the row's token, as every
    /// claim does.
    ///
    /// ```no_run
    /// # async fn example(locks: leases::RowLeases, pool: sqlx::PgPool) -> leases::Result<()> {
    /// use std::time::Duration;
    /// use leases::{Binds, KeyClaim, Lease};
    /// use sqlx::FromRow;
    ///
    /// const CLAIM: KeyClaim = KeyClaim {
    ///     conflict: "name",
    ///     columns: "name",
    ///     values: "$1",
    ///     from: "",
    ///     on_claim: "",
    ///     claim_when: "true",
    /// };
    /// let row = locks
    ///     .claim_key_query(&CLAIM, Duration::from_secs(30), Binds::new().bind("nightly-report"))?
    ///     .fetch_optional(&pool)
    ///     .await?;
    /// let lease: Option<Lease<i64>> = row.as_ref().map(Lease::from_row).transpose()?;
    /// # let _ = lease; Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a zero `ttl`;
    /// [`Error::InvalidStatement`](crate::Error::InvalidStatement) when the claim's parameters are
    /// not `$1` to `$n` for the `n` values of `binds`.
    pub fn claim_key_query(
        &self,
        claim: &KeyClaim,
        ttl: Duration,
        binds: Binds,
    ) -> Result<FencedQuery> {
        let ttl = positive_interval("ttl", ttl)?;
        let sql = statements::claim_key(&self.sql.spec, claim, binds.len())?;
        let mut own = PgArguments::default();
        let added = own
            .add(self.clock.now())
            .and_then(|()| own.add(self.owner.to_string()))
            .and_then(|()| own.add(ttl));
        sql::statement(sql, added.map(|()| own), binds)
    }
}

/// The parameters every statement over a held lease binds first ([`RowLeases::held_query`]).
const HELD_PARAMETERS: usize = 6;
