//! The outbox against real PostgreSQL and Apache Kafka (and librdkafka's mock
//! cluster where a broker must fail on command).

mod failures;
mod health;
mod lifecycle;
mod publishing;
mod runs;
mod trace_context;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use outbox::{
    Backoff, Event, KafkaPublisher, NewEvent, PublishError, Publisher, Relay, RelayConfig,
};
use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};
use sqlx::PgPool;
use testkit::TestDb;
use uuid::Uuid;

async fn outbox_db() -> TestDb {
    testkit::database(&[&outbox::MIGRATOR]).await
}

async fn kafka() -> KafkaPublisher {
    KafkaPublisher::from_config(&testkit::kafka::producer_config().await).expect("publisher")
}

fn fast_backoff(max_attempts: u32) -> Backoff {
    Backoff::new(
        Duration::from_millis(10),
        Duration::from_millis(100),
        max_attempts,
    )
    .expect("backoff")
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// Runs `relay` batch after batch until a batch claims nothing and the outbox is empty.
async fn drain<P: Publisher>(relay: &Relay<P>, pool: &PgPool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let outcome = relay.run_once().await.expect("batch");
        if outcome.claimed == 0 {
            if count(pool, "SELECT count(*) FROM outbox_events").await == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "outbox did not drain"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn wait_until_empty(pool: &PgPool, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while count(pool, "SELECT count(*) FROM outbox_events").await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "outbox did not drain in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

fn event_id(message: &OwnedMessage) -> Uuid {
    header(message, "event-id")
        .and_then(|id| id.parse().ok())
        .expect("event-id header")
}
