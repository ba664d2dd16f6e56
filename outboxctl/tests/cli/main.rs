//! `outboxctl` run as a process against real PostgreSQL (a fresh database per test) and Kafka.

mod dead_letters;
mod purge;
mod status;

use std::process::Command;
use std::time::Duration;

use outbox::{Backoff, Event, NewEvent, PublishError, Publisher, Relay, RelayConfig};
use serde_json::Value;
use sqlx::PgPool;
use testkit::TestDb;

/// A database with the outbox's, the idempotency crate's and the inbox crate's migrations.
async fn full_db() -> TestDb {
    testkit::database(&[&outbox::MIGRATOR, &idempotency::MIGRATOR, &inbox::MIGRATOR]).await
}

/// The URL of `db`: the server's URL with the test database's name.
async fn url_of(db: &TestDb) -> String {
    let server = testkit::postgres::database_url().await;
    let name = db.options.get_database().expect("a database name");
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (server.as_str(), String::new()),
    };
    let (scheme, rest) = base.split_once("://").expect("a URL");
    let host = rest.split_once('/').map_or(rest, |(host, _)| host);
    format!("{scheme}://{host}/{name}{query}")
}

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `outboxctl args` with `DATABASE_URL=url`.
fn ctl(url: &str, args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_outboxctl"))
        .args(args)
        .env("DATABASE_URL", url)
        .output()
        .expect("run outboxctl");
    Run {
        code: output.status.code().expect("an exit code"),
        stdout: String::from_utf8(output.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("UTF-8 stderr"),
    }
}

/// Runs `outboxctl --json args`, expects success and returns the document.
fn ctl_json(url: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let run = ctl(url, &all);
    assert_eq!(run.code, 0, "{args:?} failed: {run:?}");
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {run:?}"))
}

/// Runs `outboxctl args`, expects success and returns stdout.
fn ctl_ok(url: &str, args: &[&str]) -> String {
    let run = ctl(url, args);
    assert_eq!(run.code, 0, "{args:?} failed: {run:?}");
    run.stdout
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// Rejects every event: permanently, or retriably (until attempts run out) for aggregates whose
/// id starts with `flaky`.
struct Rejecting;

impl Publisher for Rejecting {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        if event.aggregate_id.starts_with("flaky") {
            Err(PublishError::retriable("injected: broker timed out"))
        } else {
            Err(PublishError::permanent(
                "injected: message rejected as invalid",
            ))
        }
    }
}

/// Enqueues `events` and runs a real relay whose publisher rejects them all until every one is
/// dead-lettered (`permanent publish failure`, or `attempts exhausted (2)` for `flaky…` ids).
async fn bury(db: &TestDb, events: &[NewEvent]) {
    let mut tx = db.pool.begin().await.expect("begin");
    outbox::enqueue_many(&mut tx, events)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    let backoff =
        Backoff::new(Duration::from_millis(5), Duration::from_millis(20), 2).expect("backoff");
    let relay = Relay::new(
        db.pool.clone(),
        Rejecting,
        RelayConfig::default().backoff(backoff),
    )
    .expect("relay");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while count(&db.pool, "SELECT count(*) FROM outbox_events").await > 0 {
        relay.run_once().await.expect("batch");
        assert!(
            tokio::time::Instant::now() < deadline,
            "events not dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn ids(document: &Value, field: &str) -> Vec<String> {
    document[field]
        .as_array()
        .expect("an array")
        .iter()
        .map(|d| d["id"].as_str().expect("an id").to_owned())
        .collect()
}
