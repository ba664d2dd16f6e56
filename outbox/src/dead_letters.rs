//! The dead-letter table: events that failed permanently, and the operations on them.

use chrono::{DateTime, Utc};
use leases::{Lease, RowLeases, Sql};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::Result;

/// An event that failed permanently.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeadLetter {
    /// The event's id.
    pub id: Uuid,
    /// Its topic.
    pub topic: String,
    /// Its aggregate type.
    pub aggregate_type: String,
    /// Its aggregate id.
    pub aggregate_id: String,
    /// Its type.
    pub event_type: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// How many times it was tried.
    pub attempts: i32,
    /// Why it was dead-lettered (`permanent publish failure`, `attempts exhausted (N)`).
    pub reason: String,
    /// The last publish error.
    pub last_error: String,
    /// When it was dead-lettered.
    pub dead_at: DateTime<Utc>,
}

/// The statement that inserts the outbox rows in `moved` into the dead-letter table, given SQL
/// expressions for their attempts, reason and last error (a replaced dead letter takes the new
/// values).
macro_rules! insert_moved {
    ($attempts:literal, $reason:literal, $last_error:literal) => {
        concat!(
            "INSERT INTO outbox_dead_letters
                (id, topic, aggregate_type, aggregate_id, event_type, payload, headers, dedup_key,
                 created_at, attempts, reason, last_error)
             SELECT id, topic, aggregate_type, aggregate_id, event_type, payload, headers, dedup_key,
                    created_at, ", $attempts, ", ", $reason, ", ", $last_error, "
             FROM moved
             ON CONFLICT (id) DO UPDATE SET attempts = EXCLUDED.attempts, reason = EXCLUDED.reason,
                last_error = EXCLUDED.last_error, dead_at = now()"
        )
    };
}
pub(crate) use insert_moved;

/// Moves a leased event to the dead-letter table with `reason` and `last_error`, if the lease is
/// still held: one fenced statement of `leases`.
pub(crate) async fn bury(
    pool: &PgPool,
    leases: &RowLeases,
    lease: &Lease<i64>,
    reason: &str,
    last_error: &str,
) -> Result<bool> {
    let insert = Sql::new(insert_moved!("$1", "$2", "$3"))
        .bind(lease.attempts)
        .bind(reason.to_owned())
        .bind(last_error.to_owned());
    let moved = leases.move_query(lease, insert)?.execute(pool).await?;
    Ok(moved.rows_affected() == 1)
}

/// The oldest `limit` dead letters.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the query fails.
pub async fn list<'e>(executor: impl PgExecutor<'e>, limit: i64) -> Result<Vec<DeadLetter>> {
    Ok(sqlx::query_as(
        "SELECT id, topic, aggregate_type, aggregate_id, event_type, payload, created_at, attempts,
                reason, last_error, dead_at
         FROM outbox_dead_letters ORDER BY dead_at, id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(executor)
    .await?)
}

const REPLAY: &str = "WITH revived AS (
        DELETE FROM outbox_dead_letters WHERE $1::uuid IS NULL OR id = $1
        RETURNING id, topic, aggregate_type, aggregate_id, event_type, payload, headers, dedup_key,
                  created_at, dead_at)
    INSERT INTO outbox_events
        (id, topic, aggregate_type, aggregate_id, event_type, payload, headers, dedup_key, created_at)
    SELECT id, topic, aggregate_type, aggregate_id, event_type, payload, headers, dedup_key, created_at
    FROM revived ORDER BY dead_at, id";

/// Puts dead letter `id` back in the outbox with fresh attempts. It is published after every
/// event of its aggregate enqueued before the replay. Returns whether it existed.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the statement fails.
pub async fn replay<'e>(executor: impl PgExecutor<'e>, id: Uuid) -> Result<bool> {
    let done = sqlx::query(REPLAY).bind(Some(id)).execute(executor).await?;
    Ok(done.rows_affected() == 1)
}

/// Puts every dead letter back in the outbox, oldest first. Returns how many.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the statement fails.
pub async fn replay_all<'e>(executor: impl PgExecutor<'e>) -> Result<u64> {
    let done = sqlx::query(REPLAY)
        .bind(None::<Uuid>)
        .execute(executor)
        .await?;
    Ok(done.rows_affected())
}

/// Deletes dead letter `id` for good. Returns whether it existed.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the statement fails.
pub async fn discard<'e>(executor: impl PgExecutor<'e>, id: Uuid) -> Result<bool> {
    let done = sqlx::query("DELETE FROM outbox_dead_letters WHERE id = $1")
        .bind(id)
        .execute(executor)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// A dead letter with everything stored about it: [`DeadLetter`] plus the event's extra headers
/// and its dedup key. What [`get`] returns.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeadLetterDetail {
    /// The dead letter.
    #[sqlx(flatten)]
    pub letter: DeadLetter,
    /// The event's extra headers (a JSON object of strings).
    pub headers: sqlx::types::Json<std::collections::BTreeMap<String, String>>,
    /// The event's dedup key, if it was enqueued with one.
    pub dedup_key: Option<String>,
}

/// Which dead letters an operation applies to: every condition that is set must hold. The
/// default filter matches every dead letter.
///
/// ```
/// let filter = outbox::dead_letters::Filter::new()
///     .topic("orders")
///     .aggregate("order", "42")
///     .reason_contains("exhausted");
/// assert!(!filter.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    topic: Option<String>,
    aggregate_type: Option<String>,
    aggregate_id: Option<String>,
    reason: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
}

impl Filter {
    /// A filter that matches every dead letter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only dead letters of `topic`.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Only dead letters of the aggregate `aggregate_type`/`aggregate_id`.
    pub fn aggregate(
        mut self,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
    ) -> Self {
        self.aggregate_type = Some(aggregate_type.into());
        self.aggregate_id = Some(aggregate_id.into());
        self
    }

    /// Only dead letters of aggregates of type `aggregate_type`.
    pub fn aggregate_type(mut self, aggregate_type: impl Into<String>) -> Self {
        self.aggregate_type = Some(aggregate_type.into());
        self
    }

    /// Only dead letters whose aggregate id is `aggregate_id`, whatever the aggregate's type.
    pub fn aggregate_id(mut self, aggregate_id: impl Into<String>) -> Self {
        self.aggregate_id = Some(aggregate_id.into());
        self
    }

    /// Only dead letters whose reason contains `text`, ignoring case (`exhausted`, `permanent`).
    pub fn reason_contains(mut self, text: impl Into<String>) -> Self {
        self.reason = Some(text.into());
        self
    }

    /// Only dead letters dead-lettered at or after `since`.
    pub fn since(mut self, since: DateTime<Utc>) -> Self {
        self.since = Some(since);
        self
    }

    /// Only dead letters dead-lettered before `until`.
    pub fn until(mut self, until: DateTime<Utc>) -> Self {
        self.until = Some(until);
        self
    }

    /// Whether no condition is set, so the filter matches every dead letter.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Binds the filter's six parameters, in the order of [`FILTER`], to `query`.
    fn bind<'q, O>(
        &'q self,
        query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        query
            .bind(self.topic.as_deref())
            .bind(self.aggregate_type.as_deref())
            .bind(self.aggregate_id.as_deref())
            .bind(self.reason.as_deref())
            .bind(self.since)
            .bind(self.until)
    }
}

/// The `WHERE` condition of a [`Filter`], on parameters `$1` to `$6`.
const FILTER: &str = "($1::text IS NULL OR topic = $1)
      AND ($2::text IS NULL OR aggregate_type = $2)
      AND ($3::text IS NULL OR aggregate_id = $3)
      AND ($4::text IS NULL OR strpos(lower(reason), lower($4)) > 0)
      AND ($5::timestamptz IS NULL OR dead_at >= $5)
      AND ($6::timestamptz IS NULL OR dead_at < $6)";

/// The oldest `limit` dead letters that match `filter`, in dead-letter order (as [`list`]).
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the query fails.
pub async fn list_matching<'e>(
    executor: impl PgExecutor<'e>,
    filter: &Filter,
    limit: i64,
) -> Result<Vec<DeadLetter>> {
    let sql = format!(
        "SELECT id, topic, aggregate_type, aggregate_id, event_type, payload, created_at, attempts,
                reason, last_error, dead_at
         FROM outbox_dead_letters WHERE {FILTER} ORDER BY dead_at, id LIMIT $7"
    );
    Ok(filter
        .bind(sqlx::query_as(sqlx::AssertSqlSafe(sql)))
        .bind(limit)
        .fetch_all(executor)
        .await?)
}

/// How many dead letters match `filter`.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the query fails.
pub async fn count_matching<'e>(executor: impl PgExecutor<'e>, filter: &Filter) -> Result<u64> {
    let sql = format!("SELECT count(*) FROM outbox_dead_letters WHERE {FILTER}");
    let (count,): (i64,) = filter
        .bind(sqlx::query_as(sqlx::AssertSqlSafe(sql)))
        .fetch_one(executor)
        .await?;
    Ok(u64::try_from(count).unwrap_or_default())
}

/// Dead letter `id` with everything stored about it (headers and dedup key included), if it
/// exists.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the query fails.
pub async fn get<'e>(executor: impl PgExecutor<'e>, id: Uuid) -> Result<Option<DeadLetterDetail>> {
    Ok(sqlx::query_as(
        "SELECT id, topic, aggregate_type, aggregate_id, event_type, payload, created_at, attempts,
                reason, last_error, dead_at, headers, dedup_key
         FROM outbox_dead_letters WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(executor)
    .await?)
}

/// Puts every dead letter that matches `filter` back in the outbox with fresh attempts, oldest
/// first, in one statement (as [`replay`] does for one). Returns the ids replayed.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the statement fails (nothing is replayed).
pub async fn replay_matching<'e>(
    executor: impl PgExecutor<'e>,
    filter: &Filter,
) -> Result<Vec<Uuid>> {
    let sql = format!(
        "WITH revived AS (
            DELETE FROM outbox_dead_letters WHERE {FILTER}
            RETURNING id, topic, aggregate_type, aggregate_id, event_type, payload, headers,
                      dedup_key, created_at, dead_at),
        inserted AS (
            INSERT INTO outbox_events
                (id, topic, aggregate_type, aggregate_id, event_type, payload, headers, dedup_key,
                 created_at)
            SELECT id, topic, aggregate_type, aggregate_id, event_type, payload, headers,
                   dedup_key, created_at
            FROM revived ORDER BY dead_at, id
            RETURNING id)
        SELECT id FROM inserted"
    );
    let rows: Vec<(Uuid,)> = filter
        .bind(sqlx::query_as(sqlx::AssertSqlSafe(sql)))
        .fetch_all(executor)
        .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Deletes every dead letter that matches `filter` for good. Returns the ids deleted.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the statement fails (nothing is deleted).
pub async fn discard_matching<'e>(
    executor: impl PgExecutor<'e>,
    filter: &Filter,
) -> Result<Vec<Uuid>> {
    let sql = format!("DELETE FROM outbox_dead_letters WHERE {FILTER} RETURNING id");
    let rows: Vec<(Uuid,)> = filter
        .bind(sqlx::query_as(sqlx::AssertSqlSafe(sql)))
        .fetch_all(executor)
        .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}
