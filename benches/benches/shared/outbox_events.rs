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
        let batch: Vec<NewEvent> = (n..(n + per_tx).min(events))
            .map(|i| {
                let key = format!("o-{}", i % aggregates);
                NewEvent::bytes(topic, "order", key, "OrderPlaced", vec![7; 100])
            })
            .collect();
        n += batch.len();
        let mut tx = pool.begin().await.expect("begin");
        outbox::enqueue_many(&mut tx, &batch)
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
    }
}

/// Events still in the outbox.
pub(crate) async fn pending(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox_events")
        .fetch_one(pool)
        .await
        .expect("count")
}
