//! The `inbox` consumer runner against a hand-written consumer, in one run, against real
//! PostgreSQL and Apache Kafka, printed as a table.
//!
//! `EVENTS` events are already on an 8-partition topic (each with an `event-id` header, keys
//! spread over 1,000 aggregates). Each consumer drains them into a fresh database, recording
//! every event in the inbox and inserting one effect row per fresh event:
//!
//! - the runner (`inbox::Consumer`, default batch size and concurrency) with a handler of one
//!   `INSERT` per event (the default `Handler::handle_batch`), and with a handler that overrides
//!   `handle_batch` with one `INSERT ... SELECT unnest(...)` per batch;
//! - the hand-written baseline: one rdkafka consumer that takes up to 1,000 messages, inserts
//!   their inbox rows and then the fresh ones' effect rows with one statement each in one
//!   transaction, commits, and then commits the offsets.
//!
//! Then the same with every event on the topic twice (the second copies after all the firsts),
//! so half the messages are duplicates the inbox skips.
//!
//! Run: `eval "$(scripts/services up)"; cargo bench -p benches --bench consumer`. Under
//! `cargo test` (no `--bench` argument) it runs a small smoke version.

use std::time::{Duration, Instant};

use inbox::{Consumer, ConsumerConfig, Handler, HandlerError, Message};
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _};
use sqlx::{PgConnection, PgPool};
use testkit::TestDb;

/// The one-insert handler: an effect row per event, one statement each.
struct OneInsert;

/// The set-based handler: the effect rows of a batch in one statement.
struct SetBased;

fn event_id(message: &Message) -> Result<String, HandlerError> {
    message
        .header_str("event-id")
        .map(str::to_owned)
        .ok_or_else(|| HandlerError::permanent("no event id"))
}

impl Handler for OneInsert {
    type Event = String;

    fn decode(&self, message: &Message) -> Result<String, HandlerError> {
        event_id(message)
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        id: String,
        _: &Message,
    ) -> Result<(), HandlerError> {
        sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
            .bind(id)
            .execute(conn)
            .await?;
        Ok(())
    }
}

impl Handler for SetBased {
    type Event = String;

    fn decode(&self, message: &Message) -> Result<String, HandlerError> {
        event_id(message)
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        id: String,
        message: &Message,
    ) -> Result<(), HandlerError> {
        OneInsert.handle(conn, id, message).await
    }

    async fn handle_batch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: Vec<(String, &'a Message)>,
    ) -> Result<(), HandlerError> {
        let ids: Vec<String> = events.into_iter().map(|(id, _)| id).collect();
        sqlx::query("INSERT INTO effects (event_id) SELECT unnest($1::text[])")
            .bind(ids)
            .execute(conn)
            .await?;
        Ok(())
    }
}

async fn database() -> TestDb {
    let db = testkit::database(&[&inbox::MIGRATOR]).await;
    sqlx::raw_sql("CREATE TABLE effects (event_id text NOT NULL)")
        .execute(&db.pool)
        .await
        .expect("effects");
    db
}

async fn effects(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM effects")
        .fetch_one(pool)
        .await
        .expect("count")
}

/// Puts `events` events on a new 8-partition topic, `copies` times each.
async fn fill(events: usize, copies: usize) -> String {
    let topic = testkit::kafka::topic(8).await;
    let producer: FutureProducer = testkit::kafka::producer_config()
        .await
        .set("linger.ms", "20")
        .create()
        .expect("producer");
    let ids: Vec<String> = (0..events)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    for _ in 0..copies {
        for chunk in ids.chunks(10_000).zip(0..) {
            let (chunk, n) = chunk;
            let sends = chunk.iter().enumerate().map(|(i, id)| {
                let key = format!("a-{}", (n * 10_000 + i) % 1_000);
                let headers = OwnedHeaders::new().insert(Header {
                    key: "event-id",
                    value: Some(id.as_str()),
                });
                let producer = &producer;
                let topic = &topic;
                async move {
                    let record = FutureRecord::to(topic)
                        .key(&key)
                        .payload("{}")
                        .headers(headers);
                    producer
                        .send(record, Duration::from_secs(30))
                        .await
                        .expect("delivered");
                }
            });
            futures::future::join_all(sends).await;
        }
    }
    topic
}

fn consumer_config(name: &str, topic: &str) -> ConsumerConfig {
    ConsumerConfig::new(name, testkit::kafka::producer_config_for(&bootstrap())).topic(topic)
}

fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Events per second of the runner with `handler` draining the `messages` messages of `topic`,
/// `fresh` of them distinct.
async fn runner<H: Handler>(handler: H, topic: &str, messages: u64, fresh: u64) -> f64 {
    let db = database().await;
    let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let consumer = Consumer::new(db.pool.clone(), consumer_config(&name, topic), handler)
        .expect("consumer")
        .spawn();
    // The clock starts at the first message applied: joining the group is not draining.
    let mut started = None;
    loop {
        let stats = consumer.stats();
        let done = stats.processed + stats.duplicates;
        if done > 0 && started.is_none() {
            started = Some((Instant::now(), done));
        }
        if done >= messages {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (started, before) = started.expect("started");
    let elapsed = started.elapsed();
    consumer.shutdown().await;
    assert_eq!(effects(&db.pool).await as u64, fresh);
    (messages - before) as f64 / elapsed.as_secs_f64()
}

/// Events per second of the hand-written consumer draining the `messages` messages of `topic`,
/// `fresh` of them distinct.
async fn hand_written(topic: &str, messages: u64, fresh: u64) -> f64 {
    let db = database().await;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set(
            "group.id",
            format!("bench-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut started = None;
    let mut seen = 0;
    while seen < messages {
        let mut ids = Vec::with_capacity(1_000);
        let first = consumer.recv().await.expect("a message");
        // The clock starts at the first message, as for the runner.
        started.get_or_insert_with(Instant::now);
        ids.push(header_id(&first));
        while ids.len() < 1_000 {
            match tokio::time::timeout(Duration::from_millis(1), consumer.recv()).await {
                Ok(message) => ids.push(header_id(&message.expect("a message"))),
                Err(_) => break,
            }
        }
        seen += ids.len() as u64;
        let mut tx = db.pool.begin().await.expect("begin");
        let fresh: Vec<String> = sqlx::query_scalar(
            "INSERT INTO inbox (consumer, event_id) SELECT 'hand-written', unnest($1::text[])
             ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .expect("inbox");
        sqlx::query("INSERT INTO effects (event_id) SELECT unnest($1::text[])")
            .bind(&fresh)
            .execute(&mut *tx)
            .await
            .expect("effects");
        tx.commit().await.expect("commit");
        consumer
            .commit_consumer_state(CommitMode::Async)
            .expect("commit offsets");
    }
    let elapsed = started.expect("started").elapsed();
    assert_eq!(effects(&db.pool).await as u64, fresh);
    messages as f64 / elapsed.as_secs_f64()
}

fn header_id(message: &rdkafka::message::BorrowedMessage<'_>) -> String {
    message
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == "event-id").and_then(|h| h.value))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .expect("event-id")
}

fn main() {
    let full =
        std::env::args().any(|a| a == "--bench") && std::env::var_os("BENCH_SMOKE").is_none();
    let events: usize = if full { 200_000 } else { 4_000 };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "consumer benchmarks ({})",
        if full {
            "full"
        } else {
            "smoke run; pass --bench for figures"
        }
    );
    runtime.block_on(async {
        for copies in [1_usize, 2] {
            let messages = (events * copies) as u64;
            let topic = fill(events, copies).await;
            println!(
                "\n{events} events on 8 partitions{}",
                if copies == 2 {
                    ", each delivered twice"
                } else {
                    ""
                }
            );
            println!("{:>34} | {:>10} | {:>6}", "consumer", "events/s", "ratio");
            let fresh = events as u64;
            let baseline = hand_written(&topic, messages, fresh).await;
            let one = runner(OneInsert, &topic, messages, fresh).await;
            let set = runner(SetBased, &topic, messages, fresh).await;
            for (label, rate) in [
                ("hand-written, 1,000 per tx", baseline),
                ("runner, one insert per event", one),
                ("runner, set-based handle_batch", set),
            ] {
                println!("{label:>34} | {rate:>10.0} | {:>6.2}", rate / baseline);
            }
            let with = if copies == 2 { " with duplicates" } else { "" };
            println!(
                "consumer{with}: {set:.0} events/s, hand-written {baseline:.0} events/s, \
                 ratio {:.2} (one insert per event: {one:.0} events/s, ratio {:.2})",
                set / baseline,
                one / baseline
            );
        }
    });
}
