//! Rows entering and leaving `outbox_events` outside any lease: the insert of enqueued events
//! and the purge of published rows kept by [`Retention::Keep`](crate::Retention::Keep).

use std::sync::LazyLock;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{NewEvent, Result};

/// Inserts `events` on `conn` in one round trip, in slice order, skipping those whose dedup key
/// is already present for their aggregate. Returns how many were inserted.
pub(crate) async fn insert(conn: &mut PgConnection, events: &[NewEvent]) -> Result<u64> {
    let mut columns = Columns::default();
    for e in events {
        columns.push(e)?;
    }
    let inserted = sqlx::query(
        "INSERT INTO outbox_events
            (id, topic, aggregate_type, aggregate_id, event_type, payload, headers, dedup_key)
         SELECT id, topic, aggregate_type, aggregate_id, event_type, payload, headers, dedup_key
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::bytea[], $7::jsonb[], $8::text[]) WITH ORDINALITY
                AS e(id, topic, aggregate_type, aggregate_id, event_type, payload, headers, dedup_key, n)
         ORDER BY n
         ON CONFLICT (aggregate_type, aggregate_id, dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING",
    )
    .bind(columns.id)
    .bind(columns.topic)
    .bind(columns.aggregate_type)
    .bind(columns.aggregate_id)
    .bind(columns.event_type)
    .bind(columns.payload)
    .bind(columns.headers)
    .bind(columns.dedup_key)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected())
}

/// Events as column arrays, for one `unnest` insert.
#[derive(Default)]
struct Columns {
    id: Vec<Uuid>,
    topic: Vec<String>,
    aggregate_type: Vec<String>,
    aggregate_id: Vec<String>,
    event_type: Vec<String>,
    payload: Vec<Vec<u8>>,
    headers: Vec<serde_json::Value>,
    dedup_key: Vec<Option<String>>,
}

impl Columns {
    fn push(&mut self, e: &NewEvent) -> Result<()> {
        self.id.push(e.id);
        self.topic.push(e.topic.clone());
        self.aggregate_type.push(e.aggregate_type.clone());
        self.aggregate_id.push(e.aggregate_id.clone());
        self.event_type.push(e.event_type.clone());
        self.payload.push(e.payload.clone());
        let mut headers = e.headers.clone();
        crate::trace::capture(&mut headers);
        self.headers.push(serde_json::to_value(&headers)?);
        self.dedup_key.push(e.dedup_key.clone());
        Ok(())
    }
}

/// Which events a purge deletes: published more than `$1` (an interval) ago. The one predicate
/// of [`purge`] and of its dry run, [`count_purgeable`].
const PURGEABLE: &str = "published_at < now() - $1::interval";

/// Deletes up to `$2` purgeable events.
static PURGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "DELETE FROM outbox_events WHERE seq IN (
            SELECT seq FROM outbox_events WHERE {PURGEABLE}
            LIMIT $2 FOR UPDATE SKIP LOCKED)"
    )
});

/// Counts the purgeable events.
static COUNT_PURGEABLE: LazyLock<String> =
    LazyLock::new(|| format!("SELECT count(*) FROM outbox_events WHERE {PURGEABLE}"));

/// Deletes up to `limit` events published more than `older_than` ago, in one statement (rows
/// another purge has locked are skipped). Returns how many it deleted.
pub(crate) async fn purge(pool: &PgPool, older_than: Duration, limit: u32) -> Result<u64> {
    Ok(sqlx::query(PURGE.as_str())
        .bind(leases::pg::interval(older_than))
        .bind(i64::from(limit))
        .execute(pool)
        .await?
        .rows_affected())
}

/// How many events [`purge`] would delete now, with the same `older_than`.
pub(crate) async fn count_purgeable(pool: &PgPool, older_than: Duration) -> Result<u64> {
    let count: i64 = sqlx::query_scalar(COUNT_PURGEABLE.as_str())
        .bind(leases::pg::interval(older_than))
        .fetch_one(pool)
        .await?;
    Ok(u64::try_from(count).unwrap_or_default())
}
