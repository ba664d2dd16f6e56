//! What the exactly-once tests share: a database, numbered events, a relay, and checks of what
//! reached the wire.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use outbox::exactly_once::{ExactlyOnceConfig, ExactlyOnceRelay};
use outbox::{Backoff, NewEvent, Retention};
use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};
use sqlx::PgPool;
use testkit::TestDb;

pub(crate) const SHARDS: u32 = 4;

pub(crate) async fn db() -> TestDb {
    testkit::database(&[&outbox::MIGRATOR, &leases::MIGRATOR]).await
}

pub(crate) async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// Enqueues `per_aggregate` events for each aggregate, interleaved, each payload `<aggregate>:<n>`.
pub(crate) async fn enqueue(
    pool: &PgPool,
    topic: &str,
    aggregates: &[String],
    per_aggregate: usize,
) {
    let mut tx = pool.begin().await.expect("begin");
    for n in 0..per_aggregate {
        for aggregate in aggregates {
            let payload = format!("{aggregate}:{n}").into_bytes();
            let event = NewEvent::bytes(topic, "order", aggregate, "Numbered", payload);
            outbox::enqueue(&mut tx, &event).await.expect("enqueue");
        }
    }
    tx.commit().await.expect("commit");
}

pub(crate) async fn relay(pool: &PgPool, name: &str) -> outbox::Background {
    relay_with(pool, name, Retention::Delete).await
}

pub(crate) async fn relay_with(
    pool: &PgPool,
    name: &str,
    retention: Retention,
) -> outbox::Background {
    let config = config(name).retention(retention);
    let kafka = testkit::kafka::producer_config().await;
    ExactlyOnceRelay::new(pool.clone(), &kafka, config)
        .await
        .expect("relay")
        .spawn()
}

/// The tests' relay configuration: four shards, batches of 100, a 5 s lease, quick retries.
pub(crate) fn config(name: &str) -> ExactlyOnceConfig {
    ExactlyOnceConfig::new(name)
        .shards(SHARDS)
        .batch_size(100)
        .lease_ttl(Duration::from_secs(5))
        .backoff(
            Backoff::new(Duration::from_millis(10), Duration::from_millis(50), 3).expect("backoff"),
        )
}

pub(crate) async fn wait_until_empty(pool: &PgPool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while count(
        pool,
        "SELECT count(*) FROM outbox_events WHERE next_attempt_at IS NOT NULL",
    )
    .await
        > 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox did not drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn event_id(message: &OwnedMessage) -> String {
    let headers = message.headers().expect("headers");
    let id = headers
        .iter()
        .find(|h| h.key == "event-id")
        .and_then(|h| h.value);
    String::from_utf8_lossy(id.expect("event-id")).into_owned()
}

/// Asserts every message's event id is unique and each aggregate's payloads count up from 0;
/// returns how many messages each aggregate had.
pub(crate) fn assert_once_in_order(messages: &[OwnedMessage]) -> HashMap<String, usize> {
    let mut ids = BTreeSet::new();
    let mut next: HashMap<String, usize> = HashMap::new();
    for message in messages {
        assert!(ids.insert(event_id(message)), "an event appeared twice");
        let payload = String::from_utf8_lossy(message.payload().expect("payload")).into_owned();
        let (aggregate, n) = payload.split_once(':').expect("aggregate:n");
        let expected = next.entry(aggregate.to_owned()).or_default();
        assert_eq!(
            n.parse::<usize>().expect("n"),
            *expected,
            "{aggregate} out of order"
        );
        *expected += 1;
    }
    next
}

pub(crate) fn aggregates() -> Vec<String> {
    (0..20).map(|a| format!("agg-{a}")).collect()
}

pub(crate) fn relay_name() -> String {
    format!("eos-{}", uuid::Uuid::new_v4().simple())
}

/// Asserts that `topic` holds each of the 1,000 events of `aggregates()` × 50 once, in order,
/// for a `read_committed` reader, and that `pool`'s outbox neither holds nor buried any event.
pub(crate) async fn assert_published_once(pool: &PgPool, topic: &str) {
    let bootstrap = testkit::kafka::bootstrap_servers().await;
    let messages = testkit::kafka::read_to_end(&bootstrap, topic, "read_committed").await;
    assert_eq!(
        messages.len(),
        1_000,
        "every event of the database reached the topic"
    );
    assert!(assert_once_in_order(&messages).values().all(|&n| n == 50));
    assert_eq!(count(pool, "SELECT count(*) FROM outbox_events").await, 0);
    assert_eq!(
        count(pool, "SELECT count(*) FROM outbox_dead_letters").await,
        0
    );
}

/// Waits until `pool`'s shard leases of relay `name` are all held by owners that satisfy `held`.
pub(crate) async fn until_shards_held(pool: &PgPool, name: &str, held: impl Fn(&str, i64) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let leases: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT owner, token FROM leases_named
             WHERE name LIKE 'outbox/' || $1 || '/%-of-%' AND expires_at > now()",
        )
        .bind(name)
        .fetch_all(pool)
        .await
        .expect("shard leases");
        let all_held = leases.len() == SHARDS as usize
            && leases
                .iter()
                .all(|(owner, token)| owner.as_deref().is_some_and(|o| held(o, *token)));
        if all_held {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the shards were not held as expected: {leases:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
