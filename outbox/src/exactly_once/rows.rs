//! The exactly-once relay's statements on `outbox_events`: the claim of a shard's batch, the
//! mark of published rows and the move of a poison event to the dead letters, each fenced by the
//! shard lease through [`leases::NamedLeases::fenced_query`].

use crate::dead_letters::insert_moved;

/// The shard's oldest unpublished events, in `seq` order.
pub(super) const CLAIM: &str =
    "SELECT seq, id, topic, aggregate_type, aggregate_id, event_type, payload,
        headers, created_at, attempts
     FROM outbox_events
     WHERE next_attempt_at IS NOT NULL
       AND (hashtextextended(aggregate_type || chr(31) || aggregate_id, 0)
            & 9223372036854775807) % $1 = $2
     ORDER BY seq LIMIT $3";

/// Marks published rows, each named by its `seq` *and* its event id, while the shard lease is
/// held; returns whether it was held, and how many rows it marked.
pub(super) const MARK_DELETE: &str = "WITH marked AS (
        DELETE FROM outbox_events e
        USING lease_held, unnest($1::bigint[], $2::uuid[]) AS published (seq, id)
        WHERE e.seq = published.seq AND e.id = published.id AND e.next_attempt_at IS NOT NULL
        RETURNING 1)
     SELECT EXISTS (SELECT FROM lease_held), (SELECT count(*) FROM marked)";
pub(super) const MARK_KEEP: &str = "WITH marked AS (
        UPDATE outbox_events e SET published_at = now(), next_attempt_at = NULL,
            lease_expires_at = NULL
        FROM lease_held, unnest($1::bigint[], $2::uuid[]) AS published (seq, id)
        WHERE e.seq = published.seq AND e.id = published.id AND e.next_attempt_at IS NOT NULL
        RETURNING 1)
     SELECT EXISTS (SELECT FROM lease_held), (SELECT count(*) FROM marked)";

/// Moves one row to the dead letters while the shard lease is held.
pub(super) const BURY: &str = concat!(
    "WITH moved AS (
        DELETE FROM outbox_events USING lease_held WHERE seq = $1 RETURNING outbox_events.*) ",
    insert_moved!("$2", "$3", "$4")
);
