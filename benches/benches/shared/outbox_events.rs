//! Pre-enqueued outbox events, as the relay benchmarks drain them.

use outbox::NewEvent;
use sqlx::PgPool;

/// Enqueues `events` events of 100 bytes, `per_tx` to a transaction, spread round-robin over
/// `aggregates` aggregates (interleaved, as live traffic is).
pub(crate) async fn enqueue(
    pool: &PgPool,
    topic: &str,
    events: usize,
    per_tx: usize,
    aggregates: usize,
) {
    let mut n = 0;
    while n < events {
        let batch = numbered(topic, n..(n + per_tx).min(events), aggregates);
        n += batch.len();
        let mut tx = pool.begin().await.expect("begin");
        outbox::enqueue_many(&mut tx, &batch)
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
    }
}

/// Events `numbers` of 100 bytes each, spread over `aggregates` aggregates in turn.
pub(crate) fn numbered(
    topic: &str,
    numbers: std::ops::Range<usize>,
    aggregates: usize,
) -> Vec<NewEvent> {
    numbers
        .map(|i| {
            let key = format!("o-{}", i % aggregates);
            NewEvent::bytes(topic, "order", key, "OrderPlaced", vec![7; 100])
        })
        .collect()
}

/// Whether an event is still unpublished. One probe of the due index: counting the rows instead
/// (`count(*)`, every few milliseconds while a relay drains 200,000 of them) took a good part of a
/// core from the relay being measured.
pub(crate) async fn any_pending(pool: &PgPool) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM outbox_events WHERE next_attempt_at IS NOT NULL)",
    )
    .fetch_one(pool)
    .await
    .expect("pending")
}

/// Readies a filled outbox for a timed drain: fresh statistics, then a checkpoint, so every drain
/// starts from the same state (the first change to a page after a checkpoint writes the whole page
/// to the WAL; without one, a checkpoint falls inside some drains and not others).
pub(crate) async fn ready_to_drain(pool: &PgPool) {
    for statement in ["VACUUM ANALYZE outbox_events", "CHECKPOINT"] {
        sqlx::raw_sql(statement)
            .execute(pool)
            .await
            .expect(statement);
    }
}
