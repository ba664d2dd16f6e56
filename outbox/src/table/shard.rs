//! The exactly-once relay's statements on `outbox_events`: the claim of a shard's batch and the
//! mark of its published rows, the mark fenced by the shard lease through
//! [`NamedLeases::fenced_query`]. (The move of a poison event to the dead letters is in
//! [`dead_letters`](super::dead_letters).)

use std::sync::LazyLock;

use leases::{NamedLease, NamedLeases, Sql};
use sqlx::PgPool;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::publisher::Event;
use crate::{Result, Retention};

/// One shard of an outbox split into `of` shards by aggregate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shard {
    /// The shard's number, from 0.
    pub(crate) index: u32,
    /// How many shards there are.
    pub(crate) of: u32,
}

/// The shard's oldest unpublished events, in `seq` order.
const CLAIM: &str = "SELECT seq, id, topic, aggregate_type, aggregate_id, event_type, payload,
        headers, created_at, attempts
     FROM outbox_events
     WHERE next_attempt_at IS NOT NULL
       AND (hashtextextended(aggregate_type || chr(31) || aggregate_id, 0)
            & 9223372036854775807) % $1 = $2
     ORDER BY seq LIMIT $3";

/// Marks published rows, each named by its `seq` *and* its event id, while the shard lease is
/// held; returns whether it was held, and how many rows it marked.
const MARK_DELETE: &str = "WITH marked AS (
        DELETE FROM outbox_events e
        USING lease_held, unnest($1::bigint[], $2::uuid[]) AS published (seq, id)
        WHERE e.seq = published.seq AND e.id = published.id AND e.next_attempt_at IS NOT NULL
        RETURNING 1)
     SELECT EXISTS (SELECT FROM lease_held), (SELECT count(*) FROM marked)";
/// As [`MARK_DELETE`], keeping the rows, finished as
/// [`Completion::Keep`](leases::Completion::Keep) finishes them ([`super::kept`]).
static MARK_KEEP: LazyLock<String> = LazyLock::new(|| {
    let finished = super::kept()
        .build()
        .expect("the outbox table's names are valid identifiers")
        .finished("now()");
    format!(
        "WITH marked AS (
            UPDATE outbox_events e SET {finished}
            FROM lease_held, unnest($1::bigint[], $2::uuid[]) AS published (seq, id)
            WHERE e.seq = published.seq AND e.id = published.id AND e.next_attempt_at IS NOT NULL
            RETURNING 1)
         SELECT EXISTS (SELECT FROM lease_held), (SELECT count(*) FROM marked)"
    )
});

/// Reads up to `limit` of `shard`'s oldest unpublished events, in `seq` order. Takes no lease:
/// the shard's lease covers them.
pub(crate) async fn claim(pool: &PgPool, shard: Shard, limit: u32) -> Result<Vec<Event>> {
    Ok(sqlx::query_as(CLAIM)
        .bind(i64::from(shard.of))
        .bind(i64::from(shard.index))
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?)
}

/// Marks the rows `seqs` (with the event ids `ids`, pairwise) published as `retention` says,
/// while the shard lease `lease` is held. Returns how many rows it marked (rows already marked,
/// and pairs that name no row, are skipped), or `None` when the lease is not held.
pub(crate) async fn mark(
    pool: &PgPool,
    named: &NamedLeases,
    lease: &NamedLease,
    retention: Retention,
    seqs: &[i64],
    ids: &[Uuid],
) -> Result<Option<i64>> {
    let statement = match retention {
        Retention::Delete => MARK_DELETE,
        Retention::Keep => MARK_KEEP.as_str(),
    };
    let statement = Sql::new(statement).bind(seqs.to_vec()).bind(ids.to_vec());
    let (held, marked): (bool, i64) = named
        .fenced_query(lease, statement)?
        .try_map(|row: PgRow| {
            use sqlx::Row as _;
            Ok((row.try_get(0)?, row.try_get(1)?))
        })
        .fetch_one(pool)
        .await?;
    Ok(held.then_some(marked))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_kept_mark_finishes_rows_as_the_leases_keep_completion_does() {
        assert!(super::MARK_KEEP.contains(
            "SET \"lease_expires_at\" = NULL, \"next_attempt_at\" = NULL, \"published_at\" = now()"
        ));
    }
}
