//! `claim_complete`: rows per second of claiming then completing 100,000 due rows, with the
//! `leases` crate and with the same cycle in hand-written SQL, measured in one run.
//!
//! Run with `eval "$(scripts/services up)"; cargo bench -p benches --bench claim_complete`.
//! Besides criterion's report it prints a table of both rates and their ratio, and one goal line
//! per batch size (`claim_complete batch 1000: ratio 0.93`). Under `cargo test` (no `--bench`
//! argument) or with `BENCH_SMOKE` set, it runs once over 2,000 rows: every path, in a moment.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use leases::{Lease, RowLeases};
use sqlx::PgPool;

#[path = "shared/jobs.rs"]
mod jobs;

/// Due rows per measured cycle: 100,000, or 2,000 in the smoke run.
static ROWS: std::sync::LazyLock<i64> = std::sync::LazyLock::new(|| {
    let full =
        std::env::args().any(|a| a == "--bench") && std::env::var_os("BENCH_SMOKE").is_none();
    if full { 100_000 } else { 2_000 }
});
const TTL: Duration = Duration::from_secs(60);

/// Rows per second of every timed iteration, by (implementation, batch size).
static RATES: Mutex<BTreeMap<(usize, &'static str), Vec<f64>>> = Mutex::new(BTreeMap::new());

async fn reset(pool: &PgPool) {
    sqlx::raw_sql("TRUNCATE jobs")
        .execute(pool)
        .await
        .expect("truncate");
    sqlx::query("INSERT INTO jobs (id, next_attempt_at) SELECT g, now() - interval '1 hour' FROM generate_series(1, $1) g")
        .bind(*ROWS)
        .execute(pool)
        .await
        .expect("insert");
    sqlx::raw_sql("VACUUM ANALYZE jobs")
        .execute(pool)
        .await
        .expect("analyze");
}

/// Claims and completes every row with the crate; returns how many rows were processed.
async fn with_crate(pool: &PgPool, leases: &RowLeases, batch: u32) -> usize {
    let mut done = 0;
    loop {
        let claimed: Vec<Lease<i64>> = leases.claim(pool, batch, TTL).await.expect("claim");
        if claimed.is_empty() {
            return done;
        }
        done += leases
            .complete_many(pool, &claimed)
            .await
            .expect("complete")
            .len();
    }
}

/// The same cycle as a developer would write it by hand: claim with `FOR UPDATE SKIP LOCKED`,
/// complete by an id array.
async fn by_hand(pool: &PgPool, batch: u32) -> usize {
    let mut done = 0;
    loop {
        let ids: Vec<i64> = sqlx::query_scalar(
            "WITH due AS (
                SELECT id FROM jobs
                WHERE next_attempt_at <= now() AND (lease_expires_at IS NULL OR lease_expires_at <= now())
                ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED)
             UPDATE jobs t SET lease_owner = $2, lease_token = t.lease_token + 1, attempts = t.attempts + 1,
                 lease_expires_at = now() + interval '60 seconds'
             FROM due WHERE t.id = due.id RETURNING t.id",
        )
        .bind(i64::from(batch))
        .bind("bench")
        .fetch_all(pool)
        .await
        .expect("claim");
        if ids.is_empty() {
            return done;
        }
        let deleted = sqlx::query("DELETE FROM jobs WHERE id = ANY($1) AND lease_owner = $2")
            .bind(&ids)
            .bind("bench")
            .execute(pool)
            .await
            .expect("complete");
        done += usize::try_from(deleted.rows_affected()).expect("count");
    }
}

fn claim_complete(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (db, leases) = runtime.block_on(jobs::database());

    let mut group = c.benchmark_group("claim_complete");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(30));
    group.throughput(Throughput::Elements(*ROWS as u64));
    for batch in [100_u32, 1000] {
        for name in ["leases", "hand-written"] {
            group.bench_function(BenchmarkId::new(name, batch), |b| {
                b.to_async(&runtime).iter_custom(|iters| {
                    let (pool, leases) = (db.pool.clone(), leases.clone());
                    async move {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            reset(&pool).await;
                            let start = Instant::now();
                            let done = match name {
                                "leases" => with_crate(&pool, &leases, batch).await,
                                _ => by_hand(&pool, batch).await,
                            };
                            let elapsed = start.elapsed();
                            assert_eq!(done, *ROWS as usize);
                            RATES
                                .lock()
                                .expect("rates")
                                .entry((batch as usize, name))
                                .or_default()
                                .push(*ROWS as f64 / elapsed.as_secs_f64());
                            total += elapsed;
                        }
                        total
                    }
                });
            });
        }
    }
    group.finish();
    drop(db);
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    claim_complete(&mut criterion);
    criterion.final_summary();
    let rates = RATES.lock().expect("rates");
    let rows = *ROWS;
    println!("\nclaim_complete, {rows} rows (median rows/s over all timed iterations)");
    println!(
        "{:>6} | {:>14} | {:>14} | {:>6}",
        "batch", "leases", "hand-written", "ratio"
    );
    let mut ratios = Vec::new();
    for batch in [100, 1000] {
        if let (Some(ours), Some(hand)) = (
            rates.get(&(batch, "leases")),
            rates.get(&(batch, "hand-written")),
        ) {
            let (ours, hand) = (median(ours), median(hand));
            println!(
                "{batch:>6} | {ours:>14.0} | {hand:>14.0} | {:>6.2}",
                ours / hand
            );
            ratios.push((batch, ours / hand));
        }
    }
    for (batch, ratio) in ratios {
        println!("claim_complete batch {batch}: ratio {ratio:.2}");
    }
}
