//! Named leases: one row per name in `leases_named`, for singleton jobs and leader election.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgArguments;
use sqlx::{Arguments as _, FromRow, PgExecutor};

use crate::Result;
use crate::clock::{Clock, DatabaseClock, positive_interval};
use crate::fenced::FencedQuery;
use crate::sql::Sql;

/// A named lease held by one owner.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct NamedLease {
    /// The lease's name (the job or the role).
    pub name: String,
    /// Who holds it.
    pub owner: String,
    /// The fencing token: greater than the token of every earlier holder. Pass it along with
    /// writes the holder makes, so a deposed holder's late writes can be refused.
    pub token: i64,
    /// When the lease runs out unless renewed, in the clock's time.
    pub expires_at: DateTime<Utc>,
    /// When this holder took the lease.
    pub acquired_at: DateTime<Utc>,
}

/// Acquires, renews and releases named leases (table `leases_named`, created by [`MIGRATOR`](crate::MIGRATOR)).
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool) -> leases::Result<()> {
/// use std::time::Duration;
/// use leases::NamedLeases;
///
/// let named = NamedLeases::new();
/// if let Some(lease) = named.acquire(&pool, "archiver", "worker-1", Duration::from_secs(30)).await? {
///     // ... run the singleton job, renewing before `lease.expires_at` ...
///     named.release(&pool, &lease).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct NamedLeases {
    clock: Arc<dyn Clock>,
}

impl Default for NamedLeases {
    fn default() -> Self {
        Self::new()
    }
}

impl NamedLeases {
    /// Named leases timed by the database clock.
    pub fn new() -> Self {
        Self {
            clock: Arc::new(DatabaseClock),
        }
    }

    /// Replaces the clock (a [`ManualClock`](crate::ManualClock) in tests). Default: [`DatabaseClock`].
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Takes the lease `name` for `owner` for `ttl` if it is free (never held, released or
    /// expired) or already held by `owner`. Returns `None` when another owner holds it.
    ///
    /// Taking a free lease increments its token; re-acquiring one's own valid lease keeps the
    /// token and extends it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a zero `ttl`; [`Error::Database`](crate::Error::Database) when the statement fails.
    pub async fn acquire<'e>(
        &self,
        executor: impl PgExecutor<'e>,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<NamedLease>> {
        let ttl = positive_interval("ttl", ttl)?;
        Ok(sqlx::query_as(ACQUIRE)
            .bind(self.clock.now())
            .bind(name)
            .bind(owner)
            .bind(ttl)
            .fetch_optional(executor)
            .await?)
    }

    /// Extends `lease` to `ttl` from now. Returns the renewed lease, or `None` when it was lost
    /// (released, or expired and taken by another owner).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a zero `ttl`; [`Error::Database`](crate::Error::Database) when the statement fails.
    pub async fn renew<'e>(
        &self,
        executor: impl PgExecutor<'e>,
        lease: &NamedLease,
        ttl: Duration,
    ) -> Result<Option<NamedLease>> {
        let ttl = positive_interval("ttl", ttl)?;
        Ok(sqlx::query_as(
            "UPDATE leases_named
             SET expires_at = coalesce($1::timestamptz, statement_timestamp()) + $5::interval
             WHERE name = $2 AND owner = $3 AND token = $4 AND expires_at IS NOT NULL
             RETURNING name, owner, token, expires_at, acquired_at",
        )
        .bind(self.clock.now())
        .bind(&lease.name)
        .bind(&lease.owner)
        .bind(lease.token)
        .bind(ttl)
        .fetch_optional(executor)
        .await?)
    }

    /// Gives `lease` up so another owner can take it at once. Returns whether it was still held.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) when the statement fails.
    pub async fn release<'e>(
        &self,
        executor: impl PgExecutor<'e>,
        lease: &NamedLease,
    ) -> Result<bool> {
        let released = sqlx::query(
            "UPDATE leases_named SET owner = NULL, expires_at = NULL
             WHERE name = $1 AND owner = $2 AND token = $3 AND expires_at IS NOT NULL",
        )
        .bind(&lease.name)
        .bind(&lease.owner)
        .bind(lease.token)
        .execute(executor)
        .await?;
        Ok(released.rows_affected() == 1)
    }

    /// A statement of the caller's that takes effect only while `lease` is held: `statement` may
    /// use `lease_held` as a `FROM` (or `USING`) item, which has one row while the lease is held
    /// by its owner with its token, and none once it was released or taken over. It may start
    /// with its own `WITH` list. Its parameters are numbered from `$1`, with the values bound to
    /// `statement` (the lease's own are bound before them).
    ///
    /// The check and the write are one statement: `lease_held` locks the lease's row (`FOR
    /// SHARE`), so no takeover can commit between them, and a holder paused past its lease
    /// changes nothing once another owner took the lease.
    ///
    /// ```no_run
    /// # async fn example(named: leases::NamedLeases, pool: sqlx::PgPool, lease: leases::NamedLease) -> leases::Result<()> {
    /// use leases::Sql;
    ///
    /// let delete = Sql::new("DELETE FROM reports USING lease_held WHERE reports.day < $1")
    ///     .bind(chrono::Utc::now());
    /// let archived = named
    ///     .fenced_query(&lease, delete)?
    ///     .execute(&pool)
    ///     .await?
    ///     .rows_affected();
    /// # let _ = archived; Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidStatement`](crate::Error::InvalidStatement) when `statement`'s parameters
    /// are not `$1` to `$n` for its `n` values.
    pub fn fenced_query(&self, lease: &NamedLease, statement: Sql) -> Result<FencedQuery> {
        let (statement, binds) = statement.after(3)?;
        let mut own = PgArguments::default();
        let added = own
            .add(lease.name.clone())
            .and_then(|()| own.add(lease.owner.clone()))
            .and_then(|()| own.add(lease.token));
        crate::sql::statement(with_lease_held(&statement), added.map(|()| own), binds)
    }

    /// The leases whose names start with `prefix` and that are valid now (held, not expired),
    /// by name: the live members of a group whose members each hold a lease named
    /// `<prefix><member>`.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) when the statement fails.
    pub async fn holders<'e>(
        &self,
        executor: impl PgExecutor<'e>,
        prefix: &str,
    ) -> Result<Vec<NamedLease>> {
        Ok(sqlx::query_as(
            "SELECT name, owner, token, expires_at, acquired_at FROM leases_named
             WHERE starts_with(name, $2) AND owner IS NOT NULL
               AND expires_at > coalesce($1::timestamptz, statement_timestamp())
             ORDER BY name",
        )
        .bind(self.clock.now())
        .bind(prefix)
        .fetch_all(executor)
        .await?)
    }

    /// The current holder of `name`, if its lease is valid now.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) when the statement fails.
    pub async fn holder<'e>(
        &self,
        executor: impl PgExecutor<'e>,
        name: &str,
    ) -> Result<Option<NamedLease>> {
        Ok(sqlx::query_as(
            "SELECT name, owner, token, expires_at, acquired_at FROM leases_named
             WHERE name = $2 AND owner IS NOT NULL
               AND expires_at > coalesce($1::timestamptz, statement_timestamp())",
        )
        .bind(self.clock.now())
        .bind(name)
        .fetch_optional(executor)
        .await?)
    }
}

/// `statement` after a `lease_held` CTE: one row while the lease `$1` is held by `$2` with token
/// `$3` (expired but not taken over counts as held, as for [`NamedLeases::renew`]).
fn with_lease_held(statement: &str) -> String {
    const HELD: &str = "lease_held AS (SELECT token FROM leases_named
         WHERE name = $1 AND owner = $2 AND token = $3 AND expires_at IS NOT NULL FOR SHARE)";
    let statement = statement.trim_start();
    match statement.split_once(char::is_whitespace) {
        Some((with, rest)) if with.eq_ignore_ascii_case("WITH") => format!("WITH {HELD}, {rest}"),
        _ => format!("WITH {HELD} {statement}"),
    }
}

/// Inserts the name, or takes it over when free or already ours.
const ACQUIRE: &str = "INSERT INTO leases_named AS l (name, owner, token, expires_at, acquired_at)
     VALUES ($2, $3, 1,
             coalesce($1::timestamptz, statement_timestamp()) + $4::interval,
             coalesce($1::timestamptz, statement_timestamp()))
     ON CONFLICT (name) DO UPDATE SET
        token = CASE WHEN l.owner = EXCLUDED.owner AND l.expires_at > EXCLUDED.acquired_at
                     THEN l.token ELSE l.token + 1 END,
        acquired_at = CASE WHEN l.owner = EXCLUDED.owner AND l.expires_at > EXCLUDED.acquired_at
                           THEN l.acquired_at ELSE EXCLUDED.acquired_at END,
        owner = EXCLUDED.owner,
        expires_at = EXCLUDED.expires_at
     WHERE l.owner IS NULL OR l.expires_at IS NULL
        OR l.expires_at <= EXCLUDED.acquired_at OR l.owner = EXCLUDED.owner
     RETURNING name, owner, token, expires_at, acquired_at";
