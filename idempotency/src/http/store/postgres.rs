//! [`PostgresStore`]: keys in the `idempotency_keys` table, locked with `leases` row leases.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use leases::{Binds, Clock, Completion, DatabaseClock, KeyClaim, Lease, RowLeases, Sql, TableSpec};
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgConnection, PgPool, Row};

use super::{
    Acquire, Record, RecordState, ScopedKey, Store, StoredResponse, TakenIn, TransactionalStore,
};
use crate::{Error, Fingerprint, Result};

mod retention;

pub use retention::KeysStatus;

/// Takes a key: inserts it, or claims the row when free and past retention, released, or left by
/// an expired holder of the same request; skips the disk flush unless `synchronous_locks` ($6).
const ACQUIRE: KeyClaim = KeyClaim {
    conflict: "scope, route, idempotency_key",
    columns: "scope, route, idempotency_key, fingerprint, created_at, retain_until",
    values: "$1, $2, $3, $4, claim.now, claim.now + $5::interval",
    from: ", (SELECT set_config('synchronous_commit', $6, true)) AS settings",
    on_claim: "fingerprint = excluded.fingerprint, created_at = excluded.created_at,
        retain_until = excluded.retain_until, completed_at = NULL, status = NULL,
        header_names = NULL, header_values = NULL, body = NULL",
    claim_when: "idempotency_keys.retain_until <= excluded.created_at
        OR (idempotency_keys.completed_at IS NULL
            AND (idempotency_keys.lease_expires_at IS NULL
                 OR idempotency_keys.fingerprint = excluded.fingerprint))",
};

/// Takes the key for the transaction without waiting, and reads it: a transaction-level
/// advisory lock on a 64-bit hash of scope, route and key (two keys sharing a hash only make each
/// other wait their turn with a 409). A key that completed within its retention is not locked
/// (`locked` is `NULL`): its replays never contend.
const TAKE: &str = "
SELECT CASE WHEN k.completed_at IS NOT NULL AND k.retain_until > n.now THEN NULL
       ELSE pg_try_advisory_xact_lock(hashtextextended(concat_ws(chr(31), $2, $3, $4), 0))
       END AS locked,
       n.now, k.fingerprint, k.created_at, k.retain_until, k.lease_token, k.completed_at,
       k.lease_expires_at, k.status, k.header_names, k.header_values, k.body
FROM (SELECT coalesce($1::timestamptz, statement_timestamp()) AS now) AS n
LEFT JOIN idempotency_keys AS k ON k.scope = $2 AND k.route = $3 AND k.idempotency_key = $4";

/// Writes the completed key in the request's transaction: a new row, or over a row that holds no
/// lease and is past its retention or was released (a row with a lease, live or expired, is only
/// ever changed through its lease). No row written: the key was taken meanwhile.
const STORE: &str = "
INSERT INTO idempotency_keys AS k (scope, route, idempotency_key, fingerprint, created_at,
    retain_until, completed_at, status, header_names, header_values, body)
SELECT $2, $3, $4, $5, n.now, n.now + $6::interval, n.now, $7, $8, $9, $10
FROM (SELECT coalesce($1::timestamptz, statement_timestamp()) AS now) AS n
ON CONFLICT (scope, route, idempotency_key) DO UPDATE SET
    fingerprint = excluded.fingerprint, created_at = excluded.created_at,
    retain_until = excluded.retain_until, completed_at = excluded.completed_at,
    status = excluded.status, header_names = excluded.header_names,
    header_values = excluded.header_values, body = excluded.body
WHERE k.lease_expires_at IS NULL
  AND (k.retain_until <= excluded.created_at OR k.completed_at IS NULL)
RETURNING 1";

const LOOKUP: &str = "
SELECT fingerprint, created_at, retain_until, lease_token, completed_at, lease_expires_at,
       status, header_names, header_values, body,
       coalesce($1::timestamptz, statement_timestamp()) AS now
FROM idempotency_keys WHERE scope = $2 AND route = $3 AND idempotency_key = $4";

/// The response, written by the fenced completion of the key's lease.
const RESPONSE: &str = "status = $1, header_names = $2, header_values = $3, body = $4";

/// Idempotency keys in PostgreSQL (table `idempotency_keys`, created by
/// [`MIGRATOR`](crate::MIGRATOR)).
///
/// The in-flight lock is a row lease of the [`leases`] crate on the key's row (the table has the
/// lease columns `lease_owner`, `lease_token` and `lease_expires_at`, and no schedule, see
/// [`TableSpec`]). Every lease change is one fenced [`RowLeases`] statement: taking a key is a
/// claim by key, storing the response completes the lease in the statement that writes it, and
/// renewing and releasing check owner and token the same way. The lease is separate from the
/// key's retention (`retain_until`).
///
/// It is a [`TransactionalStore`]: behind
/// [`IdempotencyLayer::transactional`](crate::IdempotencyLayer::transactional), the request's
/// transaction ([`Tx`](crate::Tx)) holds the key by a transaction-level advisory lock on a hash of
/// it (taken without waiting, so a concurrent duplicate is answered at once), and the completed
/// key is written with the response in the same transaction, one statement before the commit.
///
/// Cloning is cheap; clones share the pool and the lease owner.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    leases: RowLeases,
    clock: SharedClock,
    synchronous_locks: bool,
}

/// A clock shared between this store's own statements and its [`RowLeases`].
#[derive(Debug, Clone)]
struct SharedClock(Arc<dyn Clock>);

impl Clock for SharedClock {
    fn now(&self) -> Option<DateTime<Utc>> {
        self.0.now()
    }
}

fn table_spec() -> TableSpec {
    TableSpec::builder("idempotency_keys")
        .without_schedule()
        .completion(Completion::Keep)
        .completed_at_column("completed_at")
        .build()
        .expect("the idempotency_keys table and column names are valid identifiers")
}

impl PostgresStore {
    /// The key's record, if it exists and is within its retention: what an operator (or a test)
    /// looks at; the layer itself never needs it.
    ///
    /// # Errors
    ///
    /// When the store cannot be reached.
    pub async fn get(&self, key: &ScopedKey) -> Result<Option<Record>> {
        let Some((row, now)) = self.lookup(&self.pool, key).await? else {
            return Ok(None);
        };
        if row.retain_until <= now {
            return Ok(None);
        }
        Ok(Some(Record {
            fingerprint: row.fingerprint,
            created_at: row.created_at,
            retain_until: row.retain_until,
            token: row.token,
            state: row.state()?,
        }))
    }

    /// A store in `pool`'s database (run [`MIGRATOR`](crate::MIGRATOR) first), timed by the
    /// database clock, holding leases under the owner name `idempotency-<uuidv7>`.
    pub fn new(pool: PgPool) -> Self {
        let clock = SharedClock(Arc::new(DatabaseClock));
        let owner = format!("idempotency-{}", uuid::Uuid::now_v7());
        Self {
            leases: RowLeases::new(&table_spec(), owner).with_clock(clock.clone()),
            pool,
            clock,
            synchronous_locks: false,
        }
    }

    /// Replaces the clock (a [`ManualClock`](leases::ManualClock) in tests, to expire leases and
    /// retention without waiting). Default: [`DatabaseClock`].
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = SharedClock(Arc::new(clock));
        self.leases = self.leases.with_clock(self.clock.clone());
        self
    }

    /// Replaces the lease owner name. It should be unique per process. Default:
    /// `idempotency-<uuidv7>`.
    pub fn with_owner(mut self, owner: impl Into<Arc<str>>) -> Self {
        self.leases = RowLeases::new(&table_spec(), owner).with_clock(self.clock.clone());
        self
    }

    /// Lease mode: whether taking a key waits for its lock to be on disk (`synchronous_commit`)
    /// before the handler runs. Default: `false`: the lock commits without waiting for a disk
    /// flush (a flush per request saved), which only matters if PostgreSQL itself crashes within
    /// a fraction of a second after a key was taken: a lost lock lets a client's retry run while
    /// the first attempt is still running; set `true` if that must not happen even then. (In
    /// transactional mode the key is taken inside the request's transaction, whose commit is
    /// synchronous.)
    pub fn synchronous_locks(mut self, on: bool) -> Self {
        self.synchronous_locks = on;
        self
    }

    async fn lookup(
        &self,
        executor: impl sqlx::PgExecutor<'_>,
        key: &ScopedKey,
    ) -> Result<Option<(KeyRow, DateTime<Utc>)>> {
        let row = sqlx::query(LOOKUP)
            .bind(self.clock.now())
            .bind(&key.scope)
            .bind(&key.route)
            .bind(key.key.as_str())
            .fetch_optional(executor)
            .await?;
        row.map(|row| Ok((KeyRow::decode(&row)?, row.try_get("now")?)))
            .transpose()
    }

    async fn complete_on(
        &self,
        conn: &mut PgConnection,
        lease: &Lease<i64>,
        response: &StoredResponse,
    ) -> Result<bool> {
        let (names, values) = response.header_lists();
        let set = Sql::new(RESPONSE)
            .bind(i32::from(response.status.as_u16()))
            .bind(names)
            .bind(values)
            .bind(response.body.to_vec());
        let completed = self
            .leases
            .complete_query(lease, set)?
            .execute(conn)
            .await?
            .rows_affected();
        Ok(completed == 1)
    }
}

/// A key's row as read back.
struct KeyRow {
    fingerprint: Fingerprint,
    created_at: DateTime<Utc>,
    retain_until: DateTime<Utc>,
    token: i64,
    completed: bool,
    lease_expires_at: Option<DateTime<Utc>>,
    response: Option<StoredResponse>,
}

impl KeyRow {
    fn decode(row: &PgRow) -> Result<Self> {
        let fingerprint: Vec<u8> = row.try_get("fingerprint")?;
        let fingerprint = <[u8; 32]>::try_from(fingerprint.as_slice())
            .map_err(|_| Error::Corrupt("fingerprint".into()))?;
        let completed_at: Option<DateTime<Utc>> = row.try_get("completed_at")?;
        let status: Option<i32> = row.try_get("status")?;
        let response = match status {
            Some(status) => Some(StoredResponse::from_lists(
                status,
                row.try_get::<Option<Vec<String>>, _>("header_names")?
                    .unwrap_or_default(),
                row.try_get::<Option<Vec<Vec<u8>>>, _>("header_values")?
                    .unwrap_or_default(),
                row.try_get::<Option<Vec<u8>>, _>("body")?
                    .unwrap_or_default(),
            )?),
            None => None,
        };
        Ok(Self {
            fingerprint: Fingerprint::from_bytes(fingerprint),
            created_at: row.try_get("created_at")?,
            retain_until: row.try_get("retain_until")?,
            token: row.try_get("lease_token")?,
            completed: completed_at.is_some(),
            lease_expires_at: row.try_get("lease_expires_at")?,
            response,
        })
    }

    fn state(self) -> Result<RecordState> {
        Ok(match (self.completed, self.lease_expires_at) {
            (true, _) => RecordState::Completed(
                self.response
                    .ok_or_else(|| Error::Corrupt("completed key without a response".into()))?,
            ),
            (false, None) => RecordState::Released,
            (false, Some(lease_expires_at)) => RecordState::InFlight { lease_expires_at },
        })
    }
}

/// How many times `acquire` re-reads a row that changed under it before answering "in flight".
const ACQUIRE_ATTEMPTS: usize = 5;

impl PostgresStore {
    /// [`Store::acquire`] on `conn` (inside a transaction or not); `synchronous` is the
    /// `synchronous_commit` the statement sets for its transaction.
    async fn acquire_on(
        &self,
        conn: &mut PgConnection,
        key: &ScopedKey,
        fingerprint: &Fingerprint,
        (lease_ttl, retention): (Duration, Duration),
        synchronous: bool,
    ) -> Result<Acquire> {
        if retention.is_zero() {
            return Err(Error::InvalidConfig(
                "retention must be greater than zero".into(),
            ));
        }
        let mut last_seen = None;
        for _ in 0..ACQUIRE_ATTEMPTS {
            let binds = Binds::new()
                .bind(key.scope.clone())
                .bind(key.route.clone())
                .bind(key.key.as_str().to_owned())
                .bind(fingerprint.as_bytes().to_vec())
                .bind(leases::pg::interval(retention))
                .bind(if synchronous { "on" } else { "off" });
            let acquired = self
                .leases
                .claim_key_query(&ACQUIRE, lease_ttl, binds)?
                .fetch_optional(&mut *conn)
                .await?;
            if let Some(row) = acquired {
                return Ok(Acquire::Acquired(Lease::from_row(&row)?));
            }
            // The key is taken. Read it to say why; if it changed in between (released,
            // expired, purged), try to take it again.
            let Some((row, now)) = self.lookup(&mut *conn, key).await? else {
                continue;
            };
            last_seen = Some(now);
            if row.retain_until <= now || (!row.completed && row.lease_expires_at.is_none()) {
                continue;
            }
            if row.fingerprint != *fingerprint {
                return Ok(Acquire::Mismatch);
            }
            match row.lease_expires_at {
                Some(lease_expires_at) if !row.completed && lease_expires_at > now => {
                    return Ok(Acquire::InFlight {
                        lease_expires_at: Some(lease_expires_at),
                    });
                }
                Some(_) => continue,
                None => {
                    if let RecordState::Completed(response) = row.state()? {
                        return Ok(Acquire::Completed(response));
                    }
                }
            }
        }
        Ok(Acquire::InFlight {
            lease_expires_at: Some(last_seen.unwrap_or_else(Utc::now)),
        })
    }
}

impl Store for PostgresStore {
    async fn acquire(
        &self,
        key: &ScopedKey,
        fingerprint: &Fingerprint,
        lease_ttl: Duration,
        retention: Duration,
    ) -> Result<Acquire> {
        let mut conn = self.pool.acquire().await?;
        let lifetimes = (lease_ttl, retention);
        self.acquire_on(
            &mut conn,
            key,
            fingerprint,
            lifetimes,
            self.synchronous_locks,
        )
        .await
    }

    async fn renew(&self, lease: &Lease<i64>, ttl: Duration) -> Result<bool> {
        Ok(self.leases.renew(&self.pool, lease, ttl).await?.is_some())
    }

    async fn complete(&self, lease: &Lease<i64>, response: &StoredResponse) -> Result<bool> {
        let mut conn = self.pool.acquire().await?;
        self.complete_on(&mut conn, lease, response).await
    }

    async fn release(&self, lease: &Lease<i64>) -> Result<bool> {
        Ok(self
            .leases
            .release(&self.pool, lease, Duration::ZERO)
            .await?)
    }
}

impl TransactionalStore for PostgresStore {
    fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn take_in(
        &self,
        conn: &mut PgConnection,
        key: &ScopedKey,
        fingerprint: &Fingerprint,
        lease_ttl: Duration,
        retention: Duration,
    ) -> Result<TakenIn> {
        let row = sqlx::query(TAKE)
            .bind(self.clock.now())
            .bind(&key.scope)
            .bind(&key.route)
            .bind(key.key.as_str())
            .fetch_one(&mut *conn)
            .await?;
        if row.try_get::<Option<bool>, _>("locked")? == Some(false) {
            return Ok(Acquire::InFlight {
                lease_expires_at: None,
            });
        }
        if row.try_get::<Option<Vec<u8>>, _>("fingerprint")?.is_none() {
            return Ok(Acquire::Acquired(None));
        }
        let now: DateTime<Utc> = row.try_get("now")?;
        let found = KeyRow::decode(&row)?;
        if found.lease_expires_at.is_none() && (found.retain_until <= now || !found.completed) {
            return Ok(Acquire::Acquired(None));
        }
        if found.fingerprint != *fingerprint {
            return Ok(Acquire::Mismatch);
        }
        if found.completed {
            return match found.state()? {
                RecordState::Completed(response) => Ok(Acquire::Completed(response)),
                _ => Err(Error::Corrupt("completed key without a response".into())),
            };
        }
        // Held by a lease of the lease mode: busy while it runs, taken over (fenced, through
        // the lease) once it expired.
        if let Some(expires) = found.lease_expires_at.filter(|expires| *expires > now) {
            return Ok(Acquire::InFlight {
                lease_expires_at: Some(expires),
            });
        }
        let lifetimes = (lease_ttl, retention);
        let acquired = self
            .acquire_on(conn, key, fingerprint, lifetimes, true)
            .await?;
        Ok(acquired.map(Some))
    }

    async fn store_in(
        &self,
        conn: &mut PgConnection,
        (key, fingerprint, lease): (&ScopedKey, &Fingerprint, Option<&Lease<i64>>),
        response: &StoredResponse,
        retention: Duration,
    ) -> Result<bool> {
        if let Some(lease) = lease {
            return self.complete_on(conn, lease, response).await;
        }
        let (names, values) = response.header_lists();
        let stored = sqlx::query(STORE)
            .bind(self.clock.now())
            .bind(&key.scope)
            .bind(&key.route)
            .bind(key.key.as_str())
            .bind(fingerprint.as_bytes().as_slice())
            .bind(leases::pg::interval(retention))
            .bind(i32::from(response.status.as_u16()))
            .bind(names)
            .bind(values)
            .bind(response.body.as_ref())
            .fetch_optional(conn)
            .await?;
        Ok(stored.is_some())
    }

    async fn release_in(&self, conn: &mut PgConnection, lease: &Lease<i64>) -> Result<bool> {
        Ok(self.leases.release(conn, lease, Duration::ZERO).await?)
    }
}
