//! The inbox and the consumer runner against real PostgreSQL and Apache Kafka.

mod batches;
mod inbox_records;
mod locks;
mod runner;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use inbox::{
    Consumer, ConsumerConfig, ConsumerHandle, ConsumerStats, Delivery, Handler, HandlerError,
    Message,
};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::{PgConnection, PgPool};
use testkit::TestDb;
use tokio::sync::{mpsc, watch};

const WAIT: Duration = Duration::from_secs(60);

async fn db() -> TestDb {
    let db = testkit::database(&[&inbox::MIGRATOR]).await;
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
/// `{"reject": true}` is refused for good; `{"pause_ms": t}` takes `t` ms;
/// `{"flaky": k}` fails retriably `k` times, after
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
    pause_ms: u64,
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
                pause_ms: payload["pause_ms"].as_u64().unwrap_or(0),
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
        tokio::time::sleep(Duration::from_millis(event.pause_ms)).await;
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
        .backoff(
            leases::retry::Backoff::new(
                Duration::from_millis(10),
                Duration::from_millis(100),
                u32::MAX,
            )
            .expect("backoff"),
        )
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
                    sum.batches += s.batches;
                    sum.isolated += s.isolated;
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
