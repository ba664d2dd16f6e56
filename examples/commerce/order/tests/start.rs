//! `start`: the whole service (database set-up, consumer, jobs, relay, HTTP server) comes up on
//! its own database and port, answers, and stops.

mod common;

use std::time::Duration;

use commerce_events::Event;
use commerce_platform::Config;
use rdkafka::Message as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;
use uuid::Uuid;

#[tokio::test]
async fn starts_serves_and_stops() {
    let prefix = format!("test_{}", uuid::Uuid::new_v4().simple());
    let mut config = Config::from_env().expect("config");
    config.database_url = testkit::postgres::database_url().await;
    config.kafka = testkit::kafka::bootstrap_servers().await;
    config.db_prefix = prefix.clone();
    config.topics = commerce_events::Topics::new(&prefix);
    config.addrs.order = "127.0.0.1:0".parse().expect("addr");
    config.cors_origins = vec!["https://shop.example".parse().expect("origin")];
    commerce_platform::setup::topics(&config.kafka, &config.topics.all(), 1)
        .await
        .expect("topics");

    let running = commerce_order::start(&config).await.expect("starts");
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let health = http
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    let openapi = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .expect("openapi");
    assert_eq!(openapi.status(), 200);
    let anonymous = http
        .post(format!("{base}/api/v1/orders"))
        .header("idempotency-key", "k")
        .json(&serde_json::json!({"lines": []}))
        .send()
        .await
        .expect("orders");
    assert_eq!(anonymous.status(), 401);
    // A page of the configured origin may call the API from a browser; another may not.
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, format!("{base}/api/v1/orders"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,idempotency-key",
            )
            .send()
    };
    let allowed = preflight("https://shop.example").await.expect("preflight");
    let header = |reply: &reqwest::Response, name: &str| {
        reply
            .headers()
            .get(name)
            .map(|value| value.to_str().expect("ASCII").to_owned())
    };
    assert_eq!(
        header(&allowed, "access-control-allow-origin").as_deref(),
        Some("https://shop.example")
    );
    let allowed_headers = header(&allowed, "access-control-allow-headers").unwrap_or_default();
    assert!(
        allowed_headers.contains("idempotency-key"),
        "{allowed_headers}"
    );
    let other = preflight("https://evil.example").await.expect("preflight");
    assert_eq!(header(&other, "access-control-allow-origin"), None);

    // A product announced on the products topic reaches the catalogue copy and can be ordered.
    let producer: FutureProducer = config.producer_config().create().expect("producer");
    let product = Uuid::now_v7();
    let announced = Event::ProductChanged {
        product_id: product,
        sku: "START-1".into(),
        name: "a product".into(),
        price_cents: 700,
        active: true,
        version: 1,
    }
    .into_envelope();
    produce(&producer, &config.topics.products, &announced).await;
    common::eventually(
        Duration::from_secs(60),
        "the product is in the catalogue",
        || {
            let request = http
                .get(format!("{base}/internal/v1/catalogue/{product}"))
                .header("x-api-key", &config.api_key);
            async move { request.send().await.expect("catalogue").status() == 200 }
        },
    )
    .await;

    // An order goes out through the relay, and a StockReserved coming in moves it.
    let token = common::token(&config, "alice", 60);
    let placed = http
        .post(format!("{base}/api/v1/orders"))
        .bearer_auth(&token)
        .header("idempotency-key", "k")
        .json(&serde_json::json!({"lines": [{"product_id": product, "quantity": 2}]}))
        .send()
        .await
        .expect("orders");
    assert_eq!(placed.status(), 201);
    let order: serde_json::Value = placed.json().await.expect("json");
    let id: Uuid = order["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("id");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let published = loop {
        let published = testkit::kafka::read_all(&config.topics.orders).await;
        if !published.is_empty() {
            break published;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "OrderPlaced not published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].key(), Some(id.to_string().as_bytes()));
    let envelope =
        commerce_events::decode(published[0].payload().expect("payload")).expect("decodes");
    assert!(
        matches!(envelope.event, Event::OrderPlaced { order_id, total_cents: 1400, .. } if order_id == id)
    );

    let reserved = Event::StockReserved {
        order_id: id,
        total_cents: 1400,
        customer_id: "alice".into(),
    }
    .into_envelope();
    produce(&producer, &config.topics.inventory, &reserved).await;
    common::eventually(Duration::from_secs(60), "the order is RESERVED", || {
        let request = http
            .get(format!("{base}/api/v1/orders/{id}"))
            .bearer_auth(&token);
        async move {
            let order: serde_json::Value = request
                .send()
                .await
                .expect("order")
                .json()
                .await
                .expect("json");
            order["state"] == "RESERVED"
        }
    })
    .await;
    running.shutdown().await;

    let admin: PgConnectOptions = config.database_url.parse().expect("url");
    let mut conn = admin.connect().await.expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{prefix}_order\" WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .expect("drop the database");
}

/// Sends `envelope` to `topic` as the relay would (keyed by its aggregate, with its event id).
async fn produce(producer: &FutureProducer, topic: &str, envelope: &commerce_events::Envelope) {
    let event_id = envelope.event_id.to_string();
    let payload = envelope.to_json();
    producer
        .send(
            FutureRecord::to(topic)
                .key(&envelope.aggregate_id)
                .payload(&payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "event-id",
                    value: Some(&event_id),
                })),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produced");
}
