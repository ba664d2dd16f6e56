//! The stock cache converges: `StockLevelChanged` applied out of order, twice, or stale never
//! moves Redis or `stock_levels` backwards, and reads fall back to PostgreSQL.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use commerce_platform::events::Events;
use commerce_platform::testing;
use commerce_product::{CONSUMER, StockCache, StockLevels};
use common::{fixture, get, level};
use inbox::Delivery;
use redis::AsyncCommands;
use uuid::Uuid;

fn available_at(version: i64) -> i32 {
    1000 - i32::try_from(version).expect("small") * 7
}

#[tokio::test]
async fn the_cache_converges_on_the_newest_version_whatever_the_order() {
    let f = fixture().await;
    let product = f.create("CONV-1", 100).await;
    const N: i64 = 12;
    // 1..=N in a scrambled order (5 is coprime with 12).
    let order: Vec<i64> = (0..N).map(|i| (i * 5) % N + 1).collect();
    let events: Vec<_> = order
        .iter()
        .map(|&v| level(product, available_at(v), v))
        .collect();
    let mut newest = 0;
    for (&version, event) in order.iter().zip(&events) {
        assert_eq!(f.deliver(event).await, Delivery::Fresh);
        // The same event again: the inbox skips it.
        assert_eq!(f.deliver(event).await, Delivery::Duplicate);
        newest = newest.max(version);
        let (available, version) = f.cached(product).await;
        assert_eq!(version, Some(newest), "never backwards");
        assert_eq!(available, Some(i64::from(available_at(newest))));
    }
    // Every version once more under new event ids (as a producer's retry or a start-up
    // snapshot would send them), in reverse: the handler runs and changes nothing.
    for &v in order.iter().rev() {
        assert_eq!(
            f.deliver(&level(product, available_at(v), v)).await,
            Delivery::Fresh
        );
    }
    assert_eq!(
        f.cached(product).await,
        (Some(i64::from(available_at(N))), Some(N))
    );
    assert_eq!(f.stored(product).await, Some((available_at(N), N)));
    let read = f
        .send(get(&format!("/api/v1/products/{product}"), None))
        .await;
    assert_eq!(read.json["available"], available_at(N));
    f.cleanup().await;
}

#[tokio::test]
async fn a_stale_version_never_overwrites() {
    let f = fixture().await;
    let product = Uuid::now_v7();
    f.apply(&level(product, 50, 5)).await;
    f.apply(&level(product, 30, 3)).await;
    // The same version with another figure is not newer either.
    f.apply(&level(product, 99, 5)).await;
    assert_eq!(f.cached(product).await, (Some(50), Some(5)));
    assert_eq!(f.stored(product).await, Some((50, 5)));
    f.apply(&level(product, 60, 6)).await;
    assert_eq!(f.cached(product).await, (Some(60), Some(6)));
    assert_eq!(f.stored(product).await, Some((60, 6)));
    f.cleanup().await;
}

#[tokio::test]
async fn concurrent_cache_writes_keep_the_newest() {
    let f = fixture().await;
    let product = Uuid::now_v7();
    let tasks: Vec<_> = (1..=50_i64)
        .map(|i| (i * 17) % 50 + 1)
        .map(|version| {
            let cache = f.state.stock.clone();
            tokio::spawn(async move { cache.apply(product, version * 10, version).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("redis");
    }
    assert_eq!(f.cached(product).await, (Some(500), Some(50)));
    f.cleanup().await;
}

#[tokio::test]
async fn a_missing_key_falls_back_to_postgres_and_is_repopulated() {
    let f = fixture().await;
    let product = f.create("FALL-1", 100).await;
    let never = f.create("FALL-2", 100).await;
    f.apply(&level(product, 9, 2)).await;

    // Redis lost the key (flushed, restarted without persistence).
    let mut redis = testkit::redis::connection().await;
    let _: () = redis.del(f.state.stock.key(product)).await.expect("DEL");
    assert_eq!(f.cached(product).await, (None, None));

    let read = f
        .send(get(&format!("/api/v1/products/{product}"), None))
        .await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.json["available"], 9, "from stock_levels");
    assert_eq!(f.cached(product).await, (Some(9), Some(2)), "written back");

    // Neither Redis nor PostgreSQL knows the other product's stock.
    let unknown = f
        .send(get(&format!("/api/v1/products/{never}"), None))
        .await;
    assert_eq!(unknown.json["available"], serde_json::Value::Null);
    f.cleanup().await;
}

#[tokio::test]
async fn without_redis_reads_use_postgres_and_events_wait() {
    let f = fixture().await;
    let product = f.create("DOWN-1", 100).await;
    f.apply(&level(product, 4, 1)).await;

    // Nothing listens on port 1.
    let down = StockCache::open("redis://127.0.0.1:1", f.prefix.as_str()).expect("a URL");
    let mut state = f.state.clone();
    state.stock = down.clone();
    let read = common::send(&state, get(&format!("/api/v1/products/{product}"), None)).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.json["available"], 4);

    // An event cannot be completed without Redis: the handler fails retriably, so the runner
    // rolls back and retries it later; stock_levels keeps the old figure meanwhile.
    let handler = StockLevels::new(down);
    let envelope = level(product, 3, 2);
    let error = testing::try_deliver(&f.db.pool, CONSUMER, &handler, &envelope)
        .await
        .expect_err("redis is down");
    assert!(error.is_retriable(), "{error}");
    assert_eq!(f.stored(product).await, Some((4, 1)));

    // Redis back: the retry applies it to both.
    assert_eq!(f.deliver(&envelope).await, Delivery::Fresh);
    assert_eq!(f.stored(product).await, Some((3, 2)));
    assert_eq!(f.cached(product).await, (Some(3), Some(2)));
    f.cleanup().await;
}

#[tokio::test]
async fn ignores_other_inventory_events() {
    let f = fixture().await;
    let order_id = Uuid::now_v7();
    let envelope = commerce_events::Event::StockConfirmed { order_id }.into_envelope();
    assert_eq!(f.deliver(&envelope).await, Delivery::Fresh);
    let levels: i64 = sqlx::query_scalar("SELECT count(*) FROM stock_levels")
        .fetch_one(&f.db.pool)
        .await
        .expect("count");
    assert_eq!(levels, 0);
}

#[tokio::test]
async fn a_real_consumer_converges_on_the_newest_version() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let f = fixture().await;
    let product = Uuid::now_v7();
    let topic = testkit::kafka::topic(1).await;
    let producer: FutureProducer = testkit::kafka::producer_config()
        .await
        .create()
        .expect("producer");
    // Newest first: every later event is stale.
    let events: Vec<_> = (1..=5)
        .rev()
        .map(|v| level(product, available_at(v), v))
        .collect();
    for event in events.iter().chain(&events[..1]) {
        let event_id = event.event_id.to_string();
        let payload = event.to_json();
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(&event.aggregate_id)
                    .payload(&payload)
                    .headers(OwnedHeaders::new().insert(Header {
                        key: "event-id",
                        value: Some(event_id.as_str()),
                    })),
                Duration::from_secs(10),
            )
            .await
            .expect("produced");
    }
    let mut kafka = rdkafka::ClientConfig::new();
    kafka.set(
        "bootstrap.servers",
        testkit::kafka::bootstrap_servers().await,
    );
    let config = inbox::ConsumerConfig::new(format!("product-test-{}", Uuid::now_v7()), kafka)
        .topic(&topic)
        .dead_letter_producer(testkit::kafka::producer_config().await);
    let consumer = inbox::Consumer::new(f.db.pool.clone(), config, Events(f.stock.clone()))
        .expect("consumer")
        .spawn();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stats = consumer.stats();
        if stats.processed + stats.duplicates == 6 {
            assert_eq!(
                (stats.processed, stats.duplicates, stats.dead_lettered),
                (5, 1, 0)
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the consumer did not finish: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consumer.shutdown().await;
    assert_eq!(
        f.cached(product).await,
        (Some(i64::from(available_at(5))), Some(5))
    );
    assert_eq!(f.stored(product).await, Some((available_at(5), 5)));
    f.cleanup().await;
}

/// A TCP proxy to Redis whose connections the test can cut.
struct Proxy {
    addr: std::net::SocketAddr,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Self {
        let client = redis::Client::open(testkit::redis::redis_url().await).expect("a URL");
        let redis::ConnectionAddr::Tcp(host, port) = client.get_connection_info().addr().clone()
        else {
            panic!("the proxy test needs Redis over TCP");
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tracked = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = format!("{host}:{port}");
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tracked.lock().expect("lock").push(task);
            }
        });
        Self {
            addr,
            connections,
            accept,
        }
    }

    /// Closes every proxied connection (as a Redis restart would).
    fn cut(&self) -> usize {
        let tasks: Vec<_> = self.connections.lock().expect("lock").drain(..).collect();
        let cut = tasks.len();
        for task in tasks {
            task.abort();
        }
        cut
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

#[tokio::test]
async fn the_cache_reconnects_after_its_connection_breaks() {
    let f = fixture().await;
    let proxy = Proxy::start().await;
    let cache =
        StockCache::open(&format!("redis://{}", proxy.addr), f.prefix.as_str()).expect("a URL");
    let product = Uuid::now_v7();
    assert!(cache.apply(product, 5, 1).await.expect("redis"));
    assert_eq!(proxy.cut(), 1, "one shared connection");

    // The broken connection may fail a call or two; then the cache connects again by itself.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let value = loop {
        match cache.available(&[product]).await {
            Ok(value) => break value,
            Err(error) => assert!(
                tokio::time::Instant::now() < deadline,
                "the cache did not reconnect: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(value, [Some(5)]);
    assert!(cache.apply(product, 6, 2).await.expect("redis"));
    assert_eq!(f.cached(product).await, (Some(6), Some(2)));
    f.cleanup().await;
}
