//! End-to-end tests of the commerce stack: all four services in this process, against the real
//! PostgreSQL, broker and Redis. One stack serves every test of this file (its own databases and
//! topics, named by a fresh prefix); the crash test starts a second one.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;
use std::time::Duration;

use commerce_launcher::Stack;
use commerce_launcher::client::Client;
use commerce_platform::Config;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::OnceCell;
use uuid::Uuid;

const FINAL: Duration = Duration::from_secs(60);

/// Every test runs on this runtime, so the shared stack outlives each test.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime")
});
static STACK: OnceCell<Stack> = OnceCell::const_new();

fn run<F: std::future::Future<Output = ()>>(test: F) {
    RUNTIME.block_on(test);
}

/// A configuration for a fresh stack: own databases and topics, any free ports, short timeouts.
async fn config() -> Config {
    let mut config = Config::from_env().expect("config");
    config.database_url = testkit::postgres::database_url().await;
    config.kafka = testkit::kafka::bootstrap_servers().await;
    config.redis_url = testkit::redis::redis_url().await;
    let prefix = format!("e2e_{}", &Uuid::new_v4().simple().to_string()[..8]);
    config.db_prefix = prefix.clone();
    config.topics = commerce_events::Topics::new(&prefix);
    config.jwt_secret = "e2e-secret".into();
    config.api_key = "e2e-service-key".into();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    config.addrs.order = any;
    config.addrs.inventory = any;
    config.addrs.payment = any;
    config.addrs.product = any;
    // Long enough for the saga under the load of the concurrent tests, short enough to test expiry.
    config.reservation_timeout_secs = 15;
    config
}

async fn stack() -> &'static Stack {
    STACK
        .get_or_init(|| async { Stack::start(&config().await).await.expect("stack starts") })
        .await
}

/// A pool on one service's database.
async fn db(stack: &Stack, service: &str) -> PgPool {
    let url = format!(
        "{}/{}_{service}",
        stack
            .config
            .database_url
            .rsplit_once('/')
            .map_or("", |(server, _)| server),
        stack.config.db_prefix
    );
    PgPool::connect(&url).await.expect("service database")
}

struct World {
    client: Client,
    admin: String,
}

impl World {
    fn new(stack: &Stack) -> Self {
        let client = Client::new(&stack.config);
        let admin = client.token("admin", &["admin"]);
        Self { client, admin }
    }

    /// A product with `units` in stock.
    async fn product(&self, price_cents: i64, units: i32) -> Uuid {
        let sku = format!("SKU-{}", Uuid::new_v4().simple());
        let id = self
            .client
            .create_product(&self.admin, &sku, "Test product", price_cents)
            .await
            .expect("product");
        if units > 0 {
            self.client
                .add_stock(&self.admin, id, units)
                .await
                .expect("stock");
        }
        id
    }

    fn customer(&self, prefix: &str) -> (String, String) {
        let name = format!("{prefix}-{}", Uuid::new_v4().simple());
        let token = self.client.token(&name, &["customer"]);
        (name, token)
    }

    async fn stock(&self, product: Uuid) -> Value {
        let path = format!("/api/v1/stock/{product}");
        let (status, body) = self
            .client
            .send(
                self.client
                    .request(Method::GET, "inventory", &path, Some(&self.admin)),
            )
            .await
            .expect("stock");
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn payment(&self, order: &str) -> (StatusCode, Value) {
        let path = format!("/api/v1/payments/{order}");
        self.client
            .send(
                self.client
                    .request(Method::GET, "payment", &path, Some(&self.admin)),
            )
            .await
            .expect("payment")
    }

    /// Waits until the product service serves `available` for `product`.
    async fn served_stock_converges(&self, product: Uuid, available: i64) {
        let deadline = tokio::time::Instant::now() + FINAL;
        loop {
            let (_, body) = self.client.product(product).await.expect("product");
            if body["available"] == available {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "product stock stuck at {}",
                body["available"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Places an order as a well-behaved client does: a 503 (a dependency overloaded) is retried
    /// with the same idempotency key.
    async fn place(&self, token: &str, lines: &[(Uuid, i32)]) -> String {
        let key = Uuid::new_v4().to_string();
        let deadline = tokio::time::Instant::now() + FINAL;
        loop {
            let (status, order) = self
                .client
                .place_order(token, &key, lines)
                .await
                .expect("order");
            if status == StatusCode::SERVICE_UNAVAILABLE && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            assert_eq!(status, StatusCode::CREATED, "{order}");
            return order["id"].as_str().expect("id").to_owned();
        }
    }
}

#[test]
fn happy_path_confirms_moves_stock_charges_once_and_updates_the_catalogue() {
    run(async {
        let world = World::new(stack().await);
        let product = world.product(1500, 10).await;
        let (_, alice) = world.customer("alice");
        let id = world.place(&alice, &[(product, 2)]).await;
        let order = world
            .client
            .wait_final(&alice, &id, FINAL)
            .await
            .expect("final");
        assert_eq!(order["state"], "CONFIRMED", "{order}");
        assert_eq!(order["total_cents"], 3000);
        let stock = world.stock(product).await;
        assert_eq!(
            (
                stock["total"].as_i64(),
                stock["reserved"].as_i64(),
                stock["available"].as_i64()
            ),
            (Some(8), Some(0), Some(8))
        );
        let (status, payment) = world.payment(&id).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (payment["status"].as_str(), payment["amount_cents"].as_i64()),
            (Some("APPROVED"), Some(3000))
        );
        world.served_stock_converges(product, 8).await;
    });
}

#[test]
fn declined_payment_cancels_the_order_and_releases_the_stock() {
    run(async {
        let world = World::new(stack().await);
        let product = world.product(700, 5).await;
        let (_, bob) = world.customer("decline-bob");
        let id = world.place(&bob, &[(product, 3)]).await;
        let order = world
            .client
            .wait_final(&bob, &id, FINAL)
            .await
            .expect("final");
        assert_eq!(order["state"], "CANCELLED", "{order}");
        assert!(
            order["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("declined"),
            "{order}"
        );
        let deadline = tokio::time::Instant::now() + FINAL;
        while world.stock(product).await["reserved"] != 0 {
            assert!(tokio::time::Instant::now() < deadline, "stock not released");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(world.stock(product).await["total"], 5);
        assert_eq!(
            world.payment(&id).await.1["status"],
            "DECLINED",
            "no charge"
        );
        world.served_stock_converges(product, 5).await;
    });
}

#[test]
fn not_enough_stock_fails_the_order_with_a_reason_and_reserves_nothing() {
    run(async {
        let world = World::new(stack().await);
        let product = world.product(900, 2).await;
        let (_, carol) = world.customer("carol");
        let id = world.place(&carol, &[(product, 5)]).await;
        let order = world
            .client
            .wait_final(&carol, &id, FINAL)
            .await
            .expect("final");
        assert_eq!(order["state"], "FAILED", "{order}");
        assert!(
            order["reason"]
                .as_str()
                .unwrap_or_default()
                .contains(&product.to_string()),
            "{order}"
        );
        let stock = world.stock(product).await;
        assert_eq!(
            (stock["total"].as_i64(), stock["reserved"].as_i64()),
            (Some(2), Some(0))
        );
        assert_eq!(
            world.payment(&id).await.0,
            StatusCode::NOT_FOUND,
            "never charged"
        );
    });
}

#[test]
fn the_same_post_twenty_times_at_once_makes_one_order_one_reservation_one_charge() {
    run(async {
        let stack = stack().await;
        let world = World::new(stack);
        let product = world.product(1000, 10).await;
        let (name, dan) = world.customer("dan");
        let key = Uuid::new_v4().to_string();
        let lines = [(product, 1)];
        let posts = (0..20).map(|_| world.client.place_order(&dan, &key, &lines));
        let replies = futures::future::join_all(posts).await;
        let mut ids = HashSet::new();
        for reply in replies {
            let (status, body) = reply.expect("reply");
            match status {
                StatusCode::CREATED => {
                    ids.insert(body["id"].as_str().expect("id").to_owned());
                }
                StatusCode::CONFLICT => assert_eq!(body["status"], 409, "problem+json"),
                other => panic!("unexpected {other}: {body}"),
            }
        }
        assert_eq!(ids.len(), 1, "one order");
        let id = ids.into_iter().next().expect("one");
        assert_eq!(
            world
                .client
                .wait_final(&dan, &id, FINAL)
                .await
                .expect("final")["state"],
            "CONFIRMED"
        );
        let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE customer_id = $1")
            .bind(&name)
            .fetch_one(&db(stack, "order").await)
            .await
            .expect("count");
        assert_eq!(orders, 1);
        let reservations: i64 =
            sqlx::query_scalar("SELECT count(*) FROM reservations WHERE order_id = $1::uuid")
                .bind(&id)
                .fetch_one(&db(stack, "inventory").await)
                .await
                .expect("count");
        assert_eq!(reservations, 1);
        let charges: i64 =
            sqlx::query_scalar("SELECT count(*) FROM payments WHERE order_id = $1::uuid")
                .bind(&id)
                .fetch_one(&db(stack, "payment").await)
                .await
                .expect("count");
        assert_eq!(charges, 1);
        assert_eq!(world.stock(product).await["total"], 9);
    });
}

#[test]
fn two_hundred_concurrent_orders_for_a_hundred_units_sell_exactly_a_hundred() {
    run(async {
        let world = World::new(stack().await);
        let product = world.product(500, 100).await;
        // Watch the stock while the orders run: available must never go below zero.
        let watcher = {
            let (client, admin) = (world.client.clone(), world.admin.clone());
            tokio::spawn(async move {
                let mut lowest = i64::MAX;
                for _ in 0..400 {
                    let path = format!("/api/v1/stock/{product}");
                    if let Ok((_, s)) = client
                        .send(client.request(Method::GET, "inventory", &path, Some(&admin)))
                        .await
                    {
                        lowest = lowest.min(s["available"].as_i64().unwrap_or(i64::MAX));
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                lowest
            })
        };
        let customers: Vec<(String, String)> = (0..200).map(|_| world.customer("crowd")).collect();
        let lines = [(product, 1)];
        let posts = customers
            .iter()
            .map(|(_, token)| world.place(token, &lines));
        let ids = futures::future::join_all(posts).await;
        let mut states: HashMap<String, usize> = HashMap::new();
        for ((_, token), id) in customers.iter().zip(&ids) {
            let order = world
                .client
                .wait_final(token, id, FINAL)
                .await
                .expect("final");
            *states
                .entry(order["state"].as_str().unwrap_or("?").to_owned())
                .or_default() += 1;
        }
        assert_eq!(states.get("CONFIRMED"), Some(&100), "{states:?}");
        assert_eq!(states.get("FAILED"), Some(&100), "{states:?}");
        let stock = world.stock(product).await;
        assert_eq!(
            (
                stock["total"].as_i64(),
                stock["reserved"].as_i64(),
                stock["available"].as_i64()
            ),
            (Some(0), Some(0), Some(0))
        );
        assert!(watcher.await.expect("watcher") >= 0, "stock went negative");
        world.served_stock_converges(product, 0).await;
    });
}

#[test]
fn a_reservation_not_paid_in_time_is_cancelled_and_released() {
    run(async {
        let world = World::new(stack().await);
        let product = world.product(1200, 4).await;
        let (_, slow) = world.customer("timeout-erin");
        let id = world.place(&slow, &[(product, 2)]).await;
        let order = world
            .client
            .wait_final(&slow, &id, FINAL)
            .await
            .expect("final");
        assert_eq!(
            (order["state"].as_str(), order["reason"].as_str()),
            (Some("CANCELLED"), Some("payment timeout")),
            "{order}"
        );
        let deadline = tokio::time::Instant::now() + FINAL;
        while world.stock(product).await["reserved"] != 0 {
            assert!(tokio::time::Instant::now() < deadline, "stock not released");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(world.stock(product).await["total"], 4);
    });
}

#[test]
fn security_rejects_bad_tokens_wrong_roles_bad_keys_and_other_peoples_orders() {
    run(async {
        let stack = stack().await;
        let world = World::new(stack);
        let c = &world.client;
        let product = world.product(100, 1).await;
        let (_, frank) = world.customer("frank");
        let id = world.place(&frank, &[(product, 1)]).await;
        let path = format!("/api/v1/orders/{id}");

        let expired = Config {
            jwt_secret: stack.config.jwt_secret.clone(),
            ..stack.config.clone()
        }
        .authenticator()
        .issue(&commerce_platform::Claims {
            sub: "frank".into(),
            roles: vec![],
            exp: 1_000,
        });
        let forged = Client::new(&Config {
            jwt_secret: "not-the-secret".into(),
            ..stack.config.clone()
        })
        .token("frank", &["admin"]);
        let payload = frank.split('.').nth(1).expect("payload");
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        for (what, token) in [
            ("missing", None),
            ("expired", Some(expired.as_str())),
            ("wrong signature", Some(forged.as_str())),
            ("alg none", Some(none.as_str())),
        ] {
            let (status, body) = c
                .send(c.request(Method::GET, "order", &path, token))
                .await
                .expect("reply");
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
            assert_eq!(body["status"], 401);
        }
        let body = json!({"sku": "X", "name": "x", "description": "x", "price_cents": 1});
        let (status, _) = c
            .send(
                c.request(Method::POST, "product", "/api/v1/products", Some(&frank))
                    .json(&body),
            )
            .await
            .expect("reply");
        assert_eq!(status, StatusCode::FORBIDDEN, "customer on an admin route");
        let internal = format!("/internal/v1/products/{product}");
        let (status, _) = c
            .send(c.request(Method::GET, "product", &internal, None))
            .await
            .expect("reply");
        assert_eq!(status, StatusCode::UNAUTHORIZED, "missing api key");
        let (status, _) = c
            .send(
                c.request(Method::GET, "product", &internal, None)
                    .header("x-api-key", "wrong"),
            )
            .await
            .expect("reply");
        assert_eq!(status, StatusCode::UNAUTHORIZED, "wrong api key");
        let (status, _) = c
            .send(
                c.request(Method::GET, "product", &internal, None)
                    .header("x-api-key", &stack.config.api_key),
            )
            .await
            .expect("reply");
        assert_eq!(status, StatusCode::OK, "right api key");
        let (_, grace) = world.customer("grace");
        let (status, _) = c
            .send(c.request(Method::GET, "order", &path, Some(&grace)))
            .await
            .expect("reply");
        assert_eq!(status, StatusCode::NOT_FOUND, "another user's order");
    });
}

#[test]
fn bad_input_gets_problem_json_and_writes_nothing() {
    run(async {
        let world = World::new(stack().await);
        let c = &world.client;
        let product = world.product(100, 5).await;
        let (_, henry) = world.customer("henry");
        let post = |body: String| {
            c.request(Method::POST, "order", "/api/v1/orders", Some(&henry))
                .header("Idempotency-Key", Uuid::new_v4().to_string())
                .header("content-type", "application/json")
                .body(body)
        };
        let cases = [
            ("malformed json", "{\"lines\": [".to_owned()),
            (
                "unknown field",
                json!({"lines": [{"product_id": product, "quantity": 1}], "discount": 99})
                    .to_string(),
            ),
            (
                "zero quantity",
                json!({"lines": [{"product_id": product, "quantity": 0}]}).to_string(),
            ),
            (
                "negative quantity",
                json!({"lines": [{"product_id": product, "quantity": -1}]}).to_string(),
            ),
            (
                "unknown product",
                json!({"lines": [{"product_id": Uuid::new_v4(), "quantity": 1}]}).to_string(),
            ),
            // Over the order service's body limit, small enough to be sent whole before the reply.
            (
                "huge body",
                format!("{{\"lines\": [], \"pad\": \"{}\"}}", "x".repeat(128 * 1024)),
            ),
        ];
        for (what, body) in cases {
            let response = post(body).send().await.expect("reply");
            let status = response.status();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert!(status.is_client_error(), "{what}: {status}");
            assert_eq!(content_type, "application/problem+json", "{what}");
        }
        let (status, orders) = c
            .send(c.request(Method::GET, "order", "/api/v1/orders", Some(&henry)))
            .await
            .expect("list");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            orders.as_array().map(Vec::len),
            Some(0),
            "nothing written: {orders}"
        );
        assert_eq!(world.stock(product).await["reserved"], 0);
    });
}

/// Offsets committed by `group` on `topic` reach the end of every partition.
async fn caught_up(bootstrap: &str, group: &str, topic: &str) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let timeout = Duration::from_secs(5);
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), timeout) else {
        return false;
    };
    let mut list = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        list.add_partition(topic, p.id());
    }
    let Ok(committed) = consumer.committed_offsets(list, timeout) else {
        return false;
    };
    committed.elements().iter().all(|e| {
        let (_, high) = consumer
            .fetch_watermarks(topic, e.partition(), timeout)
            .unwrap_or((0, i64::MAX));
        match e.offset() {
            Offset::Offset(o) => o >= high,
            _ => high == 0,
        }
    })
}

#[test]
fn every_event_delivered_twice_has_its_effect_once() {
    run(async {
        let stack = stack().await;
        let world = World::new(stack);
        let product = world.product(2500, 6).await;
        let mut orders = Vec::new();
        for prefix in ["ivy", "decline-jack", "kim"] {
            let (_, token) = world.customer(prefix);
            let id = world.place(&token, &[(product, 1)]).await;
            orders.push((token, id));
        }
        let mut before = Vec::new();
        for (token, id) in &orders {
            before.push(
                world
                    .client
                    .wait_final(token, id, FINAL)
                    .await
                    .expect("final")["state"]
                    .clone(),
            );
        }
        world.served_stock_converges(product, 4).await;
        let ids: Vec<Uuid> = orders
            .iter()
            .map(|(_, id)| id.parse().expect("uuid"))
            .collect();
        let snapshot = |stack: &'static Stack, ids: Vec<Uuid>| async move {
            let payments: i64 =
                sqlx::query_scalar("SELECT count(*) FROM payments WHERE order_id = ANY($1)")
                    .bind(&ids)
                    .fetch_one(&db(stack, "payment").await)
                    .await
                    .expect("count");
            let movements: i64 =
                sqlx::query_scalar("SELECT count(*) FROM movements WHERE product_id = $1")
                    .bind(product)
                    .fetch_one(&db(stack, "inventory").await)
                    .await
                    .expect("count");
            (payments, movements)
        };
        let counts = snapshot(stack, ids.clone()).await;

        // Deliver every event of the three topics a second time: same key, payload and headers.
        let producer: rdkafka::producer::FutureProducer = testkit::kafka::producer_config()
            .await
            .create()
            .expect("producer");
        let topics = &stack.config.topics;
        for topic in [&topics.orders, &topics.inventory, &topics.payments] {
            for message in testkit::kafka::read_all(topic).await {
                use rdkafka::Message;
                let mut record = rdkafka::producer::FutureRecord::<[u8], [u8]>::to(topic);
                if let Some(key) = message.key() {
                    record = record.key(key);
                }
                if let Some(payload) = message.payload() {
                    record = record.payload(payload);
                }
                if let Some(headers) = message.headers() {
                    record = record.headers(headers.clone());
                }
                producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .expect("redeliver");
            }
        }
        // Wait until every consumer group has processed the copies.
        let groups = [
            ("order.saga", vec![&topics.inventory, &topics.payments]),
            ("inventory.saga", vec![&topics.orders, &topics.payments]),
            ("payment.saga", vec![&topics.orders, &topics.inventory]),
            ("product.stock", vec![&topics.inventory]),
        ];
        let deadline = tokio::time::Instant::now() + FINAL;
        for (name, group_topics) in groups {
            let group = format!("{}.{name}", topics.prefix);
            for topic in group_topics {
                while !caught_up(&stack.config.kafka, &group, topic).await {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{group} did not catch up on {topic}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        assert_eq!(
            snapshot(stack, ids).await,
            counts,
            "no second charge or stock movement"
        );
        for ((token, id), state) in orders.iter().zip(before) {
            assert_eq!(
                world.client.order(token, id).await.expect("order").1["state"],
                state
            );
        }
        let stock = world.stock(product).await;
        assert_eq!(
            (stock["total"].as_i64(), stock["reserved"].as_i64()),
            (Some(4), Some(0))
        );
        world.served_stock_converges(product, 4).await;
    });
}

#[test]
fn a_service_killed_mid_batch_and_restarted_leaves_every_order_final() {
    run(async {
        let mut stack = Stack::start(&config().await).await.expect("second stack");
        let world = World::new(&stack);
        let product = world.product(300, 100).await;
        let customers: Vec<(String, String)> = (0..20).map(|_| world.customer("batch")).collect();
        let lines = [(product, 1)];
        let posts = customers
            .iter()
            .map(|(_, token)| world.place(token, &lines));
        let ids = futures::future::join_all(posts).await;
        // Kill inventory and payment while the saga is in flight, then bring them back.
        stack
            .crash_and_restart("inventory")
            .await
            .expect("inventory restarts");
        stack
            .crash_and_restart("payment")
            .await
            .expect("payment restarts");
        let world = World::new(&stack);
        let mut states = Vec::new();
        for ((_, token), id) in customers.iter().zip(&ids) {
            let order = world
                .client
                .wait_final(token, id, Duration::from_secs(120))
                .await
                .expect("every order final");
            states.push(format!("{} {}", order["state"], order["reason"]));
        }
        let confirmed = states
            .iter()
            .filter(|s| s.starts_with("\"CONFIRMED\""))
            .count();
        assert_eq!(confirmed, 20, "enough stock for all: {states:?}");
        let stock = world.stock(product).await;
        assert_eq!(
            (stock["total"].as_i64(), stock["reserved"].as_i64()),
            (Some(80), Some(0))
        );
        stack.shutdown().await;
    });
}
