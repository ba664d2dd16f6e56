//! Outbox benchmarks against real PostgreSQL and Apache Kafka, printed as tables:
//!
//! 1. relay end to end: pre-enqueued events, all published and acknowledged (`acks=all`), with 1
//!    and 2 relays keeping 1 or 2 batches in flight, through Apache Kafka and through librdkafka's
//!    mock cluster (the relay's own capacity), and the same work written by hand (no order
//!    filter, no fencing) as the baseline;
//! 2. claim and mark (no broker) with the crate, as a ratio of the same statements written by hand;
//! 3. latency from commit to broker acknowledgement at a steady 1,000 and 5,000 events/s from 16
//!    writers, one event per transaction, and 5,000 events/s at ten events per transaction;
//! 4. enqueue throughput, 1 and 100 events per transaction.
//!
//! Run: `eval "$(scripts/services up)"; cargo bench -p benches --bench outbox`. Under `cargo test`
//! (no `--bench` argument) it runs a small smoke version of each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leases::{Lease, RowLeases, TableSpec};
use outbox::{Event, KafkaPublisher, NewEvent, PublishError, Publisher, Relay, RelayConfig};
use outbox_events::{any_pending, enqueue};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use sqlx::PgPool;

#[path = "shared/outbox_events.rs"]
mod outbox_events;

struct Scale {
    relay_events: usize,
    /// Events of the one-aggregate run (claimed and published in runs of a batch).
    hot_events: usize,
    claim_rows: usize,
    latency_secs: u64,
    enqueue_events: usize,
}

const FULL: Scale = Scale {
    relay_events: 200_000,
    hot_events: 20_000,
    claim_rows: 100_000,
    latency_secs: 10,
    enqueue_events: 20_000,
};
const SMOKE: Scale = Scale {
    relay_events: 2_000,
    hot_events: 200,
    claim_rows: 2_000,
    latency_secs: 1,
    enqueue_events: 200,
};

async fn publisher() -> KafkaPublisher {
    KafkaPublisher::from_config(&testkit::kafka::producer_config().await).expect("publisher")
}

/// Which broker the relay publishes to.
#[derive(Clone, Copy)]
enum Broker {
    /// Apache Kafka (`KAFKA_BOOTSTRAP_SERVERS`), with the publisher's default batching.
    Kafka,
    /// librdkafka's in-process mock cluster with the publisher's default batching: the relay's own
    /// capacity, with a broker that costs next to nothing.
    Mock,
}

/// Events per second for `relays` relays, each keeping `depth` batches in flight, draining
/// `events` pre-enqueued events spread over `aggregates` aggregates (interleaved, as live
/// traffic is).
async fn relay_end_to_end(
    events: usize,
    aggregates: usize,
    relays: usize,
    depth: u32,
    broker: Broker,
) -> f64 {
    let db = testkit::database(&[&outbox::MIGRATOR]).await;
    let mock = MockCluster::<'static, DefaultProducerContext>::new(1).expect("mock cluster");
    let topic = match broker {
        Broker::Kafka => testkit::kafka::topic(4).await,
        Broker::Mock => {
            mock.create_topic("bench", 4, 1).expect("topic");
            "bench".to_owned()
        }
    };
    enqueue(&db.pool, &topic, events, 1000, aggregates).await;
    sqlx::raw_sql("VACUUM ANALYZE outbox_events")
        .execute(&db.pool)
        .await
        .expect("analyze");
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..relays {
        let config = RelayConfig::default()
            .batch_size(1000)
            .pipeline_depth(depth)
            .poll_interval(Duration::from_millis(20));
        let handle = match broker {
            Broker::Kafka => Relay::new(db.pool.clone(), publisher().await, config)
                .expect("relay")
                .spawn(),
            Broker::Mock => {
                let publisher = KafkaPublisher::new(&mock.bootstrap_servers()).expect("publisher");
                Relay::new(db.pool.clone(), publisher, config)
                    .expect("relay")
                    .spawn()
            }
        };
        handles.push(handle);
    }
    while any_pending(&db.pool).await {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed();
    for handle in handles {
        handle.shutdown().await;
    }
    events as f64 / elapsed.as_secs_f64()
}

/// The baseline for the relay: the same work written by hand, as a service would without
/// the crate. It claims up to 1,000 due rows (`FOR UPDATE SKIP LOCKED`, no per-aggregate order
/// filter, no fencing), sends each with an rdkafka producer configured as `KafkaPublisher` is
/// (idempotent, `acks=all`, `murmur2_random`, no message timeout) as the same record (key =
/// aggregate id, the headers `event-id`, `event-type`, `aggregate-type`, `aggregate-id`), deletes
/// the acknowledged rows, and keeps two batches in flight. Events per second.
async fn hand_written_pipeline(scale: &Scale) -> f64 {
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
    sqlx::raw_sql("VACUUM ANALYZE outbox_events")
        .execute(&db.pool)
        .await
        .expect("analyze");
    let producer: FutureProducer = testkit::kafka::producer_config()
        .await
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "0")
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

/// Rows per second of claim then mark: with the crate's leases as the relay claims (each
/// aggregate's head with the events behind it, in runs), and by hand with a claim of heads only
/// (the order filter alone: one event per aggregate per claim) and the owner-only delete.
async fn claim_and_mark(scale: &Scale) -> (f64, f64) {
    let db = testkit::database(&[&outbox::MIGRATOR]).await;
    let spec = TableSpec::builder("outbox_events")
        .id_column("seq")
        .group_columns(&["aggregate_type", "aggregate_id"])
        .build()
        .expect("spec");
    let leases = RowLeases::new(&spec, "bench");
    let mut rates = [0.0; 2];
    for (i, rate) in rates.iter_mut().enumerate() {
        enqueue(&db.pool, "t", scale.claim_rows, 1000, scale.claim_rows / 20).await;
        sqlx::raw_sql("VACUUM ANALYZE outbox_events")
            .execute(&db.pool)
            .await
            .expect("analyze");
        let start = Instant::now();
        loop {
            let done = if i == 0 {
                let batch: Vec<(Lease<i64>, Event)> = leases
                    .claim_rows(&db.pool, 1000, Duration::from_secs(30))
                    .await
                    .expect("claim");
                leases
                    .complete_many(
                        &db.pool,
                        &batch.into_iter().map(|(l, _)| l).collect::<Vec<_>>(),
                    )
                    .await
                    .expect("mark")
                    .len()
            } else {
                claim_and_mark_by_hand(&db.pool).await
            };
            if done == 0 {
                break;
            }
        }
        *rate = scale.claim_rows as f64 / start.elapsed().as_secs_f64();
    }
    (rates[0], rates[1])
}

async fn claim_and_mark_by_hand(pool: &PgPool) -> usize {
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

/// Records when each event was acknowledged.
struct Timed {
    inner: KafkaPublisher,
    acked: Arc<Mutex<HashMap<uuid::Uuid, Instant>>>,
}

impl Publisher for Timed {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        self.inner.publish(event).await?;
        self.acked
            .lock()
            .expect("acked")
            .insert(event.id, Instant::now());
        Ok(())
    }

    async fn publish_run(&self, run: &[Event]) -> Vec<Result<(), PublishError>> {
        let results = self.inner.publish_run(run).await;
        let at = Instant::now();
        let mut acked = self.acked.lock().expect("acked");
        for (event, result) in run.iter().zip(&results) {
            if result.is_ok() {
                acked.insert(event.id, at);
            }
        }
        results
    }
}

/// Writers committing `per_tx` events per transaction each, paced together at the latency run's
/// rate.
const WRITERS: u32 = 16;

/// p50 and p99 of commit-to-acknowledgement with [`WRITERS`] writers committing `per_tx` events
/// per transaction at `rate` events/s in all, with the producer's `linger.ms`, and the rate they
/// reached.
async fn latency(
    scale: &Scale,
    rate: u32,
    per_tx: u32,
    linger_ms: u32,
) -> (Duration, Duration, f64) {
    let db = testkit::database(&[&outbox::MIGRATOR]).await;
    let topic = testkit::kafka::topic(4).await;
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let relay = Relay::new(
        db.pool.clone(),
        Timed {
            inner: KafkaPublisher::from_config(
                testkit::kafka::producer_config()
                    .await
                    .set("linger.ms", linger_ms.to_string()),
            )
            .expect("publisher"),
            acked: Arc::clone(&acked),
        },
        RelayConfig::default(),
    )
    .expect("relay")
    .spawn();
    let started = Instant::now();
    let stop = started + Duration::from_secs(scale.latency_secs);
    let writers = (0..WRITERS).map(|writer| {
        let (pool, topic) = (db.pool.clone(), topic.clone());
        tokio::spawn(async move {
            let mut committed = HashMap::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1) * WRITERS * per_tx / rate);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut n = 0;
            while Instant::now() < stop {
                tick.tick().await;
                let events: Vec<NewEvent> = (0..per_tx)
                    .map(|_| {
                        n += 1;
                        let key = format!("o-{writer}-{}", n % 100);
                        NewEvent::bytes(&topic, "order", key, "OrderPlaced", vec![7; 100])
                    })
                    .collect();
                let mut tx = pool.begin().await.expect("begin");
                outbox::enqueue_many(&mut tx, &events)
                    .await
                    .expect("enqueue");
                tx.commit().await.expect("commit");
                let at = Instant::now();
                committed.extend(events.iter().map(|event| (event.id, at)));
            }
            committed
        })
    });
    let mut committed = HashMap::new();
    for writer in futures::future::join_all(writers).await {
        committed.extend(writer.expect("writer"));
    }
    let reached = committed.len() as f64 / started.elapsed().as_secs_f64();
    while any_pending(&db.pool).await {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.shutdown().await;
    let acked = acked.lock().expect("acked");
    let mut latencies: Vec<Duration> = committed
        .iter()
        .filter_map(|(id, at)| acked.get(id).map(|ack| ack.saturating_duration_since(*at)))
        .collect();
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    (pick(0.50), pick(0.99), reached)
}

async fn enqueue_rate(scale: &Scale, per_tx: usize) -> f64 {
    let db = testkit::database(&[&outbox::MIGRATOR]).await;
    let start = Instant::now();
    enqueue(&db.pool, "t", scale.enqueue_events, per_tx, 1000).await;
    scale.enqueue_events as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let full =
        std::env::args().any(|a| a == "--bench") && std::env::var_os("BENCH_SMOKE").is_none();
    let scale = if full { FULL } else { SMOKE };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        println!(
            "outbox benchmarks ({})",
            if full {
                "full"
            } else {
                "smoke run; pass --bench for figures"
            }
        );
        println!(
            "\nrelay end to end, acks=all, durable commits ({} events each)",
            scale.relay_events
        );
        println!(
            "{:>7} | {:>18} | {:>18} | {:>6} | {:>18}",
            "relays", "Kafka, 1 in flight", "Kafka, 2 in flight", "ratio", "mock, 2 in flight"
        );
        let mut single = (0.0, 0.0);
        // Interleaved aggregates, 20 events each.
        let (events, aggregates) = (scale.relay_events, scale.relay_events / 20);
        for relays in [1, 2] {
            let serial = relay_end_to_end(events, aggregates, relays, 1, Broker::Kafka).await;
            let pipelined = relay_end_to_end(events, aggregates, relays, 2, Broker::Kafka).await;
            let mock = relay_end_to_end(events, aggregates, relays, 2, Broker::Mock).await;
            println!(
                "{relays:>7} | {serial:>18.0} | {pipelined:>18.0} | {:>6.2} | {mock:>18.0}",
                pipelined / serial
            );
            if relays == 1 {
                single = (pipelined, serial);
            }
        }
        println!(
            "relay, 2 in flight: {:.0} events/s, 1 in flight {:.0} events/s, ratio {:.2}",
            single.0,
            single.1,
            single.0 / single.1
        );
        let hand = hand_written_pipeline(&scale).await;
        println!(
            "relay: {:.0} events/s, hand-written {hand:.0} events/s, ratio {:.2}",
            single.0,
            single.0 / hand
        );

        let hot = relay_end_to_end(scale.hot_events, 1, 1, 2, Broker::Kafka).await;
        println!(
            "relay, one aggregate: {hot:.0} events/s ({} events)",
            scale.hot_events
        );

        let (ours, hand) = claim_and_mark(&scale).await;
        println!(
            "\nclaim (per-aggregate order) + mark, {} rows over 20 events per aggregate, batch 1000",
            scale.claim_rows
        );
        println!(
            "{:>14} | {:>14} | {:>6}",
            "leases, runs", "by hand, heads", "ratio"
        );
        println!("{ours:>14.0} | {hand:>14.0} | {:>6.2}", ours / hand);

        println!("\ncommit to broker acknowledgement, {WRITERS} writers");
        println!(
            "{:>8} | {:>6} | {:>9} | {:>8} | {:>8} | {:>8}",
            "events/s", "per tx", "linger ms", "reached", "p50 ms", "p99 ms"
        );
        let mut at_goal = Vec::new();
        for (rate, per_tx, linger) in [(1_000, 1, 5), (5_000, 1, 5), (5_000, 10, 5), (5_000, 10, 1)]
        {
            let (p50, p99, reached) = latency(&scale, rate, per_tx, linger).await;
            let (p50, p99) = (p50.as_secs_f64() * 1e3, p99.as_secs_f64() * 1e3);
            println!(
                "{rate:>8} | {per_tx:>6} | {linger:>9} | {reached:>8.0} | {p50:>8.1} | {p99:>8.1}"
            );
            if per_tx == 10 {
                at_goal.push((rate, linger, reached, p50, p99));
            }
        }
        for (rate, linger, reached, p50, p99) in at_goal {
            println!(
                "relay latency at {rate} events/s: p50 {p50:.1} ms, p99 {p99:.1} ms \
                 (linger.ms {linger}; writers reached {reached:.0} events/s)"
            );
        }

        let single = enqueue_rate(&scale, 1).await;
        let hundred = enqueue_rate(&scale, 100).await;
        println!("\nenqueue, {} events", scale.enqueue_events);
        println!("{:>10} | {:>10}", "per tx", "events/s");
        println!("{:>10} | {single:>10.0}", 1);
        println!("{:>10} | {hundred:>10.0}", 100);
    });
}
