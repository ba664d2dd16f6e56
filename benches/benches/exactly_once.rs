//! The exactly-once relay next to the default relay, in one run, against real PostgreSQL and
//! Apache Kafka, printed as tables:
//!
//! 1. throughput: pre-enqueued events over interleaved aggregates, drained by one relay of each
//!    mode (the default relay keeping 2 batches in flight; the exactly-once relay with 1, 2 and 4
//!    shards, one transaction in flight per shard), and every event in one aggregate;
//! 2. relays sharing shards: 4 shards held by 1 relay, then by 2 relays (2 each, settled before
//!    the events are committed, all in one transaction);
//! 3. commit-to-visible latency at a steady rate: from the writer's commit to the moment a
//!    `read_committed` consumer receives the event.
//!
//! Run: `eval "$(scripts/services up)"; cargo bench -p benches --bench exactly_once`. Under
//! `cargo test` (no `--bench` argument) it runs a small smoke version of each.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use outbox::exactly_once::{ExactlyOnceConfig, ExactlyOnceRelay};
use outbox::{Background, KafkaPublisher, NewEvent, Relay, RelayConfig};
use outbox_events::{any_pending, enqueue, numbered, ready_to_drain};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use sqlx::PgPool;
use testkit::TestDb;

#[path = "shared/outbox_events.rs"]
mod outbox_events;

struct Scale {
    events: usize,
    hot_events: usize,
    latency_secs: u64,
}

const FULL: Scale = Scale {
    events: 100_000,
    hot_events: 20_000,
    latency_secs: 10,
};
const SMOKE: Scale = Scale {
    events: 2_000,
    hot_events: 500,
    latency_secs: 1,
};

/// Steady rate of the latency runs, events per second.
const RATE: u32 = 1_000;
/// Concurrent writers of the latency runs, one event per transaction.
const WRITERS: u32 = 8;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Default,
    ExactlyOnce { shards: u32 },
}

async fn spawn(mode: Mode, pool: &PgPool) -> Background {
    let kafka = testkit::kafka::producer_config().await;
    match mode {
        Mode::Default => {
            let config = RelayConfig::default()
                .batch_size(1_000)
                .poll_interval(Duration::from_millis(20));
            let publisher = KafkaPublisher::from_config(&kafka).expect("publisher");
            Relay::new(pool.clone(), publisher, config)
                .expect("relay")
                .spawn()
        }
        Mode::ExactlyOnce { shards } => {
            let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
            let config = ExactlyOnceConfig::new(name)
                .shards(shards)
                .batch_size(1_000)
                .poll_interval(Duration::from_millis(20));
            ExactlyOnceRelay::new(pool.clone(), &kafka, config)
                .await
                .expect("relay")
                .spawn()
        }
    }
}

/// Events per second of `relays` exactly-once relays sharing 4 shards: the relays start on an
/// empty outbox and settle (two shards each when there are two), then `events` events commit in
/// one transaction and the clock runs until the last is published.
async fn shared_throughput(relays: usize, events: usize, aggregates: usize) -> f64 {
    let db = database().await;
    let topic = testkit::kafka::topic(4).await;
    let kafka = testkit::kafka::producer_config().await;
    let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let mut running = Vec::new();
    for _ in 0..relays {
        let config = ExactlyOnceConfig::new(&name)
            .shards(4)
            .batch_size(1_000)
            .lease_ttl(Duration::from_secs(3))
            .poll_interval(Duration::from_millis(20));
        let relay = ExactlyOnceRelay::new(db.pool.clone(), &kafka, config)
            .await
            .expect("relay");
        running.push(relay.spawn());
    }
    let settled = format!(
        "SELECT count(DISTINCT owner) = {relays} AND count(*) = 4 FROM leases_named
         WHERE name LIKE 'outbox/{name}/%-of-4' AND expires_at > now()"
    );
    while !sqlx::query_scalar::<_, bool>(sqlx::AssertSqlSafe(settled.clone()))
        .fetch_one(&db.pool)
        .await
        .expect("shard leases")
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut tx = db.pool.begin().await.expect("begin");
    for chunk in numbered(&topic, 0..events, aggregates).chunks(1_000) {
        outbox::enqueue_many(&mut tx, chunk).await.expect("enqueue");
    }
    tx.commit().await.expect("commit");
    let start = Instant::now();
    while any_pending(&db.pool).await {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed();
    for relay in running {
        relay.shutdown().await;
    }
    events as f64 / elapsed.as_secs_f64()
}

async fn database() -> TestDb {
    testkit::database(&[&outbox::MIGRATOR, &leases::MIGRATOR]).await
}

/// Events per second draining `events` pre-enqueued events over `aggregates` aggregates.
async fn throughput(mode: Mode, events: usize, aggregates: usize) -> f64 {
    let db = database().await;
    let topic = testkit::kafka::topic(4).await;
    enqueue(&db.pool, &topic, events, 1_000, aggregates).await;
    ready_to_drain(&db.pool).await;
    let start = Instant::now();
    let relay = spawn(mode, &db.pool).await;
    while any_pending(&db.pool).await {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed();
    relay.shutdown().await;
    events as f64 / elapsed.as_secs_f64()
}

/// Commit-to-visible p50 and p99 at [`RATE`] events/s: `WRITERS` writers commit one event per
/// transaction; a `read_committed` consumer notes when each arrives.
async fn latency(mode: Mode, scale: &Scale) -> (Duration, Duration) {
    let db = database().await;
    let topic = testkit::kafka::topic(4).await;
    let consumer: StreamConsumer = testkit::kafka::producer_config()
        .await
        .set(
            "group.id",
            format!("bench-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let relay = spawn(mode, &db.pool).await;
    // Start measuring once the relay is up (shard leases taken, producers initialized).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stop = Instant::now() + Duration::from_secs(scale.latency_secs);
    let writers = (0..WRITERS).map(|writer| {
        let (pool, topic) = (db.pool.clone(), topic.clone());
        tokio::spawn(async move {
            let mut committed = HashMap::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1) * WRITERS / RATE);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut n = 0;
            while Instant::now() < stop {
                tick.tick().await;
                n += 1;
                let key = format!("o-{writer}-{}", n % 100);
                let event = NewEvent::bytes(&topic, "order", key, "OrderPlaced", vec![7; 100]);
                let mut tx = pool.begin().await.expect("begin");
                outbox::enqueue(&mut tx, &event).await.expect("enqueue");
                tx.commit().await.expect("commit");
                committed.insert(event.id.to_string(), Instant::now());
            }
            committed
        })
    });
    // Reads until no event arrived for 3 s after the writers stopped.
    let reader = tokio::spawn(async move {
        let mut seen = HashMap::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await {
                Ok(message) => {
                    let message = message.expect("consume");
                    let id = message
                        .headers()
                        .and_then(|h| h.iter().find(|h| h.key == "event-id").and_then(|h| h.value))
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .expect("event-id");
                    seen.insert(id, Instant::now());
                }
                Err(_) if Instant::now() > stop => return seen,
                Err(_) => {}
            }
        }
    });
    let mut committed = HashMap::new();
    for writer in futures::future::join_all(writers).await {
        committed.extend(writer.expect("writer"));
    }
    while any_pending(&db.pool).await {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = reader.await.expect("reader");
    relay.shutdown().await;
    let mut latencies: Vec<Duration> = committed
        .iter()
        .filter_map(|(id, at)| seen.get(id).map(|v| v.saturating_duration_since(*at)))
        .collect();
    assert!(!latencies.is_empty(), "the consumer saw events");
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    (pick(0.50), pick(0.99))
}

fn main() {
    let full =
        std::env::args().any(|a| a == "--bench") && std::env::var_os("BENCH_SMOKE").is_none();
    let scale = if full { FULL } else { SMOKE };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        println!(
            "exactly-once relay benchmarks ({})",
            if full {
                "full"
            } else {
                "smoke run; pass --bench for figures"
            }
        );
        let (events, aggregates) = (scale.events, scale.events / 20);
        println!("\nthroughput, {events} events over {aggregates} aggregates, acks=all");
        println!("{:>26} | {:>10} | {:>6}", "relay", "events/s", "ratio");
        let default = throughput(Mode::Default, events, aggregates).await;
        println!(
            "{:>26} | {default:>10.0} | {:>6.2}",
            "default, 2 in flight", 1.0
        );
        let mut four = 0.0;
        for shards in [1, 2, 4] {
            let rate = throughput(Mode::ExactlyOnce { shards }, events, aggregates).await;
            let label = format!("exactly-once, {shards} shards");
            println!("{label:>26} | {rate:>10.0} | {:>6.2}", rate / default);
            four = rate;
        }
        println!(
            "exactly-once relay: {four:.0} events/s, default relay {default:.0} events/s, \
             ratio {:.2}",
            four / default
        );
        let hot = throughput(Mode::ExactlyOnce { shards: 4 }, scale.hot_events, 1).await;
        println!("exactly-once relay, one aggregate: {hot:.0} events/s");

        println!("\nrelays sharing 4 shards, {events} events committed at once");
        println!("{:>26} | {:>10} | {:>6}", "relays", "events/s", "ratio");
        let one = shared_throughput(1, events, aggregates).await;
        println!("{:>26} | {one:>10.0} | {:>6.2}", "1 relay, 4 shards", 1.0);
        let two = shared_throughput(2, events, aggregates).await;
        println!(
            "{:>26} | {two:>10.0} | {:>6.2}",
            "2 relays, 2 shards each",
            two / one
        );
        println!(
            "exactly-once relays sharing shards: 1 relay {one:.0} events/s, 2 relays {two:.0} \
             events/s, ratio {:.2}",
            two / one
        );

        println!(
            "\ncommit to visible (read_committed consumer), {RATE} events/s, {WRITERS} writers"
        );
        println!("{:>26} | {:>8} | {:>8}", "relay", "p50 ms", "p99 ms");
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (d50, d99) = latency(Mode::Default, &scale).await;
        println!("{:>26} | {:>8.1} | {:>8.1}", "default", ms(d50), ms(d99));
        let (e50, e99) = latency(Mode::ExactlyOnce { shards: 4 }, &scale).await;
        println!(
            "{:>26} | {:>8.1} | {:>8.1}",
            "exactly-once, 4 shards",
            ms(e50),
            ms(e99)
        );
        println!(
            "exactly-once latency at {RATE} events/s: p50 {:.1} ms, p99 {:.1} ms \
             (default relay p50 {:.1} ms, p99 {:.1} ms)",
            ms(e50),
            ms(e99),
            ms(d50),
            ms(d99)
        );
    });
}
