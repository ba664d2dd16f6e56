//! The inbox and the consumer runner against real PostgreSQL and the Kafka-protocol broker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idempotency::inbox::{self, Delivery};
use idempotency::{
    Consumer, ConsumerConfig, ConsumerHandle, ConsumerStats, Handler, HandlerError, Message,
};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::{PgConnection, PgPool};
use testkit::TestDb;
use tokio::sync::{mpsc, watch};

const WAIT: Duration = Duration::from_secs(60);

async fn db() -> TestDb {
    let db = testkit::database(&idempotency::MIGRATOR).await;
    sqlx::raw_sql(
        "CREATE TABLE effects (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            event_id text NOT NULL,
            n bigint NOT NULL)",
    )
    .execute(&db.pool)
    .await
    .expect("create effects");
    db
}

/// The effects applied, in order: (event id, n).
async fn effects(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT event_id, n FROM effects ORDER BY seq")
        .fetch_all(pool)
        .await
        .expect("effects")
}

/// An event as the tests send it.
struct Event<'a> {
    id: Option<&'a str>,
    event_type: &'a str,
    payload: &'a [u8],
}

fn event<'a>(id: &'a str, event_type: &'a str, payload: &'a [u8]) -> Event<'a> {
    Event {
        id: Some(id),
        event_type,
        payload,
    }
}

async fn producer() -> FutureProducer {
    testkit::kafka::producer_config()
        .await
        .set("enable.idempotence", "true")
        .create()
        .expect("producer")
}

/// Sends events one after the other (so they keep their order in the partition).
async fn produce(producer: &FutureProducer, topic: &str, events: &[Event<'_>]) {
    for event in events {
        let mut headers = OwnedHeaders::new().insert(Header {
            key: "event-type",
            value: Some(event.event_type),
        });
        if let Some(id) = event.id {
            headers = headers.insert(Header {
                key: "event-id",
                value: Some(id),
            });
        }
        let record = FutureRecord::to(topic)
            .key("aggregate-1")
            .payload(event.payload)
            .headers(headers);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("delivered");
    }
}

/// The test service: `Applied` events with a JSON payload `{"n": ..}` insert an effect row.
/// `{"reject": true}` is refused for good; `{"flaky": k}` fails retriably `k` times, after
/// writing its effect (which must then be rolled back); the first event to reach `handle` may
/// wait at a gate.
#[derive(Clone)]
struct Effects {
    failures: Arc<Mutex<HashMap<String, u64>>>,
    hold_first: bool,
    first: Arc<AtomicBool>,
    entered: mpsc::UnboundedSender<String>,
    gate: watch::Receiver<bool>,
}

struct Gate {
    open: watch::Sender<bool>,
    entered: mpsc::UnboundedReceiver<String>,
}

fn effects_handler(hold_first: bool) -> (Effects, Gate) {
    let (open, gate) = watch::channel(false);
    let (entered_tx, entered) = mpsc::unbounded_channel();
    (
        Effects {
            failures: Arc::default(),
            hold_first,
            first: Arc::default(),
            entered: entered_tx,
            gate,
        },
        Gate { open, entered },
    )
}

struct Applied {
    n: i64,
    reject: bool,
    flaky: u64,
}

impl Handler for Effects {
    type Event = Applied;

    fn decode(&self, message: &Message) -> Result<Applied, HandlerError> {
        let payload: serde_json::Value =
            serde_json::from_slice(message.payload().unwrap_or_default())
                .map_err(HandlerError::decode)?;
        match message.header_str("event-type") {
            Some("Applied") => Ok(Applied {
                n: payload["n"].as_i64().unwrap_or(0),
                reject: payload["reject"].as_bool().unwrap_or(false),
                flaky: payload["flaky"].as_u64().unwrap_or(0),
            }),
            other => Err(HandlerError::unknown_event_type(other.unwrap_or("(none)"))),
        }
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        event: Applied,
        message: &Message,
    ) -> Result<(), HandlerError> {
        let id = message
            .header_str("event-id")
            .unwrap_or_default()
            .to_owned();
        if event.reject {
            return Err(HandlerError::permanent("this event can never be applied"));
        }
        sqlx::query("INSERT INTO effects (event_id, n) VALUES ($1, $2)")
            .bind(&id)
            .bind(event.n)
            .execute(&mut *conn)
            .await?;
        if self.hold_first && !self.first.swap(true, Ordering::SeqCst) {
            let _ = self.entered.send(id.clone());
            let _ = self.gate.clone().wait_for(|open| *open).await;
        }
        let failed = {
            let mut failures = self.failures.lock().expect("failures");
            let failed = failures.entry(id).or_default();
            *failed += 1;
            *failed
        };
        if failed <= event.flaky {
            return Err(HandlerError::retriable(format!("flaky failure {failed}")));
        }
        Ok(())
    }
}

fn new_group() -> String {
    format!("group-{}", uuid::Uuid::new_v4().simple())
}

async fn config(name: &str, topic: &str, dead_letters: &str) -> ConsumerConfig {
    let mut kafka = ClientConfig::new();
    kafka.set(
        "bootstrap.servers",
        testkit::kafka::bootstrap_servers().await,
    );
    configured(ConsumerConfig::new(name, kafka), topic, dead_letters).await
}

async fn configured(config: ConsumerConfig, topic: &str, dead_letters: &str) -> ConsumerConfig {
    config
        .group_id(new_group())
        .topic(topic)
        .dead_letter_topic(dead_letters)
        .dead_letter_producer(testkit::kafka::producer_config().await)
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
}

/// Polls the consumers' stats until `done` holds for their sum.
async fn wait_for(
    handles: &[&ConsumerHandle],
    what: &str,
    done: impl Fn(ConsumerStats) -> bool,
) -> ConsumerStats {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let total =
            handles
                .iter()
                .map(|h| h.stats())
                .fold(ConsumerStats::default(), |mut sum, s| {
                    sum.processed += s.processed;
                    sum.duplicates += s.duplicates;
                    sum.dead_lettered += s.dead_lettered;
                    sum.retries += s.retries;
                    sum
                });
        if done(total) {
            return total;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {total:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::Message as _;
    message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

#[tokio::test]
async fn the_inbox_tells_fresh_from_duplicate_and_purges_old_records() {
    let db = db().await;
    let mut tx = db.pool.begin().await.expect("begin");
    assert_eq!(
        inbox::receive(&mut tx, "inventory", "e1")
            .await
            .expect("receive"),
        Delivery::Fresh
    );
    assert_eq!(
        inbox::receive(&mut tx, "inventory", "e1")
            .await
            .expect("receive"),
        Delivery::Duplicate
    );
    assert_eq!(
        inbox::receive(&mut tx, "payment", "e1")
            .await
            .expect("receive"),
        Delivery::Fresh,
        "each consumer has its own inbox"
    );
    tx.rollback().await.expect("rollback");
    // Rolled back with the effects: the event is fresh again.
    let mut tx = db.pool.begin().await.expect("begin");
    assert_eq!(
        inbox::receive(&mut tx, "inventory", "e1")
            .await
            .expect("receive"),
        Delivery::Fresh
    );
    tx.commit().await.expect("commit");

    sqlx::query(
        "INSERT INTO idempotency_inbox (consumer, event_id, received_at)
         SELECT 'inventory', 'old-' || g, now() - interval '8 days' FROM generate_series(1, 25) g",
    )
    .execute(&db.pool)
    .await
    .expect("old records");
    let purged = inbox::purge(&db.pool, Duration::from_secs(7 * 24 * 3600), 10)
        .await
        .expect("purge");
    assert_eq!(purged, 25);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_inbox")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(left, 1);
}

// Must show 7.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_delivered_twice_has_its_effect_once() {
    let db = db().await;
    let topic = testkit::kafka::topic(1).await;
    let dead_letters = testkit::kafka::topic(1).await;
    produce(
        &producer().await,
        &topic,
        &[
            event("e1", "Applied", br#"{"n": 1}"#),
            event("e1", "Applied", br#"{"n": 1}"#), // redelivered
            event("e2", "Applied", br#"{"n": 2}"#),
            event("e1", "Applied", br#"{"n": 1}"#), // and once more, later
        ],
    )
    .await;
    let (handler, _gate) = effects_handler(false);
    let consumer = Consumer::new(
        db.pool.clone(),
        config("inventory", &topic, &dead_letters).await,
        handler,
    )
    .expect("consumer")
    .spawn();
    let stats = wait_for(&[&consumer], "4 messages", |s| {
        s.processed + s.duplicates == 4
    })
    .await;
    assert_eq!((stats.processed, stats.duplicates), (2, 2));
    assert_eq!(
        effects(&db.pool).await,
        [("e1".into(), 1), ("e2".into(), 2)]
    );
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_event_delivered_concurrently_to_two_instances_has_its_effect_once() {
    let db = db().await;
    let topic = testkit::kafka::topic(1).await;
    let dead_letters = testkit::kafka::topic(1).await;
    produce(
        &producer().await,
        &topic,
        &[event("e1", "Applied", br#"{"n": 1}"#)],
    )
    .await;

    // Two instances of the same consumer, each in its own group, so each is delivered the event.
    let (handler, mut gate) = effects_handler(true);
    let first = Consumer::new(
        db.pool.clone(),
        config("inventory", &topic, &dead_letters).await,
        handler.clone(),
    )
    .expect("consumer")
    .spawn();
    let second = Consumer::new(
        db.pool.clone(),
        config("inventory", &topic, &dead_letters).await,
        handler,
    )
    .expect("consumer")
    .spawn();

    // One instance is inside its handler, its transaction open ...
    let id = tokio::time::timeout(WAIT, gate.entered.recv())
        .await
        .expect("an instance handles the event")
        .expect("channel");
    assert_eq!(id, "e1");
    // ... and the other is waiting on the inbox row at the same time.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&db.pool)
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second instance never reached the inbox"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate.open.send_replace(true);

    let stats = wait_for(&[&first, &second], "both deliveries", |s| {
        s.processed + s.duplicates == 2
    })
    .await;
    assert_eq!((stats.processed, stats.duplicates), (1, 1));
    assert_eq!(effects(&db.pool).await, [("e1".into(), 1)]);
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_with_their_reason_and_the_partition_keeps_flowing() {
    let db = db().await;
    let topic = testkit::kafka::topic(1).await;
    let dead_letters = testkit::kafka::topic(1).await;
    produce(
        &producer().await,
        &topic,
        &[
            event("ok-1", "Applied", br#"{"n": 1}"#),
            event("garbage", "Applied", b"\xffnot json"), // offset 1
            event("ok-2", "Applied", br#"{"n": 2}"#),
            event("alien", "Exploded", br#"{"n": 99}"#), // offset 3
            event("flaky", "Applied", br#"{"n": 3, "flaky": 2}"#),
            event("refused", "Applied", br#"{"n": 98, "reject": true}"#), // offset 5
            Event {
                id: None,
                event_type: "Applied",
                payload: br#"{"n": 97}"#,
            }, // offset 6
            event("ok-4", "Applied", br#"{"n": 4}"#),
        ],
    )
    .await;
    let (handler, _gate) = effects_handler(false);
    let consumer = Consumer::new(
        db.pool.clone(),
        config("inventory", &topic, &dead_letters).await,
        handler,
    )
    .expect("consumer")
    .spawn();
    let stats = wait_for(&[&consumer], "all 8 messages", |s| {
        s.processed + s.dead_lettered == 8
    })
    .await;
    assert_eq!(
        (
            stats.processed,
            stats.dead_lettered,
            stats.duplicates,
            stats.retries
        ),
        (4, 4, 0, 2)
    );
    // The healthy events were applied once each, in partition order, the flaky one after its
    // two retries (its rolled-back attempts left nothing behind).
    assert_eq!(
        effects(&db.pool).await,
        [
            ("ok-1".into(), 1),
            ("ok-2".into(), 2),
            ("flaky".into(), 3),
            ("ok-4".into(), 4)
        ]
    );

    let mut dead = testkit::kafka::read_all(&dead_letters).await;
    dead.sort_by_key(|m| header(m, "dlq-original-offset").and_then(|o| o.parse::<i64>().ok()));
    let summary: Vec<(Option<String>, Option<String>, Option<String>)> = dead
        .iter()
        .map(|m| {
            (
                header(m, "dlq-original-offset"),
                header(m, "dlq-reason"),
                header(m, "event-id"),
            )
        })
        .collect();
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(
        summary,
        [
            (some("1"), some("decode-failed"), some("garbage")),
            (some("3"), some("unknown-event-type"), some("alien")),
            (some("5"), some("rejected"), some("refused")),
            (some("6"), some("missing-event-id"), None),
        ]
    );
    for message in &dead {
        use rdkafka::Message as _;
        assert_eq!(
            header(message, "dlq-original-topic").as_deref(),
            Some(topic.as_str())
        );
        assert_eq!(
            header(message, "dlq-original-partition").as_deref(),
            Some("0")
        );
        assert_eq!(
            header(message, "dlq-consumer").as_deref(),
            Some("inventory")
        );
        assert!(header(message, "dlq-error").is_some_and(|e| !e.is_empty()));
        assert_eq!(message.key(), Some(&b"aggregate-1"[..]), "the original key");
    }
    assert_eq!(
        rdkafka::Message::payload(&dead[0]),
        Some(&b"\xffnot json"[..]),
        "the original bytes"
    );
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_graceful_shutdown_the_group_resumes_after_the_last_applied_message() {
    let db = db().await;
    let topic = testkit::kafka::topic(1).await;
    let dead_letters = testkit::kafka::topic(1).await;
    let producer = producer().await;
    produce(
        &producer,
        &topic,
        &[
            event("e1", "Applied", br#"{"n": 1}"#),
            event("e2", "Applied", br#"{"n": 2}"#),
            event("e3", "Applied", br#"{"n": 3}"#),
        ],
    )
    .await;
    // Offsets are committed only at revocation and shutdown, not on a timer.
    let mut kafka = ClientConfig::new();
    kafka
        .set(
            "bootstrap.servers",
            testkit::kafka::bootstrap_servers().await,
        )
        .set("auto.commit.interval.ms", "3600000");
    let config = configured(
        ConsumerConfig::new("inventory", kafka),
        &topic,
        &dead_letters,
    )
    .await;
    let (handler, _gate) = effects_handler(false);
    let first = Consumer::new(db.pool.clone(), config.clone(), handler.clone())
        .expect("consumer")
        .spawn();
    wait_for(&[&first], "3 messages", |s| s.processed == 3).await;
    let stats = first.shutdown().await;
    assert_eq!(stats.processed, 3);

    produce(
        &producer,
        &topic,
        &[
            event("e4", "Applied", br#"{"n": 4}"#),
            event("e5", "Applied", br#"{"n": 5}"#),
        ],
    )
    .await;
    let second = Consumer::new(db.pool.clone(), config, handler)
        .expect("consumer")
        .spawn();
    let stats = wait_for(&[&second], "2 new messages", |s| s.processed == 2).await;
    // Had the offsets not been committed, the three old messages would have come first, as
    // duplicates.
    assert_eq!(stats.duplicates, 0);
    assert_eq!(effects(&db.pool).await.len(), 5);
    second.shutdown().await;
}
