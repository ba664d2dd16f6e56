//! Statements on `outbox_dead_letters`: the move of a failed event into it (fenced by either
//! relay's lease), and the operator's list, replay and discard.

use leases::{Lease, NamedLease, NamedLeases, RowLeases, Sql};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::QueryAs;
use sqlx::{AssertSqlSafe, FromRow, PgExecutor, PgPool, Postgres};
use uuid::Uuid;

use crate::Result;
use crate::dead_letters::{DeadLetter, DeadLetterDetail, Filter};

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

/// Moves one row to the dead letters while a shard lease is held: `$1` its `seq`, then the
/// [`Burial`]'s values.
const BURY_IN_SHARD: &str = concat!(
    "WITH moved AS (
        DELETE FROM outbox_events USING lease_held WHERE seq = $1 RETURNING outbox_events.*) ",
    insert_moved!("$2", "$3", "$4")
);

/// What a dead letter records about its event's failure.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Burial<'a> {
    /// How many times the event was tried.
    pub(crate) attempts: i32,
    /// Why it is dead-lettered (`permanent publish failure`, `attempts exhausted (N)`).
    pub(crate) reason: &'a str,
    /// The last publish error.
    pub(crate) last_error: &'a str,
}

impl Burial<'_> {
    /// Binds the attempts, the reason and the last error, in that order, to `statement`.
    fn bind(self, statement: Sql) -> Sql {
        statement
            .bind(self.attempts)
            .bind(self.reason.to_owned())
            .bind(self.last_error.to_owned())
    }
}

/// Moves a leased event to the dead-letter table, if the lease is still held: one fenced
/// statement of `leases`. Returns whether it was.
pub(crate) async fn bury(
    pool: &PgPool,
    leases: &RowLeases,
    lease: &Lease<i64>,
    burial: Burial<'_>,
) -> Result<bool> {
    let insert = burial.bind(Sql::new(insert_moved!("$1", "$2", "$3")));
    let moved = leases.move_query(lease, insert)?.execute(pool).await?;
    Ok(moved.rows_affected() == 1)
}

/// Moves the event at `seq` to the dead-letter table while the shard lease `lease` is held.
/// Returns how many rows it moved (none when the lease was lost or the row is gone).
pub(crate) async fn bury_in_shard(
    pool: &PgPool,
    named: &NamedLeases,
    lease: &NamedLease,
    seq: i64,
    burial: Burial<'_>,
) -> Result<u64> {
    let bury = burial.bind(Sql::new(BURY_IN_SHARD).bind(seq));
    Ok(named
        .fenced_query(lease, bury)?
        .execute(pool)
        .await?
        .rows_affected())
}

/// The oldest `limit` dead letters.
pub(crate) async fn list<'e>(executor: impl PgExecutor<'e>, limit: i64) -> Result<Vec<DeadLetter>> {
    Ok(sqlx::query_as(
        "SELECT id, topic, aggregate_type, aggregate_id, event_type, payload, created_at, attempts,
                reason, last_error, dead_at
         FROM outbox_dead_letters ORDER BY dead_at, id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(executor)
    .await?)
}

/// Moves dead letter `$1` (every dead letter when `$1` is `NULL`) back to the outbox, oldest
/// first.
const REPLAY: &str = "WITH revived AS (
        DELETE FROM outbox_dead_letters WHERE $1::uuid IS NULL OR id = $1
        RETURNING id, topic, aggregate_type, aggregate_id, event_type, payload, headers, dedup_key,
                  created_at, dead_at)
    INSERT INTO outbox_events
        (id, topic, aggregate_type, aggregate_id, event_type, payload, headers, dedup_key, created_at)
    SELECT id, topic, aggregate_type, aggregate_id, event_type, payload, headers, dedup_key, created_at
    FROM revived ORDER BY dead_at, id";

/// Puts dead letter `id` (every dead letter when `None`) back in the outbox with fresh attempts,
/// oldest first. Returns how many.
pub(crate) async fn replay<'e>(executor: impl PgExecutor<'e>, id: Option<Uuid>) -> Result<u64> {
    let done = sqlx::query(REPLAY).bind(id).execute(executor).await?;
    Ok(done.rows_affected())
}

/// Deletes dead letter `id`. Returns whether it existed.
pub(crate) async fn discard<'e>(executor: impl PgExecutor<'e>, id: Uuid) -> Result<bool> {
    let done = sqlx::query("DELETE FROM outbox_dead_letters WHERE id = $1")
        .bind(id)
        .execute(executor)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Dead letter `id` with everything stored about it, if it exists.
pub(crate) async fn get<'e>(
    executor: impl PgExecutor<'e>,
    id: Uuid,
) -> Result<Option<DeadLetterDetail>> {
    Ok(sqlx::query_as(
        "SELECT id, topic, aggregate_type, aggregate_id, event_type, payload, created_at, attempts,
                reason, last_error, dead_at, headers, dedup_key
         FROM outbox_dead_letters WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(executor)
    .await?)
}

/// The `WHERE` condition of a [`Filter`], on parameters `$1` to `$6`.
const FILTER: &str = "($1::text IS NULL OR topic = $1)
      AND ($2::text IS NULL OR aggregate_type = $2)
      AND ($3::text IS NULL OR aggregate_id = $3)
      AND ($4::text IS NULL OR strpos(lower(reason), lower($4)) > 0)
      AND ($5::timestamptz IS NULL OR dead_at >= $5)
      AND ($6::timestamptz IS NULL OR dead_at < $6)";

/// `sql`, a statement whose condition is [`FILTER`], with `filter`'s six parameters bound in
/// [`FILTER`]'s order.
fn filtered<'q, O>(sql: String, filter: &'q Filter) -> QueryAs<'q, Postgres, O, PgArguments>
where
    O: for<'r> FromRow<'r, PgRow>,
{
    sqlx::query_as(AssertSqlSafe(sql))
        .bind(filter.topic.as_deref())
        .bind(filter.aggregate_type.as_deref())
        .bind(filter.aggregate_id.as_deref())
        .bind(filter.reason.as_deref())
        .bind(filter.since)
        .bind(filter.until)
}

/// The oldest `limit` dead letters that match `filter`, in dead-letter order.
pub(crate) async fn list_matching<'e>(
    executor: impl PgExecutor<'e>,
    filter: &Filter,
    limit: i64,
) -> Result<Vec<DeadLetter>> {
    let sql = format!(
        "SELECT id, topic, aggregate_type, aggregate_id, event_type, payload, created_at, attempts,
                reason, last_error, dead_at
         FROM outbox_dead_letters WHERE {FILTER} ORDER BY dead_at, id LIMIT $7"
    );
    Ok(filtered(sql, filter)
        .bind(limit)
        .fetch_all(executor)
        .await?)
}

/// How many dead letters match `filter`.
pub(crate) async fn count_matching<'e>(
    executor: impl PgExecutor<'e>,
    filter: &Filter,
) -> Result<u64> {
    let sql = format!("SELECT count(*) FROM outbox_dead_letters WHERE {FILTER}");
    let (count,): (i64,) = filtered(sql, filter).fetch_one(executor).await?;
    Ok(u64::try_from(count).unwrap_or_default())
}

/// Puts every dead letter that matches `filter` back in the outbox with fresh attempts, oldest
/// first, in one statement. Returns the ids replayed.
pub(crate) async fn replay_matching<'e>(
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
    let rows: Vec<(Uuid,)> = filtered(sql, filter).fetch_all(executor).await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Deletes every dead letter that matches `filter`. Returns the ids deleted.
pub(crate) async fn discard_matching<'e>(
    executor: impl PgExecutor<'e>,
    filter: &Filter,
) -> Result<Vec<Uuid>> {
    let sql = format!("DELETE FROM outbox_dead_letters WHERE {FILTER} RETURNING id");
    let rows: Vec<(Uuid,)> = filtered(sql, filter).fetch_all(executor).await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}
