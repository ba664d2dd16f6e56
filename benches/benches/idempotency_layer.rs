//! `idempotency_layer`: requests per second and p99 latency of one axum handler that inserts one
//! row, without the `idempotency` layer (its own transaction), behind it in transactional mode
//! (the key, the row and the stored response in one transaction) and behind it in lease mode
//! (a committed lease, the handler's own transaction, then the stored response), a fresh key per
//! request, measured in one run against the same PostgreSQL.
//!
//! Each variant runs at 1, 8 and 32 requests in flight, in-process (`Router::oneshot`, no HTTP
//! server), on one pool with sqlx's default options.
//!
//! Run with `eval "$(scripts/services up)"; cargo bench -p benches --bench idempotency_layer`.
//! Besides criterion's report it prints a table of the three variants, each layer's ratio to
//! the bare handler per level, and goal lines (`idempotency_layer 8: transactional ratio 0.85`;
//! the goal is 0.8 at 8 and 32 in flight).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use criterion::{BenchmarkId, Criterion, Throughput};
use idempotency::{IdempotencyLayer, KeyPolicy, PostgresStore, Tx};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tower::ServiceExt;

/// Requests in flight at once.
const CONCURRENCY: [usize; 3] = [1, 8, 32];
/// Requests per timed iteration.
const REQUESTS: usize = 1_000;
const BODY: &str = r#"{"sku":"sku-1","quantity":1}"#;

/// Per variant: requests per second of each timed iteration, and every request's latency.
#[derive(Default)]
struct Measured {
    rates: Vec<f64>,
    latencies: Vec<Duration>,
}

static RESULTS: Mutex<BTreeMap<(usize, &'static str), Measured>> = Mutex::new(BTreeMap::new());

const WITHOUT: &str = "without layer";
const TRANSACTIONAL: &str = "layer, transactional";
const LEASE: &str = "layer, lease";

/// Without the layer: the handler opens, uses and commits its own transaction.
async fn insert_alone(State(pool): State<PgPool>, body: Bytes) -> StatusCode {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO items (body) VALUES ($1)")
        .bind(body.as_ref())
        .execute(&mut *tx)
        .await
        .expect("insert");
    tx.commit().await.expect("commit");
    StatusCode::CREATED
}

/// Behind the layer: the same insert in the request's transaction, which the layer commits with
/// the stored response.
async fn insert_in_request_tx(mut tx: Tx, body: Bytes) -> StatusCode {
    sqlx::query("INSERT INTO items (body) VALUES ($1)")
        .bind(body.as_ref())
        .execute(tx.conn().await.expect("begin"))
        .await
        .expect("insert");
    StatusCode::CREATED
}

/// Sends `REQUESTS` requests, `concurrency` at a time, each with a fresh key. Returns the wall
/// time and every request's latency.
async fn run(app: &Router, keys: &AtomicU64, concurrency: usize) -> (Duration, Vec<Duration>) {
    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (app, sent) = (app.clone(), Arc::clone(&sent));
        let first_key = keys.fetch_add(REQUESTS as u64, Ordering::Relaxed);
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = sent.fetch_add(1, Ordering::Relaxed);
                if n >= REQUESTS as u64 {
                    return latencies;
                }
                let request = Request::post("/items")
                    .header("content-type", "application/json")
                    .header("idempotency-key", format!("bench-{}", first_key + n))
                    .body(Body::from(BODY))
                    .expect("request");
                let start = Instant::now();
                let response = app.clone().oneshot(request).await.expect("infallible");
                assert_eq!(response.status(), StatusCode::CREATED);
                latencies.push(start.elapsed());
            }
        });
    }
    let mut latencies = Vec::with_capacity(REQUESTS);
    while let Some(worker) = workers.join_next().await {
        latencies.extend(worker.expect("worker"));
    }
    (started.elapsed(), latencies)
}

fn idempotency_layer(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (db, pool) = runtime.block_on(async {
        let db = testkit::database(&[&idempotency::MIGRATOR]).await;
        let pool = PgPoolOptions::new()
            .max_connections(40)
            .connect_with(db.options.clone())
            .await
            .expect("pool");
        sqlx::raw_sql(
            "CREATE TABLE items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body bytea NOT NULL)",
        )
        .execute(&pool)
        .await
        .expect("create");
        (db, pool)
    });
    let without = Router::new()
        .route("/items", post(insert_alone))
        .with_state(pool.clone());
    let transactional = Router::new()
        .route("/items", post(insert_in_request_tx))
        .route_layer(
            IdempotencyLayer::transactional(PostgresStore::new(pool.clone()))
                .key_policy(KeyPolicy::Required),
        );
    let lease = Router::new()
        .route("/items", post(insert_alone))
        .route_layer(
            IdempotencyLayer::new(PostgresStore::new(pool.clone())).key_policy(KeyPolicy::Required),
        )
        .with_state(pool.clone());
    let keys = AtomicU64::new(0);

    let mut group = c.benchmark_group("idempotency_layer");
    group.sample_size(10);
    group.throughput(Throughput::Elements(REQUESTS as u64));
    for concurrency in CONCURRENCY {
        for (name, app) in [
            (WITHOUT, &without),
            (TRANSACTIONAL, &transactional),
            (LEASE, &lease),
        ] {
            group.bench_function(BenchmarkId::new(name, concurrency), |b| {
                b.to_async(&runtime).iter_custom(|iters| {
                    let keys = &keys;
                    async move {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let (elapsed, latencies) = run(app, keys, concurrency).await;
                            let mut results = RESULTS.lock().expect("results");
                            let measured = results.entry((concurrency, name)).or_default();
                            measured.rates.push(REQUESTS as f64 / elapsed.as_secs_f64());
                            measured.latencies.extend(latencies);
                            total += elapsed;
                        }
                        total
                    }
                });
            });
        }
    }
    group.finish();
    drop(pool);
    drop(db);
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn p99(latencies: &[Duration]) -> Duration {
    let mut v = latencies.to_vec();
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    idempotency_layer(&mut criterion);
    criterion.final_summary();
    let results = RESULTS.lock().expect("results");
    println!(
        "\nidempotency_layer: one insert per request, {REQUESTS} requests per iteration \
         (median req/s over iterations, p99 over all requests)"
    );
    println!(
        "{:>9} | {:<22} | {:>8} | {:>6} | {:>8} | {:>9}",
        "in flight", "variant", "req/s", "ratio", "p99 ms", "p99 ratio"
    );
    let mut goals = Vec::new();
    for concurrency in CONCURRENCY {
        let Some(bare) = results.get(&(concurrency, WITHOUT)) else {
            continue; // filtered out
        };
        let (bare_rps, bare_p99) = (median(&bare.rates), p99(&bare.latencies));
        for name in [WITHOUT, TRANSACTIONAL, LEASE] {
            let Some(measured) = results.get(&(concurrency, name)) else {
                continue;
            };
            let (rps, p99) = (median(&measured.rates), p99(&measured.latencies));
            println!(
                "{concurrency:>9} | {name:<22} | {rps:>8.0} | {:>6.2} | {:>8.2} | {:>9.2}",
                rps / bare_rps,
                p99.as_secs_f64() * 1000.0,
                p99.as_secs_f64() / bare_p99.as_secs_f64(),
            );
            if name != WITHOUT {
                goals.push((concurrency, name, rps / bare_rps));
            }
        }
    }
    // The goal is transactional mode's; lease mode's ratio follows it for comparison.
    for (concurrency, name, ratio) in goals {
        if name == TRANSACTIONAL {
            println!("idempotency_layer in flight {concurrency}: ratio {ratio:.2}");
        } else {
            let mode = name.trim_start_matches("layer, ");
            println!("idempotency_layer in flight {concurrency}, {mode} mode: ratio {ratio:.2}");
        }
    }
}
