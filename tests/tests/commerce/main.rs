//! End-to-end tests of the commerce stack: all six services in this process, against the real
//! PostgreSQL, broker and Redis. One stack serves every test of this binary (its own databases and
//! topics, named by a fresh prefix); the crash test starts a second one.

mod compensation;
mod edges;
mod operations;
mod redeliver;
mod redelivery_and_crash;
mod saga;
mod shipping_and_notifications;
mod trace_context;

use redeliver::{redeliver, wait_caught_up};

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;
use std::time::Duration;

use commerce_launcher::client::Client;
use commerce_launcher::{Service, Stack};
use commerce_platform::Config;
use commerce_platform::limits::{Rate, RateLimits};
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

/// The longest any test of this binary may take: a hang fails its test, not the whole run.
const TEST_LIMIT: Duration = Duration::from_secs(600);

fn run<F: std::future::Future<Output = ()>>(test: F) {
    let _watch = testkit::exit::Watch;
    RUNTIME
        .block_on(async { tokio::time::timeout(TEST_LIMIT, test).await })
        .unwrap_or_else(|_| panic!("the test did not finish within {TEST_LIMIT:?}"));
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
    config.addrs.shipping = any;
    config.addrs.notification = any;
    // Long enough for the saga under the load of the concurrent tests, short enough to test expiry.
    config.reservation_timeout = Duration::from_secs(15);
    // The stacks of this binary share the server's 100 connections (see `small`).
    config.db_pool_size = 6;
    // The tests run at once, all from one address; one test turns the limits on.
    config.rate_limits = RateLimits::off();
    config
}

/// `config` with small database pools, for the stacks started beside the shared one: every
/// stack of this binary runs at once on one server with 100 connections (the shared stack's 6
/// services x 6, and three more of 4 to 5 services x 4, stay below it).
fn small(config: Config) -> Config {
    Config {
        db_pool_size: 4,
        ..config
    }
}

async fn stack() -> &'static Stack {
    STACK
        .get_or_init(|| async { shared(&config().await, &Service::ALL).await })
        .await
}

/// Starts `services` for the tests of this binary to share; their databases are dropped when
/// the binary exits with every test passed (a `static` stack is never dropped).
async fn shared(config: &Config, services: &[Service]) -> Stack {
    let stack = Stack::start_only(config, services)
        .await
        .expect("stack starts");
    let config = config.clone();
    testkit::exit::on_success(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(commerce_platform::setup::drop_databases(&config))
            .expect("the shared stack's databases dropped");
    });
    stack
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
