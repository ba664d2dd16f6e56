//! Load on the commerce stack: concurrent `POST /api/v1/orders` at increasing concurrency against
//! all six services running in this process (real PostgreSQL, broker and Redis). Prints orders per
//! second accepted, p50 / p95 / p99 latency, and how long until every saga has settled.
//!
//! Run: `eval "$(scripts/services up)"; cargo bench -p benches --bench commerce_load`. Under
//! `cargo test` (no `--bench` argument) it runs a small smoke version.

use std::time::{Duration, Instant};

use commerce_launcher::Stack;
use commerce_launcher::client::Client;
use commerce_platform::Config;
use uuid::Uuid;

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

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
    config.reservation_timeout_secs = 300;
    Stack::start(&config).await.expect("stack")
}

fn main() {
    let full =
        std::env::args().any(|a| a == "--bench") && std::env::var_os("BENCH_SMOKE").is_none();
    let (levels, per_level): (&[usize], usize) = if full {
        (&[1, 8, 32], 200)
    } else {
        (&[1, 4], 8)
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let stack = stack().await;
        let client = Client::new(&stack.config);
        let admin = client.token("admin", &["admin"]);
        let product = client
            .create_product(
                &admin,
                &format!("LOAD-{}", Uuid::new_v4().simple()),
                "Load",
                100,
            )
            .await
            .expect("product");
        client
            .add_stock(&admin, product, 1_000_000)
            .await
            .expect("stock");
        println!("commerce load: {per_level} orders per level, one line each, all approved");
        println!(
            "{:>11} | {:>9} | {:>8} | {:>8} | {:>8} | {:>10}",
            "concurrency", "orders/s", "p50 ms", "p95 ms", "p99 ms", "settled s"
        );
        let mut best = None;
        for &concurrency in levels {
            let start = Instant::now();
            let workers = (0..concurrency).map(|w| {
                let client = client.clone();
                let token = client.token(
                    &format!("load-{w}-{}", Uuid::new_v4().simple()),
                    &["customer"],
                );
                let count = per_level / concurrency + usize::from(w < per_level % concurrency);
                async move {
                    let mut results = Vec::with_capacity(count);
                    for _ in 0..count {
                        let key = Uuid::new_v4().to_string();
                        let sent = Instant::now();
                        let (status, order) = client
                            .place_order(&token, &key, &[(product, 1)])
                            .await
                            .expect("post");
                        assert_eq!(status, reqwest::StatusCode::CREATED, "{order}");
                        results
                            .push((sent.elapsed(), order["id"].as_str().expect("id").to_owned()));
                    }
                    (token, results)
                }
            });
            let done = futures::future::join_all(workers).await;
            let accepted = start.elapsed();
            for (token, results) in &done {
                for (_, id) in results {
                    client
                        .wait_settled(token, id, Duration::from_secs(600))
                        .await
                        .expect("settles");
                }
            }
            let settled = start.elapsed();
            let mut latencies: Vec<Duration> = done
                .iter()
                .flat_map(|(_, r)| r.iter().map(|(d, _)| *d))
                .collect();
            latencies.sort();
            let rate = per_level as f64 / accepted.as_secs_f64();
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            let (p50, p95, p99) = (
                percentile(&latencies, 0.5),
                percentile(&latencies, 0.95),
                percentile(&latencies, 0.99),
            );
            println!(
                "{concurrency:>11} | {rate:>9.1} | {:>8.1} | {:>8.1} | {:>8.1} | {:>10.1}",
                ms(p50),
                ms(p95),
                ms(p99),
                settled.as_secs_f64()
            );
            if p99 < Duration::from_millis(200) {
                best = Some((concurrency, rate));
            }
        }
        match best {
            Some((concurrency, rate)) => println!(
                "highest rate with p99 < 200 ms: {rate:.1} orders/s (concurrency {concurrency})"
            ),
            None => println!("no level kept p99 under 200 ms"),
        }
        stack.shutdown().await;
    });
}
