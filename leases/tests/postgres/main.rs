//! The `leases` crate against a real PostgreSQL server: each test gets its own database.

mod cursor;
mod fenced;
mod groups;
mod heartbeat;
mod named;
mod plan;
mod row_leases;
mod validation;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use leases::{
    Clock, Completion, Heartbeat, Lease, LeaseKeeper, ManualClock, NamedLease, NamedLeases,
    RowLeases, Sql, TableSpec,
};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use testkit::TestDb;

const MINUTE: Duration = Duration::from_secs(60);

/// A `jobs` table with the lease columns and `rows` due rows.
async fn jobs(rows: i64) -> (TestDb, TableSpec) {
    let db = testkit::database(&[&leases::MIGRATOR]).await;
    sqlx::raw_sql(
        "CREATE TABLE jobs (
            id bigint PRIMARY KEY,
            lease_owner text,
            lease_token bigint NOT NULL DEFAULT 0,
            lease_expires_at timestamptz,
            attempts int NOT NULL DEFAULT 0,
            next_attempt_at timestamptz DEFAULT now(),
            done_at timestamptz);
         CREATE INDEX jobs_due ON jobs (next_attempt_at, id) WHERE next_attempt_at IS NOT NULL;",
    )
    .execute(&db.pool)
    .await
    .expect("create jobs");
    sqlx::query("INSERT INTO jobs (id, next_attempt_at) SELECT g, now() - interval '1 hour' FROM generate_series(1, $1) g")
        .bind(rows)
        .execute(&db.pool)
        .await
        .expect("insert jobs");
    let spec = TableSpec::builder("jobs").build().expect("valid spec");
    (db, spec)
}

/// `jobs` with finished rows kept, stamped in `done_at`.
fn kept_jobs() -> TableSpec {
    TableSpec::builder("jobs")
        .completion(Completion::Keep)
        .completed_at_column("done_at")
        .build()
        .expect("spec")
}

/// The ids `worker` claims (up to `limit`), sorted.
async fn claim_ids(worker: &RowLeases, pool: &PgPool, limit: u32) -> Vec<i64> {
    let mut ids: Vec<i64> = worker
        .claim::<i64>(pool, limit, MINUTE)
        .await
        .expect("claim")
        .into_iter()
        .map(|lease| lease.id)
        .collect();
    ids.sort_unstable();
    ids
}

async fn db_now(pool: &PgPool) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT now()")
        .fetch_one(pool)
        .await
        .expect("now")
}

/// Polls `check` until it is true, failing the test after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
