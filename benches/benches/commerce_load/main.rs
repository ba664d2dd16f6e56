//! Load on the commerce stack as a ramp: steps of 1 to 128 concurrent clients (doubling) against
//! all six services running in this process (real PostgreSQL, Apache Kafka and Redis), each step
//! held for [`HOLD`]. Every client repeats [`CYCLE`]: six creates
//! (`POST /api/v1/orders` with an `Idempotency-Key`), three reads of its latest order and one
//! customer cancel of it, pausing [`THINK`] after each answer as a person at a shop does (so
//! the offered rate grows with the clients, and the settle time measures a saga, not a queue of
//! orders the saga cannot keep up with).
//!
//! Per step it prints requests and orders per second, the API latency p50 / p95 / p99 (all
//! requests, and creates alone) and the settle time p50 / p95 / p99: from sending the `POST` to
//! the order's final state without admin action (`SHIPPED`, `CANCELLED`, `FAILED`), read from the
//! order database once the step is over. Orders the customer cancelled are left out of the settle
//! time (their end is the client's choice); every other order must ship. It ends with the highest
//! order rate that kept API p99 under [`API_P99_TARGET`] and settle p99 under
//! [`SETTLE_P99_TARGET`].
//!
//! Run: `eval "$(scripts/services up)"; cargo bench -p benches --bench commerce_load`. Under
//! `cargo test` (no `--bench` argument) or with `BENCH_SMOKE` set, it runs steps of 1 and 2
//! clients doing one cycle each: every path once, in a few seconds.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use commerce_launcher::Stack;
use commerce_launcher::client::Client;
use commerce_platform::Config;
use reqwest::StatusCode;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

/// Concurrent clients per step in the full run.
const STEPS: [usize; 8] = [1, 2, 4, 8, 16, 32, 64, 128];
/// How long each step of the full run lasts (clients finish the cycle they are in).
const HOLD: Duration = Duration::from_secs(10);
/// A client's pause after each answer in the full run (none in the smoke run).
const THINK: Duration = Duration::from_millis(250);
/// The products ordered, in turn (one line of one unit per order), so the stock is not one row.
const PRODUCTS: usize = 8;
/// Stock of each product: far more than a full run orders, so no order fails for stock.
const STOCK: i32 = 1_000_000;
/// The longest the orders of a step may take to settle once the step is over.
const SETTLE_LIMIT: Duration = Duration::from_secs(300);
/// The API latency target of the final line (p99 of all requests).
const API_P99_TARGET: Duration = Duration::from_millis(200);
/// The settle time target of the final line (p99).
const SETTLE_P99_TARGET: Duration = Duration::from_secs(1);
/// The width of a latency column.
const CELL: usize = 7;
/// States an order leaves only by admin action, or never.
const FINAL_STATES: [&str; 4] = ["SHIPPED", "COMPLETED", "CANCELLED", "FAILED"];
/// The reason the order service records for a customer's cancel.
const CANCELLED_BY_CUSTOMER: &str = "cancelled by customer";

/// One request of a client's cycle.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// Place an order (one line) with a new idempotency key.
    Create,
    /// Read the client's latest order.
    Get,
    /// Cancel the client's latest order (409 when it has shipped already).
    Cancel,
}

/// What every client repeats: 60% create, 30% get, 10% cancel. It starts with a create, so get
/// and cancel always have an order; the cancel follows a create, so it usually catches the order
/// before it ships.
const CYCLE: [Op; 10] = [
    Op::Create,
    Op::Get,
    Op::Create,
    Op::Get,
    Op::Create,
    Op::Get,
    Op::Create,
    Op::Create,
    Op::Cancel,
    Op::Create,
];

/// What the benchmark needs to place orders and read their outcome.
struct Bench {
    client: Client,
    products: Vec<Uuid>,
    /// The order service's database, for the settle times.
    orders_db: PgPool,
}

/// What the clients of one step did.
#[derive(Default)]
struct StepLog {
    /// Latency of every request.
    all: Vec<Duration>,
    /// Latency of the creates.
    create: Vec<Duration>,
    /// Orders placed, with when their `POST` was sent (seconds since the Unix epoch).
    placed: Vec<(Uuid, f64)>,
}

impl StepLog {
    /// Adds another client's log to this one.
    fn merge(&mut self, other: Self) {
        self.all.extend(other.all);
        self.create.extend(other.create);
        self.placed.extend(other.placed);
    }
}

/// p50, p95 and p99 of a sample.
#[derive(Debug, Clone, Copy)]
struct Percentiles([Duration; 3]);

impl Percentiles {
    /// The percentiles of `sample` (not empty).
    fn of(mut sample: Vec<Duration>) -> Self {
        sample.sort();
        let at = |q: f64| sample[((sample.len() as f64 * q) as usize).min(sample.len() - 1)];
        Self([at(0.5), at(0.95), at(0.99)])
    }

    /// The 99th percentile.
    fn p99(self) -> Duration {
        self.0[2]
    }

    /// The three, in milliseconds, each right-aligned in [`CELL`] columns.
    fn cells(self) -> String {
        self.0
            .iter()
            .map(|d| format!("{:>CELL$.1}", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Now, in seconds since the Unix epoch (the clock PostgreSQL's `now()` reads too).
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Starts the six services on free ports, with their own databases and topics.
async fn stack() -> Stack {
    let mut config = Config::from_env().expect("config");
    let prefix = format!("bench_{}", &Uuid::new_v4().simple().to_string()[..8]);
    config.db_prefix = prefix.clone();
    config.topics = commerce_events::Topics::new(&prefix);
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    (
        config.addrs.order,
        config.addrs.inventory,
        config.addrs.payment,
        config.addrs.product,
        config.addrs.shipping,
        config.addrs.notification,
    ) = (any, any, any, any, any, any);
    // Longer than any step takes to settle, so no reservation expires for want of payment.
    config.reservation_timeout_secs = 3600;
    Stack::start(&config).await.expect("stack")
}

impl Bench {
    /// Creates the products with their stock and connects to the order database.
    async fn new(config: &Config) -> Self {
        let client = Client::new(config);
        let admin = client.token("admin", &["admin"]);
        let mut products = Vec::with_capacity(PRODUCTS);
        for n in 0..PRODUCTS {
            let sku = format!("LOAD-{n}-{}", Uuid::new_v4().simple());
            let product = client
                .create_product(&admin, &sku, "Load", 100)
                .await
                .expect("product");
            client
                .add_stock(&admin, product, STOCK)
                .await
                .expect("stock");
            products.push(product);
        }
        let options: PgConnectOptions = config.database_url.parse().expect("DATABASE_URL");
        let orders_db = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.database(&format!("{}_order", config.db_prefix)))
            .await
            .expect("order database");
        Self {
            client,
            products,
            orders_db,
        }
    }

    /// One client: repeats [`CYCLE`] with its own customer token until `hold` has passed (at
    /// least once), checking every answer.
    async fn run_client(&self, hold: Duration, think: Duration) -> StepLog {
        let customer = format!("load-{}", Uuid::new_v4().simple());
        let token = self.client.token(&customer, &["customer"]);
        let start = Instant::now();
        let mut log = StepLog::default();
        let mut latest: Option<String> = None;
        loop {
            for op in CYCLE {
                let sent = Instant::now();
                match op {
                    Op::Create => {
                        let product = self.products[log.placed.len() % self.products.len()];
                        let key = Uuid::new_v4().to_string();
                        let sent_at = unix_now();
                        let (status, order) = self
                            .client
                            .place_order(&token, &key, &[(product, 1)])
                            .await
                            .expect("create");
                        log.create.push(sent.elapsed());
                        assert_eq!(status, StatusCode::CREATED, "create: {order}");
                        let id = order["id"].as_str().expect("order id");
                        log.placed.push((id.parse().expect("uuid"), sent_at));
                        latest = Some(id.to_owned());
                    }
                    Op::Get => {
                        let id = latest.as_deref().expect("the cycle starts with a create");
                        let (status, order) = self.client.order(&token, id).await.expect("get");
                        assert_eq!(status, StatusCode::OK, "get: {order}");
                    }
                    Op::Cancel => {
                        let id = latest.as_deref().expect("the cycle starts with a create");
                        let (status, order) =
                            self.client.cancel_order(&token, id).await.expect("cancel");
                        assert!(
                            matches!(status, StatusCode::OK | StatusCode::CONFLICT),
                            "cancel: {status} {order}"
                        );
                    }
                }
                log.all.push(sent.elapsed());
                tokio::time::sleep(think).await;
            }
            if start.elapsed() >= hold {
                return log;
            }
        }
    }

    /// Waits until every order of `placed` is in a final state and returns the settle times of
    /// those the customer did not cancel (from sending the `POST` to the order's last change),
    /// with when the last order settled (seconds since the Unix epoch). Panics if one does not
    /// settle within [`SETTLE_LIMIT`] or settles otherwise than shipped.
    async fn settle_times(&self, placed: &[(Uuid, f64)]) -> (Vec<Duration>, f64) {
        let ids: Vec<Uuid> = placed.iter().map(|(id, _)| *id).collect();
        let deadline = Instant::now() + SETTLE_LIMIT;
        let rows = loop {
            let rows: Vec<(Uuid, String, Option<String>, f64)> = sqlx::query_as(
                "SELECT id, state, reason, extract(epoch FROM updated_at)::float8
                 FROM orders_all WHERE id = ANY($1)",
            )
            .bind(&ids)
            .fetch_all(&self.orders_db)
            .await
            .expect("read orders");
            let settled = rows
                .iter()
                .filter(|(_, state, _, _)| FINAL_STATES.contains(&state.as_str()))
                .count();
            if settled == ids.len() {
                break rows;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} orders not settled after {SETTLE_LIMIT:?}",
                ids.len() - settled,
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let last = rows.iter().map(|row| row.3).fold(0.0, f64::max);
        let sent: HashMap<Uuid, f64> = placed.iter().copied().collect();
        let times = rows
            .into_iter()
            .filter(|(_, _, reason, _)| reason.as_deref() != Some(CANCELLED_BY_CUSTOMER))
            .map(|(id, state, reason, settled_at)| {
                assert_eq!(state, "SHIPPED", "order {id} settled {state}: {reason:?}");
                Duration::from_secs_f64((settled_at - sent[&id]).max(0.0))
            })
            .collect();
        (times, last)
    }

    /// Runs `clients` clients for `hold`, waits for their orders to settle, prints the step's
    /// row (settled/s: the step's orders over the time from its start until the last settled)
    /// and returns its order rate with the latency percentiles of all requests and of the
    /// settle times.
    async fn step(
        &self,
        clients: usize,
        hold: Duration,
        think: Duration,
    ) -> (f64, Percentiles, Percentiles) {
        let (start, started_at) = (Instant::now(), unix_now());
        let logs =
            futures::future::join_all((0..clients).map(|_| self.run_client(hold, think))).await;
        let elapsed = start.elapsed().as_secs_f64();
        let mut log = StepLog::default();
        for client_log in logs {
            log.merge(client_log);
        }
        let (settle, last_settled) = self.settle_times(&log.placed).await;
        let (requests, orders) = (log.all.len(), log.placed.len());
        // Every client runs at least one cycle, so every sample has values.
        let (all, create) = (Percentiles::of(log.all), Percentiles::of(log.create));
        let settle = Percentiles::of(settle);
        let rate = orders as f64 / elapsed;
        println!(
            "{clients:>7} | {:>7.1} | {rate:>8.1} | {:>9.1} | {} | {} | {}",
            requests as f64 / elapsed,
            orders as f64 / (last_settled - started_at),
            all.cells(),
            create.cells(),
            settle.cells(),
        );
        (rate, all, settle)
    }
}

/// Prints what the run does and the table's header (`hold` zero: one cycle per client).
fn print_header(hold: Duration, think: Duration) {
    let held = if hold.is_zero() {
        "one cycle per client".to_owned()
    } else {
        format!("each step held {} s", hold.as_secs())
    };
    println!(
        "commerce_load: ramp, {held}; per client 60% create / 30% get / 10% cancel, {} ms \
         pause after each answer; settle = POST to SHIPPED (customer-cancelled orders left out)",
        think.as_millis()
    );
    let group = |name: &str| format!("{:^w$}", format!("{name} (ms)"), w = 3 * CELL + 2);
    println!(
        "{:7} | {:7} | {:8} | {:9} | {} | {} | {}",
        "",
        "",
        "",
        "",
        group("API, all"),
        group("create"),
        group("settle")
    );
    let quantiles = format!("{:>CELL$} {:>CELL$} {:>CELL$}", "p50", "p95", "p99");
    println!(
        "{:>7} | {:>7} | {:>8} | {:>9} | {quantiles} | {quantiles} | {quantiles}",
        "clients", "req/s", "orders/s", "settled/s"
    );
}

fn main() {
    let full =
        std::env::args().any(|a| a == "--bench") && std::env::var_os("BENCH_SMOKE").is_none();
    let (steps, hold, think): (&[usize], Duration, Duration) = if full {
        (&STEPS, HOLD, THINK)
    } else {
        (&[1, 2], Duration::ZERO, Duration::ZERO)
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let stack = stack().await;
        let bench = Bench::new(&stack.config).await;
        print_header(hold, think);
        let mut best: Option<(f64, usize)> = None;
        for &clients in steps {
            let (rate, all, settle) = bench.step(clients, hold, think).await;
            let met = all.p99() < API_P99_TARGET && settle.p99() < SETTLE_P99_TARGET;
            if met && best.is_none_or(|(best_rate, _)| rate > best_rate) {
                best = Some((rate, clients));
            }
        }
        let target = format!(
            "highest rate with API p99 < {} ms and settle p99 < {} s",
            API_P99_TARGET.as_millis(),
            SETTLE_P99_TARGET.as_secs()
        );
        match best {
            Some((rate, clients)) => {
                println!("commerce_load: {target}: {rate:.1} orders/s (at {clients} clients)")
            }
            None => println!("commerce_load: {target}: none met it"),
        }
        stack
            .discard()
            .await
            .expect("the stack's databases dropped");
    });
}
