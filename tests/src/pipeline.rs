//! The pipeline the fault tests break: events written to an outbox in committed transactions, a
//! relay publishing them, and consumer runners applying each one as a row of `effects` through the
//! inbox. An effect applied twice shows up as two rows with one event id.

use std::time::Duration;

use inbox::{Consumer, ConsumerConfig, ConsumerHandle, Handler, HandlerError, Message};
use outbox::{Background, Backoff, KafkaPublisher, NewEvent, Relay, RelayConfig};
use sqlx::{PgConnection, PgPool};

/// The event type every pipeline event carries.
pub const EVENT_TYPE: &str = "Applied";

/// The `application_name` of the `consumer-process` child's database sessions.
pub const CONSUMER_APPLICATION_NAME: &str = "consumer-process";

/// Creates the `effects` table (no unique key, so a double application would be seen).
///
/// # Errors
///
/// When the statement fails.
pub async fn create_effects(pool: &PgPool) -> sqlx::Result<()> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS effects (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            event_id text NOT NULL,
            topic text NOT NULL)",
    )
    .execute(pool)
    .await
    .map(drop)
}

/// Applies every `Applied` event as one `effects` row; anything else is dead-lettered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Effects;

impl Handler for Effects {
    type Event = String;

    fn decode(&self, message: &Message) -> Result<String, HandlerError> {
        match message.header_str("event-type") {
            Some(EVENT_TYPE) => message
                .header_str("event-id")
                .map(str::to_owned)
                .ok_or_else(|| HandlerError::decode("no event-id header")),
            other => Err(HandlerError::unknown_event_type(other.unwrap_or("(none)"))),
        }
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        event_id: String,
        message: &Message,
    ) -> Result<(), HandlerError> {
        sqlx::query("INSERT INTO effects (event_id, topic) VALUES ($1, $2)")
            .bind(event_id)
            .bind(message.topic())
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// What `effects` holds: rows, and distinct event ids among them.
///
/// # Errors
///
/// When the query fails.
pub async fn applied(pool: &PgPool) -> sqlx::Result<(i64, i64)> {
    sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM effects")
        .fetch_one(pool)
        .await
}

/// Commits `count` events for `topic` in transactions of `per_transaction`, keyed over 50
/// aggregates, pausing `pause` between transactions; returns their ids.
///
/// # Errors
///
/// When a transaction fails.
pub async fn write(
    pool: &PgPool,
    topic: &str,
    count: usize,
    per_transaction: usize,
    pause: Duration,
) -> outbox::Result<Vec<uuid::Uuid>> {
    let mut ids = Vec::with_capacity(count);
    while ids.len() < count {
        let events: Vec<NewEvent> = (ids.len()..count.min(ids.len() + per_transaction))
            .map(|n| {
                NewEvent::json(
                    topic,
                    "item",
                    format!("item-{}", n % 50),
                    EVENT_TYPE,
                    &serde_json::json!({ "n": n }),
                )
            })
            .collect::<outbox::Result<_>>()?;
        let mut tx = pool.begin().await?;
        outbox::enqueue_many(&mut tx, &events).await?;
        tx.commit().await?;
        ids.extend(events.iter().map(|e| e.id));
        tokio::time::sleep(pause).await;
    }
    Ok(ids)
}

/// Polls `effects` until it holds `expected` distinct event ids, for at most `limit`; returns
/// (rows, distinct ids) as last seen. Connection errors (a server restarting) count as not yet.
pub async fn wait_applied(pool: &PgPool, expected: i64, limit: Duration) -> (i64, i64) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = (0, 0);
    loop {
        if let Ok(seen) = applied(pool).await {
            last = seen;
            if seen.1 >= expected {
                return seen;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (at most `limit`) until `expected` events are applied, then asserts that each was applied
/// exactly once, that the outbox at `source` drained and that nothing was dead-lettered.
///
/// # Panics
///
/// When any of these does not hold: this is a test helper.
pub async fn assert_settled(source: &PgPool, sink: &PgPool, expected: i64, limit: Duration) {
    let (rows, distinct) = wait_applied(sink, expected, limit).await;
    assert_eq!(distinct, expected, "every committed event is applied");
    assert_eq!(rows, expected, "no event is applied twice");
    let (left, dead): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM outbox_events), (SELECT count(*) FROM outbox_dead_letters)",
    )
    .fetch_one(source)
    .await
    .expect("outbox counts");
    assert_eq!(left, 0, "the outbox drained");
    assert_eq!(dead, 0, "the fault dead-lettered nothing");
}

/// A relay from the outbox at `source` to the brokers at `bootstrap`, claiming `batch_size` rows,
/// polling every 50 ms and retrying a failed publish quickly (100 ms, doubling to 2 s) for as
/// long as a fault test lasts.
///
/// # Panics
///
/// When the producer or the relay cannot be created: this is a test helper.
pub fn spawn_relay(source: &PgPool, bootstrap: &str, batch_size: u32) -> Background {
    let publisher = KafkaPublisher::from_config(&testkit::kafka::producer_config_for(bootstrap))
        .expect("publisher");
    let backoff =
        Backoff::new(Duration::from_millis(100), Duration::from_secs(2), 1_000).expect("backoff");
    let config = RelayConfig::default()
        .batch_size(batch_size)
        .poll_interval(Duration::from_millis(50))
        .backoff(backoff);
    Relay::new(source.clone(), publisher, config)
        .expect("relay")
        .spawn()
}

/// A consumer runner applying `topic` to `effects` at `sink` in a fresh consumer group, retrying
/// quickly (50 ms, doubling to 1 s), dead letters to `dead_letters`.
///
/// # Panics
///
/// When the runner cannot be created: this is a test helper.
pub fn spawn_consumer(
    sink: &PgPool,
    bootstrap: &str,
    topic: &str,
    dead_letters: &str,
) -> ConsumerHandle {
    let mut kafka = rdkafka::ClientConfig::new();
    kafka.set("bootstrap.servers", bootstrap);
    let config = ConsumerConfig::new("effects", kafka)
        .group_id(format!("effects-{}", uuid::Uuid::new_v4().simple()))
        .topic(topic)
        .dead_letter_topic(dead_letters)
        .backoff(
            Backoff::new(Duration::from_millis(50), Duration::from_secs(1), u32::MAX)
                .expect("backoff"),
        );
    Consumer::new(sink.clone(), config, Effects)
        .expect("consumer")
        .spawn()
}
