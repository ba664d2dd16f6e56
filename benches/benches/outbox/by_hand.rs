//! The relay's baselines written by hand, as a service would without the crate.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::outbox_events::{any_pending, enqueue, ready_to_drain};
use outbox::Event;

use crate::Scale;

/// The baseline for the relay: the same work written by hand, as a service would without
/// the crate. It claims up to 1,000 due rows (`FOR UPDATE SKIP LOCKED`, no per-aggregate order
/// filter, no fencing), sends each with an rdkafka producer configured as `KafkaPublisher` is
/// (idempotent, `acks=all`, `murmur2_random`, no message timeout, 1 ms linger) as the same record
/// (key = aggregate id, the headers `event-id`, `event-type`, `aggregate-type`, `aggregate-id`),
/// deletes the acknowledged rows, and keeps two batches in flight. Events per second.
pub(crate) async fn hand_written_pipeline(scale: &Scale) -> f64 {
    #[derive(sqlx::FromRow)]
    struct Claimed {
        seq: i64,
        id: uuid::Uuid,
        topic: String,
        event_type: String,
        aggregate_type: String,
        aggregate_id: String,
        payload: Vec<u8>,
    }

    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let events = scale.relay_events;
    let db = testkit::database(&[&outbox::MIGRATOR]).await;
    let topic = testkit::kafka::topic(4).await;
    enqueue(&db.pool, &topic, events, 1000, (events / 20).max(1)).await;
    ready_to_drain(&db.pool).await;
    let producer: FutureProducer = testkit::kafka::producer_config()
        .await
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "0")
        .set("linger.ms", "1")
        .create()
        .expect("producer");
    let start = Instant::now();
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        let rows: Vec<Claimed> = sqlx::query_as(
            "WITH due AS (
                SELECT seq FROM outbox_events
                WHERE next_attempt_at <= now()
                  AND (lease_expires_at IS NULL OR lease_expires_at <= now())
                ORDER BY seq LIMIT 1000 FOR UPDATE SKIP LOCKED)
             UPDATE outbox_events t SET lease_owner = 'hand',
                 lease_expires_at = now() + interval '30 seconds'
             FROM due WHERE t.seq = due.seq
             RETURNING t.seq, t.id, t.topic, t.event_type, t.aggregate_type, t.aggregate_id,
                 t.payload",
        )
        .fetch_all(&db.pool)
        .await
        .expect("claim");
        if rows.is_empty() {
            if in_flight.join_next().await.is_none() {
                break;
            }
            continue;
        }
        let (producer, pool) = (producer.clone(), db.pool.clone());
        in_flight.spawn(async move {
            let sends = rows.iter().map(|row| {
                let id = row.id.to_string();
                let headers = [
                    ("event-id", id.as_str()),
                    ("event-type", row.event_type.as_str()),
                    ("aggregate-type", row.aggregate_type.as_str()),
                    ("aggregate-id", row.aggregate_id.as_str()),
                ]
                .into_iter()
                .fold(
                    OwnedHeaders::new_with_capacity(4),
                    |headers, (key, value)| {
                        headers.insert(Header {
                            key,
                            value: Some(value),
                        })
                    },
                );
                let record = FutureRecord::to(&row.topic)
                    .key(&row.aggregate_id)
                    .payload(&row.payload)
                    .headers(headers);
                producer.send(record, Duration::from_secs(5))
            });
            let results = futures::future::join_all(sends).await;
            let acked: Vec<i64> = rows
                .iter()
                .zip(results)
                .filter_map(|(row, result)| result.is_ok().then_some(row.seq))
                .collect();
            sqlx::query("DELETE FROM outbox_events WHERE seq = ANY($1)")
                .bind(&acked)
                .execute(&pool)
                .await
                .expect("delete");
        });
        while in_flight.len() >= 2 {
            in_flight.join_next().await;
        }
    }
    assert!(!any_pending(&db.pool).await, "every event published");
    events as f64 / start.elapsed().as_secs_f64()
}

pub(crate) async fn claim_and_mark_by_hand(pool: &PgPool) -> usize {
    let rows: Vec<Event> = sqlx::query_as(
        "WITH due AS (
            SELECT c.seq FROM outbox_events c
            WHERE c.next_attempt_at <= now() AND (c.lease_expires_at IS NULL OR c.lease_expires_at <= now())
              AND NOT EXISTS (SELECT 1 FROM outbox_events o WHERE o.aggregate_type = c.aggregate_type
                  AND o.aggregate_id = c.aggregate_id AND o.seq < c.seq AND o.next_attempt_at IS NOT NULL)
            ORDER BY c.next_attempt_at, c.seq LIMIT 1000 FOR UPDATE SKIP LOCKED)
         UPDATE outbox_events t SET lease_owner = 'bench', lease_token = t.lease_token + 1,
             attempts = t.attempts + 1, lease_expires_at = now() + interval '30 seconds'
         FROM due WHERE t.seq = due.seq RETURNING t.*",
    )
    .fetch_all(pool)
    .await
    .expect("claim");
    if rows.is_empty() {
        return 0;
    }
    let seqs: Vec<i64> = rows.iter().map(|e| e.seq).collect();
    sqlx::query("DELETE FROM outbox_events WHERE seq = ANY($1) AND lease_owner = 'bench'")
        .bind(&seqs)
        .execute(pool)
        .await
        .expect("mark");
    rows.len()
}
