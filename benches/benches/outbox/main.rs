//! Outbox benchmarks against real PostgreSQL and Apache Kafka, printed as tables:
//!
//! 1. relay end to end: pre-enqueued events, all published and acknowledged (`acks=all`), with 1
//!    and 2 relays keeping 1 or 2 batches in flight, through Apache Kafka and through librdkafka's
//!    mock cluster (the relay's own capacity); then the goal lines (`ratio`): the relay taking
//!    turns with the same work written by hand (no order filter, no fencing), and one aggregate;
//! 2. the relay while a snapshot is held open (vacuum can remove none of the published rows),
//!    claiming from the head of the outbox and with a claim cursor;
//! 3. claim and mark (no broker) with the crate, as a ratio of the same statements written by hand;
//! 4. latency from commit to broker acknowledgement at a steady 1,000 and 5,000 events/s from 16
//!    writers, one event per transaction, and 5,000 events/s at ten events per transaction, with
//!    the publisher's default `linger.ms` (1) and librdkafka's (5);
//! 5. enqueue throughput, 1 and 100 events per transaction.
//!
//! Run: `eval "$(scripts/services up)"; cargo bench -p benches --bench outbox`, or name sections
//! to run only those: `cargo bench -p benches --bench outbox -- ratio latency` (`relay`, `ratio`,
//! `held`, `claim`, `latency`, `enqueue`). Under `cargo test` (no `--bench` argument) it runs a
//! small smoke version of each.

use std::time::{Duration, Instant};

use leases::{Lease, RowLeases, TableSpec};
use outbox::{Event, KafkaPublisher, Relay, RelayConfig};
use outbox_events::{any_pending, enqueue, ready_to_drain};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

mod by_hand;
mod latency;
#[path = "../shared/outbox_events.rs"]
mod outbox_events;

use Broker::{Kafka, Mock};
use Snapshot::{Free, HeldFromTheHead, HeldWithCursor};
use by_hand::{claim_and_mark_by_hand, hand_written_pipeline};
use latency::{WRITERS, latency};

struct Scale {
    relay_events: usize,
    /// Rounds of the relay and the hand-written pipeline taking turns, for the goal's ratio.
    rounds: usize,
    /// Events of the one-aggregate run (claimed and published in runs of a batch).
    hot_events: usize,
    /// Events of the drains with a snapshot held open.
    held_events: usize,
    claim_rows: usize,
    latency_secs: u64,
    enqueue_events: usize,
}

const FULL: Scale = Scale {
    relay_events: 200_000,
    rounds: 3,
    hot_events: 20_000,
    held_events: 1_000_000,
    claim_rows: 100_000,
    latency_secs: 10,
    enqueue_events: 20_000,
};
const SMOKE: Scale = Scale {
    relay_events: 2_000,
    rounds: 1,
    hot_events: 200,
    held_events: 2_000,
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

/// Whether another connection holds a snapshot open while the relay drains (so vacuum can remove
/// none of the published rows), and whether the relay claims with a claim cursor then.
#[derive(Clone, Copy, PartialEq)]
enum Snapshot {
    Free,
    HeldFromTheHead,
    HeldWithCursor,
}

/// Events per second for `relays` relays, each keeping `depth` batches in flight, draining
/// `events` pre-enqueued events spread over `aggregates` aggregates (interleaved, as live
/// traffic is).
async fn relay_end_to_end(
    events: usize,
    aggregates: usize,
    (relays, depth): (usize, u32),
    broker: Broker,
    snapshot: Snapshot,
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
    ready_to_drain(&db.pool).await;
    let holder = if snapshot == Snapshot::Free {
        None
    } else {
        let mut holder = db.pool.acquire().await.expect("holder");
        sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM outbox_events;")
            .execute(&mut *holder)
            .await
            .expect("hold a snapshot");
        Some(holder)
    };
    // The relays and their producers are made before the clock starts, as the hand-written
    // pipeline's producer is; starting them (LISTEN, the first claim) is timed.
    let mut ready = Vec::new();
    for _ in 0..relays {
        let config = RelayConfig::default()
            .batch_size(1000)
            .pipeline_depth(depth)
            .poll_interval(Duration::from_millis(20));
        let config = if snapshot == Snapshot::HeldWithCursor {
            config.claim_cursor(Duration::from_secs(10))
        } else {
            config
        };
        let publisher = match broker {
            Broker::Kafka => publisher().await,
            Broker::Mock => KafkaPublisher::new(&mock.bootstrap_servers()).expect("publisher"),
        };
        ready.push(Relay::new(db.pool.clone(), publisher, config).expect("relay"));
    }
    let start = Instant::now();
    let handles: Vec<_> = ready.into_iter().map(Relay::spawn).collect();
    while any_pending(&db.pool).await {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed();
    for handle in handles {
        handle.shutdown().await;
    }
    drop(holder);
    events as f64 / elapsed.as_secs_f64()
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
        ready_to_drain(&db.pool).await;
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

async fn enqueue_rate(scale: &Scale, per_tx: usize) -> f64 {
    let db = testkit::database(&[&outbox::MIGRATOR]).await;
    let start = Instant::now();
    enqueue(&db.pool, "t", scale.enqueue_events, per_tx, 1000).await;
    scale.enqueue_events as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench") && std::env::var_os("BENCH_SMOKE").is_none();
    let scale = if full { FULL } else { SMOKE };
    // Sections named on the command line (arguments not starting with `-`), or all of them.
    let named: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    let runs = |section: &str| named.is_empty() || named.contains(&section);
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
        if runs("relay") {
            relay_section(&scale).await;
        }
        if runs("ratio") {
            ratio_section(&scale).await;
        }
        if runs("held") {
            held_section(&scale).await;
        }
        if runs("claim") {
            claim_section(&scale).await;
        }
        if runs("latency") {
            latency_section(&scale).await;
        }
        if runs("enqueue") {
            let single = enqueue_rate(&scale, 1).await;
            let hundred = enqueue_rate(&scale, 100).await;
            println!("\nenqueue, {} events", scale.enqueue_events);
            println!("{:>10} | {:>10}", "per tx", "events/s");
            println!("{:>10} | {single:>10.0}", 1);
            println!("{:>10} | {hundred:>10.0}", 100);
        }
    });
}

async fn relay_section(scale: &Scale) {
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
        let serial = relay_end_to_end(events, aggregates, (relays, 1), Kafka, Free).await;
        let pipelined = relay_end_to_end(events, aggregates, (relays, 2), Kafka, Free).await;
        let mock = relay_end_to_end(events, aggregates, (relays, 2), Mock, Free).await;
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
}

/// The goal lines: the relay against the hand-written pipeline, and one aggregate.
async fn ratio_section(scale: &Scale) {
    let (events, aggregates) = (scale.relay_events, scale.relay_events / 20);
    // The goal's ratio: the relay and the hand-written pipeline taking turns, so that what the
    // shared machine does meanwhile falls on both; the medians of the rounds.
    let (mut ours, mut hand) = (Vec::new(), Vec::new());
    for _ in 0..scale.rounds {
        ours.push(relay_end_to_end(events, aggregates, (1, 2), Kafka, Free).await);
        hand.push(hand_written_pipeline(scale).await);
    }
    let rounds: Vec<String> = ours
        .iter()
        .zip(&hand)
        .map(|(ours, hand)| format!("{ours:.0} / {hand:.0}"))
        .collect();
    println!(
        "relay / hand-written, taking turns, events/s: {}",
        rounds.join(", ")
    );
    let (ours, hand) = (median(&mut ours), median(&mut hand));
    println!(
        "relay: {ours:.0} events/s, hand-written {hand:.0} events/s, ratio {:.2}",
        ours / hand
    );
    let hot = relay_end_to_end(scale.hot_events, 1, (1, 2), Kafka, Free).await;
    println!("relay, one aggregate: {hot:.0} events/s");
}

/// The relay while another connection holds a snapshot open, claiming from the head of the
/// outbox and with a claim cursor.
async fn held_section(scale: &Scale) {
    let (events, aggregates) = (scale.held_events, scale.held_events / 20);
    println!("\nrelay with a snapshot held open, one relay, 2 in flight ({events} events)");
    let head = relay_end_to_end(events, aggregates, (1, 2), Kafka, HeldFromTheHead).await;
    let cursor = relay_end_to_end(events, aggregates, (1, 2), Kafka, HeldWithCursor).await;
    println!("{:>14} | {:>10}", "claims", "events/s");
    println!("{:>14} | {head:>10.0}", "from the head");
    println!("{:>14} | {cursor:>10.0}", "with a cursor");
}

fn median(rates: &mut [f64]) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

async fn claim_section(scale: &Scale) {
    let (ours, hand) = claim_and_mark(scale).await;
    println!(
        "\nclaim (per-aggregate order) + mark, {} rows over 20 events per aggregate, batch 1000",
        scale.claim_rows
    );
    println!(
        "{:>14} | {:>14} | {:>6}",
        "leases, runs", "by hand, heads", "ratio"
    );
    println!("{ours:>14.0} | {hand:>14.0} | {:>6.2}", ours / hand);
}

async fn latency_section(scale: &Scale) {
    println!("\ncommit to broker acknowledgement, {WRITERS} writers");
    println!(
        "{:>8} | {:>6} | {:>9} | {:>8} | {:>8} | {:>8}",
        "events/s", "per tx", "linger ms", "reached", "p50 ms", "p99 ms"
    );
    let mut at_goal = Vec::new();
    // `None`: the publisher's default linger (1 ms); 5 is librdkafka's own default.
    for (rate, per_tx, linger) in [
        (1_000, 1, None),
        (5_000, 1, None),
        (5_000, 10, None),
        (5_000, 10, Some(5)),
    ] {
        let (p50, p99, reached) = latency(scale, rate, per_tx, linger).await;
        let (p50, p99) = (p50.as_secs_f64() * 1e3, p99.as_secs_f64() * 1e3);
        // The goal is the publisher's defaults at a steady rate of batched commits.
        if per_tx == 10 && linger.is_none() {
            at_goal.push((rate, reached, p50, p99));
        }
        let linger = linger.map_or("1 (default)".to_owned(), |ms| ms.to_string());
        println!(
            "{rate:>8} | {per_tx:>6} | {linger:>9} | {reached:>8.0} | {p50:>8.1} | {p99:>8.1}"
        );
    }
    for (rate, reached, p50, p99) in at_goal {
        println!("relay latency at {rate} events/s: p50 {p50:.1} ms, p99 {p99:.1} ms");
        println!("  (the publisher's defaults; the writers reached {reached:.0} events/s)");
    }
}
