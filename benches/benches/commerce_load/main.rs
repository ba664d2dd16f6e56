//! Load on the commerce stack with [Goose](https://book.goose.rs): all six services run in this
//! process (real PostgreSQL, Apache Kafka and Redis), and Goose's simulated customers
//! ([`shop`]) place orders through the order service's public API.
//!
//! **Steps** (the default): open-loop arrival rates of [`RATES`] orders per second, each held
//! for `--hold` seconds. Goose caps the requests per second at the rate times the requests of
//! an order ([`REQUESTS_PER_ORDER`]) and starts enough customers that the cap, not the answers,
//! sets the pace; its coordinated-omission mitigation is on, so a stall counts the requests it
//! held back. Each customer creates an order, reads it and cancels every tenth. Per step it
//! prints the offered and achieved rate, the API p50 / p95 / p99 (creates, and the worst of
//! the three request kinds), the orders settled per second and the settle time p50 / p95 /
//! p99: from sending the `POST` to the order's final state (`SHIPPED`, `CANCELLED`,
//! `FAILED`), read from the order database once the step's orders have settled; orders the
//! customer cancelled are left out of the settle time, and every other order must ship. It
//! ends with the highest rate that kept API p99 under [`API_P99_TARGET`] and settle p99 under
//! [`SETTLE_P99_TARGET`]. Goose's HTML report of each step goes to `target/goose/`.
//!
//! **`--profile seed-004`**: the design's load test, 1,000 customers started over 60 s, each
//! creating, reading and cancelling an order, then pausing 1 s, for `--run-time` seconds (600
//! by default, as in the design).
//!
//! Run: `eval "$(scripts/services up)"; cargo bench -p benches --bench commerce_load [-- --hold
//! 20 --rates 100,200 | --profile seed-004 --run-time 120]`. Under `cargo test` (no `--bench` argument) or with
//! `BENCH_SMOKE` set, it runs one step of 10 orders/s for 2 s and the seed-004 profile with two
//! customers doing one iteration: every path once, in a few seconds.

mod settle;
mod shop;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use commerce_launcher::Stack;
use commerce_launcher::client::Client;
use commerce_platform::Config;
use goose::config::GooseConfiguration;
use goose::metrics::GooseRequestMetricTimingData;
use goose::prelude::*;
use uuid::Uuid;

use settle::Settled;
use shop::{CANCEL, CREATE, READ, Shop};

/// Offered orders per second, one step each.
const RATES: [usize; 6] = [50, 100, 200, 400, 800, 1_600];
/// Requests per order in the steps: a create, a read and a tenth of a cancel.
const REQUESTS_PER_ORDER: f64 = 2.1;
/// The products ordered, in turn (one line of one unit per order), so the stock is not one row.
const PRODUCTS: usize = 8;
/// Stock of each product: far more than a full run orders, so no order fails for stock.
const STOCK: i32 = 1_000_000;
/// The API latency target of the final line (p99 of every request kind).
const API_P99_TARGET: Duration = Duration::from_millis(200);
/// The settle time target of the final line (p99).
const SETTLE_P99_TARGET: Duration = Duration::from_secs(1);

/// The benchmark's flags (after `--`).
#[derive(Parser)]
struct Args {
    /// Passed by `cargo bench`: run the full steps, not the smoke run.
    #[arg(long)]
    bench: bool,
    /// Seconds each step of the steps is held.
    #[arg(long, default_value_t = 20)]
    hold: u64,
    /// The offered rates of the steps, orders per second (default: 50 to 1,600, doubling).
    #[arg(long, value_delimiter = ',')]
    rates: Vec<usize>,
    /// `seed-004`: the design's load test instead of the steps.
    #[arg(long)]
    profile: Option<String>,
    /// Seconds the seed-004 profile runs once its customers have started.
    #[arg(long, default_value_t = 600)]
    run_time: u64,
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
    config.reservation_timeout = Duration::from_secs(3600);
    // Goose sends every request from this one address.
    config.rate_limits = commerce_platform::limits::RateLimits::off();
    Stack::start(&config).await.expect("stack")
}

/// Creates the products with their stock.
async fn products(client: &Client) -> Vec<Uuid> {
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
    products
}

/// How one Goose run goes.
struct Run {
    users: usize,
    /// Users started per second.
    increase_rate: usize,
    /// Seconds the run lasts once every user has started; `None`: one iteration per user.
    run_time: Option<u64>,
    /// The cap on requests per second (0: none).
    throttle: usize,
    /// The HTML report's file name, in `target/goose/`.
    report: String,
}

impl Run {
    fn configuration(&self, host: &str) -> GooseConfiguration {
        let reports = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/goose");
        std::fs::create_dir_all(reports).expect("target/goose");
        let mut config = GooseConfiguration::default();
        config.host = Some(host.to_owned());
        config.users = Some(self.users);
        config.increase_rate = Some(self.increase_rate.to_string());
        match self.run_time {
            Some(seconds) => config.run_time = Some(format!("{seconds}s")),
            None => config.iterations = Some(1),
        }
        config.throttle_requests = (self.throttle > 0).then_some(self.throttle);
        config.co_mitigation = Some(GooseCoordinatedOmissionMitigation::Average);
        config.report_file = vec![format!("{reports}/{}", self.report)];
        config.quiet = 1;
        config.no_print_metrics = true;
        config.no_telnet = true;
        config
    }

    /// Runs `shop`'s scenario (pausing `wait` after each iteration) and returns Goose's metrics.
    async fn execute(&self, shop: &Arc<Shop>, host: &str, wait: Option<Duration>) -> GooseMetrics {
        GooseAttack::initialize_with_config(self.configuration(host))
            .expect("goose")
            .register_scenario(shop.scenario(wait))
            .execute()
            .await
            .expect("goose run")
    }
}

/// The API side of a run, from Goose's metrics (coordinated-omission adjusted where Goose
/// backfilled).
struct Api {
    /// Requests per second, all kinds.
    rate: f64,
    /// Orders created per second.
    orders: f64,
    /// Creates: p50, p95, p99.
    create: [Duration; 3],
    /// The worst p99 of the three request kinds (an upper bound of the p99 of all requests).
    p99: Duration,
    /// Failed requests.
    failed: usize,
}

impl Api {
    fn of(metrics: &GooseMetrics) -> Self {
        let timing = |name: &str| -> Option<&GooseRequestMetricTimingData> {
            let request = metrics.requests.values().find(|r| r.path == name)?;
            Some(
                request
                    .coordinated_omission_data
                    .as_ref()
                    .unwrap_or(&request.raw_data),
            )
        };
        let at = |data: &GooseRequestMetricTimingData, q: f32| {
            Duration::from_micros(data.percentile_us(q))
        };
        let seconds = metrics.duration.max(1) as f64;
        let created = metrics
            .requests
            .values()
            .find(|r| r.path == CREATE)
            .map_or(0, |r| r.success_count);
        let create = timing(CREATE).expect("creates were made");
        let p99 = [CREATE, READ, CANCEL]
            .into_iter()
            .filter_map(timing)
            .map(|data| at(data, 0.99))
            .max()
            .unwrap_or_default();
        let requests: usize = metrics
            .requests
            .values()
            .map(|r| r.success_count + r.fail_count)
            .sum();
        Self {
            rate: requests as f64 / seconds,
            orders: created as f64 / seconds,
            create: [at(create, 0.5), at(create, 0.95), at(create, 0.99)],
            p99,
            failed: metrics.requests.values().map(|r| r.fail_count).sum(),
        }
    }
}

/// Milliseconds, right-aligned in 7 columns.
fn ms(d: Duration) -> String {
    format!("{:>7.1}", d.as_secs_f64() * 1e3)
}

/// One run of `run` over a fresh list of placed orders: its API figures and its settle times.
async fn measure(
    client: &Client,
    products: &[Uuid],
    settled: &Settled,
    run: &Run,
    cancel_every: usize,
    wait: Option<Duration>,
) -> (Api, settle::Outcome) {
    let shop = Arc::new(Shop {
        client: client.clone(),
        products: products.to_vec(),
        cancel_every,
        placed: Mutex::new(Vec::new()),
    });
    let started_at = shop::unix_now();
    let metrics = run.execute(&shop, &client.base("order"), wait).await;
    let placed = std::mem::take(&mut *shop.placed.lock().expect("placed"));
    let outcome = settled.of(&placed, started_at).await;
    (Api::of(&metrics), outcome)
}

fn main() {
    let args = Args::parse();
    let full = args.bench && std::env::var_os("BENCH_SMOKE").is_none();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let stack = stack().await;
        let client = Client::new(&stack.config);
        let products = products(&client).await;
        let settled = Settled::connect(&stack.config).await;
        match args.profile.as_deref() {
            None => {
                let (rates, hold): (&[usize], u64) = if full {
                    let rates = if args.rates.is_empty() {
                        &RATES[..]
                    } else {
                        &args.rates[..]
                    };
                    (rates, args.hold)
                } else {
                    (&[10], 2)
                };
                steps(&client, &products, &settled, rates, hold).await;
                if !full {
                    seed_004(&client, &products, &settled, false, 0).await;
                }
            }
            Some("seed-004") => seed_004(&client, &products, &settled, full, args.run_time).await,
            Some(other) => panic!("unknown profile {other:?}: the one profile is seed-004"),
        }
        stack
            .discard()
            .await
            .expect("the stack's databases dropped");
    });
}

/// The steps: one open-loop run per rate, a row each, and the final line.
async fn steps(client: &Client, products: &[Uuid], settled: &Settled, rates: &[usize], hold: u64) {
    println!(
        "commerce_load: open-loop steps held {hold} s each (Goose, coordinated-omission \
         mitigation on); per order a create, a read and 1 in 10 cancelled; settle = POST to \
         SHIPPED (customer-cancelled orders left out)"
    );
    println!(
        "{:>8} | {:>8} | {:>7} | {:^23} | {:>7} | {:>6} | {:>9} | {:^23}",
        "offered",
        "orders/s",
        "req/s",
        "create p50 p95 p99 (ms)",
        "API p99",
        "failed",
        "settled/s",
        "settle p50 p95 p99 (ms)"
    );
    let mut best = None;
    for &rate in rates {
        let throttle = (rate as f64 * REQUESTS_PER_ORDER).ceil() as usize;
        // Enough customers that each needs an answer only every 40 ms or so to offer the rate.
        let users = (throttle / 25).max(4);
        let run = Run {
            users,
            increase_rate: users,
            run_time: Some(hold),
            throttle,
            report: format!("commerce-load-{rate}.html"),
        };
        let (api, outcome) = measure(client, products, settled, &run, 10, None).await;
        let [c50, c95, c99] = api.create;
        let [s50, s95, s99] = outcome.settle;
        println!(
            "{rate:>8} | {:>8.1} | {:>7.1} | {} {} {} | {} | {:>6} | {:>9.1} | {} {} {}",
            api.orders,
            api.rate,
            ms(c50),
            ms(c95),
            ms(c99),
            ms(api.p99),
            api.failed,
            outcome.per_second,
            ms(s50),
            ms(s95),
            ms(s99)
        );
        if api.p99 < API_P99_TARGET && s99 < SETTLE_P99_TARGET && api.failed == 0 {
            best = Some(rate);
        }
    }
    let target = format!(
        "highest rate with API p99 < {} ms and settle p99 < {} s",
        API_P99_TARGET.as_millis(),
        SETTLE_P99_TARGET.as_secs()
    );
    match best {
        Some(rate) => println!("commerce: {target}: {rate} orders/s"),
        None => println!("commerce: {target}: none met it"),
    }
}

/// The design's load test: 1,000 customers started over 60 s, each creating, reading and
/// cancelling an order, then pausing 1 s, for `run_time` seconds (`full`); otherwise two
/// customers, one iteration each.
async fn seed_004(
    client: &Client,
    products: &[Uuid],
    settled: &Settled,
    full: bool,
    run_time: u64,
) {
    let run = if full {
        Run {
            users: 1_000,
            increase_rate: 1_000 / 60,
            run_time: Some(run_time),
            throttle: 0,
            report: "commerce-load-seed-004.html".to_owned(),
        }
    } else {
        Run {
            users: 2,
            increase_rate: 2,
            run_time: None,
            throttle: 0,
            report: "commerce-load-seed-004-smoke.html".to_owned(),
        }
    };
    let (api, outcome) = measure(
        client,
        products,
        settled,
        &run,
        1,
        Some(Duration::from_secs(1)),
    )
    .await;
    let [c50, c95, c99] = api.create;
    println!(
        "commerce_load seed-004: {} customers started over 60 s, then {} s; {} orders; {:.1} \
         requests/s; create p50 {} p95 {} p99 {} ms; API p99 {} ms; {} failed requests; orders \
         ended: {}",
        run.users,
        run.run_time.unwrap_or_default(),
        outcome.orders,
        api.rate,
        ms(c50).trim(),
        ms(c95).trim(),
        ms(c99).trim(),
        ms(api.p99).trim(),
        api.failed,
        outcome.states,
    );
}
