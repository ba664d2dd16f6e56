//! `lease_growth`: how `leases` claim+complete holds up as the due backlog grows and while a long
//! transaction holds back vacuum.
//!
//! Run with `eval "$(scripts/services up)"; cargo bench -p benches --bench lease_growth`.
//!
//! One worker runs a steady queue: claim a batch of 1,000 due rows, complete (delete) them, and
//! enqueue as many new due rows, so the backlog stays at its size and the deleted rows pile up
//! as dead tuples ahead of the claim, as in a real queue. The worker's `RowLeases` has a claim
//! cursor (`claim_cursor`, rescanning from the head every 10 s). Each run lasts 10 s, over a
//! backlog of 10,000, 1,000,000 and 5,000,000 rows; then, over 10,000 rows again, for 100 s while
//! another connection holds a `REPEATABLE READ` snapshot open (vacuum can remove nothing deleted
//! after it), once with the cursor and once with every claim walking from the head. It prints
//! rows/s per run (and per 10 s of the held runs) against the 10,000-row figure, with one goal
//! line per run (`lease_growth 1000000: ratio 0.95`; the goal is 0.8).
//! Under `cargo test` (no `--bench` argument) or with `BENCH_SMOKE` set it runs small and short.

use std::time::{Duration, Instant};

use leases::{Lease, RowLeases};
use sqlx::PgPool;

#[path = "shared/jobs.rs"]
mod jobs;

const BATCH: u32 = 1000;
const TTL: Duration = Duration::from_secs(60);
/// The claim cursor's rescan interval.
const RESCAN: Duration = Duration::from_secs(10);

/// The sizes of the full run, or of the smoke run.
struct Plan {
    backlogs: &'static [i64],
    run: Duration,
    held: Duration,
    slice: Duration,
}

fn plan() -> Plan {
    let full =
        std::env::args().any(|a| a == "--bench") && std::env::var_os("BENCH_SMOKE").is_none();
    if full {
        Plan {
            backlogs: &[10_000, 1_000_000, 5_000_000],
            run: Duration::from_secs(10),
            held: Duration::from_secs(100),
            slice: Duration::from_secs(10),
        }
    } else {
        Plan {
            backlogs: &[10_000, 20_000],
            run: Duration::from_millis(500),
            held: Duration::from_secs(1),
            slice: Duration::from_millis(500),
        }
    }
}

/// The queue table, emptied and filled with `backlog` due rows; returns the next free id.
async fn fill(pool: &PgPool, backlog: i64) -> i64 {
    sqlx::raw_sql("TRUNCATE jobs")
        .execute(pool)
        .await
        .expect("truncate");
    sqlx::query(
        "INSERT INTO jobs (id, next_attempt_at)
         SELECT g, now() - interval '1 hour' FROM generate_series(1, $1) g",
    )
    .bind(backlog)
    .execute(pool)
    .await
    .expect("fill");
    sqlx::raw_sql("VACUUM ANALYZE jobs")
        .execute(pool)
        .await
        .expect("vacuum");
    backlog + 1
}

/// Runs the steady queue for `length`; returns the rows completed in each `slice` of it.
async fn steady(
    pool: &PgPool,
    leases: &RowLeases,
    next_id: &mut i64,
    length: Duration,
    slice: Duration,
) -> Vec<f64> {
    let started = Instant::now();
    let mut slices = Vec::new();
    let (mut slice_started, mut slice_rows) = (Instant::now(), 0_usize);
    while started.elapsed() < length {
        let claimed: Vec<Lease<i64>> = leases.claim(pool, BATCH, TTL).await.expect("claim");
        let done = leases
            .complete_many(pool, &claimed)
            .await
            .expect("complete")
            .len();
        assert_eq!(done, claimed.len(), "every claimed row completes");
        let count = i64::try_from(done).expect("count");
        sqlx::query(
            "INSERT INTO jobs (id, next_attempt_at)
             SELECT g, now() FROM generate_series($1, $2) g",
        )
        .bind(*next_id)
        .bind(*next_id + count - 1)
        .execute(pool)
        .await
        .expect("enqueue");
        *next_id += count;
        slice_rows += done;
        if slice_started.elapsed() >= slice {
            slices.push(slice_rows as f64 / slice_started.elapsed().as_secs_f64());
            (slice_started, slice_rows) = (Instant::now(), 0);
        }
    }
    if slice_rows > 0 {
        slices.push(slice_rows as f64 / slice_started.elapsed().as_secs_f64());
    }
    slices
}

/// Runs the steady queue over `backlog` rows for the plan's held length while another connection
/// holds a snapshot open; the rows completed in each slice.
async fn held(pool: &PgPool, leases: &RowLeases, backlog: i64, plan: &Plan) -> Vec<f64> {
    let mut next_id = fill(pool, backlog).await;
    let mut holder = pool.acquire().await.expect("holder");
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM jobs;")
        .execute(&mut *holder)
        .await
        .expect("hold a snapshot");
    let slices = steady(pool, leases, &mut next_id, plan.held, plan.slice).await;
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut *holder)
        .await
        .expect("release the snapshot");
    slices
}

fn mean(rates: &[f64]) -> f64 {
    rates.iter().sum::<f64>() / rates.len() as f64
}

fn main() {
    let plan = plan();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let (db, from_head) = jobs::database().await;
        let leases = from_head.clone().claim_cursor(RESCAN);
        let mut lines = Vec::new();
        for &backlog in plan.backlogs {
            let mut next_id = fill(&db.pool, backlog).await;
            let rate = mean(&steady(&db.pool, &leases, &mut next_id, plan.run, plan.run).await);
            lines.push((
                format!("backlog {backlog}"),
                backlog.to_string(),
                rate,
                None,
            ));
        }

        // A snapshot held open: nothing deleted after it can be vacuumed away.
        let smallest = plan.backlogs[0];
        for (walk, key, worker) in [
            ("cursor", "held", &leases),
            ("from the head", "held, from the head", &from_head),
        ] {
            let slices = held(&db.pool, worker, smallest, &plan).await;
            let name = format!(
                "backlog {smallest}, snapshot held {} s, {walk}",
                plan.held.as_secs()
            );
            lines.push((name, key.to_owned(), mean(&slices), Some(slices)));
        }

        let base = lines[0].2;
        println!("\nlease_growth: claim {BATCH} + complete + enqueue {BATCH}, one worker (rows/s)");
        println!("{:<50} | {:>10} | {:>6}", "run", "rows/s", "ratio");
        for (name, _, rate, slices) in &lines {
            println!("{name:<50} | {rate:>10.0} | {:>6.2}", rate / base);
            for (i, slice) in slices.iter().flatten().enumerate() {
                let from = plan.slice.as_secs_f64() * i as f64;
                println!(
                    "{:<50} | {slice:>10.0} | {:>6.2}",
                    format!("  from {from:.1} s"),
                    slice / base
                );
            }
        }
        for (_, key, rate, _) in &lines[1..] {
            println!("lease_growth {key}: ratio {:.2}", rate / base);
        }
        drop(db);
    });
}
