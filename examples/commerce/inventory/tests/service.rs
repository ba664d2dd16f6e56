//! The saga through the real consumer runner and broker, and the whole service through `start`.

mod common;

use std::future::Future;
use std::time::Duration;

use commerce_events::{Envelope, Event, Topics};
use commerce_inventory::{SAGA_CONSUMER, Saga};
use commerce_platform::Config;
use commerce_platform::runtime;
use common::*;
use rdkafka::Message as _;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::{ConnectOptions, PgPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(90);

/// Polls `check` until it returns true, failing after [`DEADLINE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fresh_topics() -> Topics {
    Topics {
        prefix: format!("test-{}", Uuid::new_v4().simple()),
        products: testkit::kafka::topic(1).await,
        orders: testkit::kafka::topic(1).await,
        inventory: testkit::kafka::topic(1).await,
        payments: testkit::kafka::topic(1).await,
        shipments: testkit::kafka::topic(1).await,
        dead_letters: testkit::kafka::topic(1).await,
    }
}

async fn config(topics: Topics) -> Config {
    let mut config = Config::from_env().expect("configuration");
    config.kafka = testkit::kafka::bootstrap_servers().await;
    config.database_url = testkit::postgres::database_url().await;
    config.topics = topics;
    config
}

async fn producer() -> FutureProducer {
    testkit::kafka::producer_config()
        .await
        .create()
        .expect("producer")
}

/// Publishes `payload` on `topic` as the outbox relay would (key, `event-id` header).
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    event_id: &str,
    payload: &[u8],
) {
    let headers = OwnedHeaders::new().insert(Header {
        key: "event-id",
        value: Some(event_id),
    });
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(headers),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
}

async fn publish(producer: &FutureProducer, topic: &str, envelope: &Envelope) {
    let event_id = envelope.event_id.to_string();
    produce(
        producer,
        topic,
        &envelope.aggregate_id,
        &event_id,
        &envelope.to_json(),
    )
    .await;
}

async fn reservation_state(pool: &PgPool, order_id: Uuid) -> Vec<String> {
    reservations(pool, order_id)
        .await
        .into_iter()
        .map(|(_, _, state)| state)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_applies_each_event_once_and_dead_letters_poison() {
    let db = db().await;
    let topics = fresh_topics().await;
    let config = config(topics.clone()).await;
    let product = Uuid::now_v7();
    seed(&db.pool, product, 5).await;
    let consumer = runtime::consume(
        &config,
        &db.pool,
        SAGA_CONSUMER,
        &[&topics.orders, &topics.payments],
        Saga::new(topics.clone()),
    )
    .expect("consumer");
    let producer = producer().await;

    let order = Uuid::now_v7();
    let envelope = placed(order, vec![line(product, 2)]);
    // Delivered twice (as after a crash before the offset commit), plus two poison messages.
    publish(&producer, &topics.orders, &envelope).await;
    publish(&producer, &topics.orders, &envelope).await;
    produce(
        &producer,
        &topics.orders,
        "x",
        &Uuid::now_v7().to_string(),
        b"not json",
    )
    .await;
    let unknown = format!(
        r#"{{"event_id":"{order}","event_type":"StockStolen","aggregate_id":"x","occurred_at":"2026-01-01T00:00:00Z","payload":{{}}}}"#
    );
    produce(
        &producer,
        &topics.orders,
        "x",
        &order.to_string(),
        unknown.as_bytes(),
    )
    .await;
    eventually("four messages handled", || {
        let stats = consumer.handle.stats();
        async move { stats.processed + stats.duplicates + stats.dead_lettered == 4 }
    })
    .await;
    let stats = consumer.handle.stats();
    let inbox: Vec<(String, String)> =
        sqlx::query_as("SELECT consumer, event_id FROM inbox ORDER BY received_at")
            .fetch_all(&db.pool)
            .await
            .expect("inbox");
    assert_eq!(
        (stats.processed, stats.duplicates, stats.dead_lettered),
        (1, 1, 2),
        "inbox {inbox:?}, event {}",
        envelope.event_id
    );
    assert_eq!(reservation_state(&db.pool, order).await, ["RESERVED"]);
    assert_eq!(level(&db.pool, product).await, (5, 2, 1));
    assert_eq!(outbox_of(&db.pool, "StockReserved").await.len(), 1);

    publish(&producer, &topics.payments, &approved(order)).await;
    eventually("the confirmation", || {
        let pool = db.pool.clone();
        async move { reservation_state(&pool, order).await == ["CONFIRMED"] }
    })
    .await;
    assert_eq!(level(&db.pool, product).await, (3, 0, 2));
    assert_eq!(
        outbox_of(&db.pool, "StockConfirmed").await,
        [Event::StockConfirmed { order_id: order }]
    );

    let dead = testkit::kafka::read_all(&topics.dead_letters).await;
    let mut reasons: Vec<String> = dead
        .iter()
        .filter_map(|m| {
            m.headers()?
                .iter()
                .find(|h| h.key == "dlq-reason")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["decode-failed", "unknown-event-type"]);
    consumer.handle.shutdown().await;
}

/// Drops the service's database when the test ends, however it ends.
struct DropDatabase {
    url: String,
    name: String,
}

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let options: sqlx::postgres::PgConnectOptions = url.parse().expect("url");
                if let Ok(mut conn) = options.connect().await {
                    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: inventory\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
}

async fn published(topic: &str, event_type: &str) -> Vec<Envelope> {
    testkit::kafka::read_all(topic)
        .await
        .iter()
        .filter_map(|m| commerce_events::decode(m.payload()?).ok())
        .filter(|e| e.event.event_type() == event_type)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_publishes_the_snapshot_consumes_and_serves() {
    let topics = fresh_topics().await;
    let mut config = config(topics.clone()).await;
    config.db_prefix = format!("test_{}", Uuid::new_v4().simple());
    config.addrs.inventory = "127.0.0.1:0".parse().expect("addr");
    let _cleanup = DropDatabase {
        url: config.database_url.clone(),
        name: format!("{}_inventory", config.db_prefix),
    };
    // Stock that exists before the service starts, as after a restart.
    let pool =
        commerce_platform::setup::database(&config, "inventory", &commerce_inventory::MIGRATOR)
            .await
            .expect("database");
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    seed(&pool, a, 4).await;
    seed(&pool, b, 7).await;

    let running = commerce_inventory::start(&config).await.expect("started");
    let health = http_get(running.addr, "/health").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let openapi = http_get(running.addr, "/openapi.json").await;
    assert!(openapi.starts_with("HTTP/1.1 200"), "{openapi}");

    // The snapshot: one StockLevelChanged per product, relayed to the inventory topic.
    let inventory = topics.inventory.clone();
    eventually("the snapshot on the inventory topic", || {
        let inventory = inventory.clone();
        async move { published(&inventory, "StockLevelChanged").await.len() >= 2 }
    })
    .await;
    let mut snapshot: Vec<(Uuid, i32, i64)> = published(&inventory, "StockLevelChanged")
        .await
        .into_iter()
        .map(|e| match e.event {
            Event::StockLevelChanged {
                product_id,
                available,
                version,
                ..
            } => (product_id, available, version),
            other => panic!("{other:?}"),
        })
        .collect();
    snapshot.sort();
    let mut expected = vec![(a, 4, 0), (b, 7, 0)];
    expected.sort();
    assert_eq!(snapshot, expected);

    // The saga consumer runs: an order placed on the orders topic is reserved and answered.
    let order = Uuid::now_v7();
    publish(
        &producer().await,
        &topics.orders,
        &placed(order, vec![line(a, 4), line(b, 1)]),
    )
    .await;
    eventually("StockReserved on the inventory topic", || {
        let inventory = inventory.clone();
        async move { !published(&inventory, "StockReserved").await.is_empty() }
    })
    .await;
    assert_eq!(level(&pool, a).await, (4, 4, 1));
    assert_eq!(level(&pool, b).await, (7, 1, 1));

    running.shutdown().await;
    pool.close().await;
}
