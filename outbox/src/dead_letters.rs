//! The dead-letter table: events that failed permanently, and the operations on them.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::{Result, table};

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

/// The oldest `limit` dead letters.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the query fails.
pub async fn list<'e>(executor: impl PgExecutor<'e>, limit: i64) -> Result<Vec<DeadLetter>> {
    table::dead_letters::list(executor, limit).await
}

/// Puts dead letter `id` back in the outbox with fresh attempts. It is published after every
/// event of its aggregate enqueued before the replay. Returns whether it existed.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the statement fails.
pub async fn replay<'e>(executor: impl PgExecutor<'e>, id: Uuid) -> Result<bool> {
    Ok(table::dead_letters::replay(executor, Some(id)).await? == 1)
}

/// Puts every dead letter back in the outbox, oldest first. Returns how many.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the statement fails.
pub async fn replay_all<'e>(executor: impl PgExecutor<'e>) -> Result<u64> {
    table::dead_letters::replay(executor, None).await
}

/// Deletes dead letter `id` for good. Returns whether it existed.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the statement fails.
pub async fn discard<'e>(executor: impl PgExecutor<'e>, id: Uuid) -> Result<bool> {
    table::dead_letters::discard(executor, id).await
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
    pub(crate) topic: Option<String>,
    pub(crate) aggregate_type: Option<String>,
    pub(crate) aggregate_id: Option<String>,
    pub(crate) reason: Option<String>,
    pub(crate) since: Option<DateTime<Utc>>,
    pub(crate) until: Option<DateTime<Utc>>,
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
}

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
    table::dead_letters::list_matching(executor, filter, limit).await
}

/// How many dead letters match `filter`.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the query fails.
pub async fn count_matching<'e>(executor: impl PgExecutor<'e>, filter: &Filter) -> Result<u64> {
    table::dead_letters::count_matching(executor, filter).await
}

/// Dead letter `id` with everything stored about it (headers and dedup key included), if it
/// exists.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the query fails.
pub async fn get<'e>(executor: impl PgExecutor<'e>, id: Uuid) -> Result<Option<DeadLetterDetail>> {
    table::dead_letters::get(executor, id).await
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
    table::dead_letters::replay_matching(executor, filter).await
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
    table::dead_letters::discard_matching(executor, filter).await
}
