//! `status`.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::*;

/// Holds every publish until the test adds permits, then publishes nothing (succeeds).
struct Gate(Arc<Semaphore>);

impl Publisher for Gate {
    async fn publish(&self, _event: &Event) -> Result<(), PublishError> {
        let _permit = self.0.acquire().await.expect("gate");
        Ok(())
    }
}

/// Fails every publish with a retriable error.
struct Down;

impl Publisher for Down {
    async fn publish(&self, _event: &Event) -> Result<(), PublishError> {
        Err(PublishError::retriable("injected: broker unavailable"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_pending_retries_leases_and_dead_letters() {
    let db = full_db().await;
    let url = url_of(&db).await;
    bury(
        &db,
        &[
            NewEvent::bytes("orders", "order", "poison-1", "OrderPlaced", vec![1]),
            NewEvent::bytes("orders", "order", "poison-2", "OrderPlaced", vec![2]),
            NewEvent::bytes("payments", "payment", "flaky-1", "PaymentTaken", vec![3]),
        ],
    )
    .await;

    let empty = ctl_json(&url, &["status"]);
    assert_eq!(empty["outbox"]["pending"], 0);
    assert_eq!(empty["outbox"]["oldest_pending_age_seconds"], Value::Null);
    assert_eq!(empty["outbox"]["leases"], serde_json::json!([]));

    // One event fails once and waits for a retry far in the future.
    let retry = NewEvent::bytes("orders", "order", "retry-1", "OrderPlaced", vec![4]);
    let mut tx = db.pool.begin().await.expect("begin");
    outbox::enqueue(&mut tx, &retry).await.expect("enqueue");
    tx.commit().await.expect("commit");
    let year = Duration::from_secs(365 * 86_400);
    let relay = Relay::new(
        db.pool.clone(),
        Down,
        RelayConfig::default().backoff(Backoff::new(year, year, 10).expect("backoff")),
    )
    .expect("relay");
    assert_eq!(relay.run_once().await.expect("batch").claimed, 1);

    // Three events are claimed by relay-a and held while their publish hangs.
    let mut tx = db.pool.begin().await.expect("begin");
    let held: Vec<NewEvent> = (0..3)
        .map(|i| {
            NewEvent::bytes(
                "orders",
                "order",
                format!("held-{i}"),
                "OrderPlaced",
                vec![5],
            )
        })
        .collect();
    outbox::enqueue_many(&mut tx, &held).await.expect("enqueue");
    tx.commit().await.expect("commit");
    let gate = Arc::new(Semaphore::new(0));
    let relay = Relay::new(
        db.pool.clone(),
        Gate(Arc::clone(&gate)),
        RelayConfig::default().owner("relay-a"),
    )
    .expect("relay");
    let batch = tokio::spawn(async move { relay.run_once().await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = ctl_json(&url, &["status"]);
        if status["outbox"]["leases"][0]["events"] == 3 {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leases: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let outbox = &status["outbox"];
    assert_eq!(outbox["pending"], 4);
    assert!(outbox["oldest_pending_age_seconds"].as_f64().expect("age") >= 0.0);
    assert_eq!(outbox["oldest_pending"]["id"], retry.id.to_string());
    assert_eq!(outbox["oldest_pending"]["attempts"], 1);
    assert_eq!(
        outbox["oldest_pending"]["last_error"],
        "injected: broker unavailable"
    );
    assert_eq!(outbox["waiting_for_retry"], 1);
    assert_eq!(outbox["leases"].as_array().expect("leases").len(), 1);
    assert_eq!(outbox["leases"][0]["owner"], "relay-a");
    assert!(
        outbox["leases"][0]["expires_in_seconds"]
            .as_f64()
            .expect("ttl")
            > 0.0
    );
    assert_eq!(
        status["dead_letters"],
        serde_json::json!([
            {"topic": "orders", "reason": "permanent publish failure", "count": 2,
             "oldest": status["dead_letters"][0]["oldest"], "newest": status["dead_letters"][0]["newest"]},
            {"topic": "payments", "reason": "attempts exhausted (2)", "count": 1,
             "oldest": status["dead_letters"][1]["oldest"], "newest": status["dead_letters"][1]["newest"]},
        ])
    );
    assert_eq!(status["inbox"]["rows"], 0);
    assert_eq!(status["idempotency_keys"]["rows"], 0);

    let human = ctl_ok(&url, &["status"]);
    for expected in [
        "OUTBOX",
        "pending",
        "waiting for retry",
        &retry.id.to_string(),
        "IN-FLIGHT LEASES",
        "relay-a",
        "DEAD LETTERS",
        "attempts exhausted (2)",
        "INBOX",
        "IDEMPOTENCY",
    ] {
        assert!(human.contains(expected), "{expected} missing in\n{human}");
    }
    let lease_line = human
        .lines()
        .find(|l| l.starts_with("relay-a"))
        .expect("lease row");
    assert!(
        lease_line.split_whitespace().nth(1) == Some("3"),
        "{lease_line}"
    );

    gate.add_permits(3);
    let outcome = batch.await.expect("join").expect("batch");
    assert_eq!(outcome.claimed, 3);
    let after = ctl_json(&url, &["status"]);
    assert_eq!(after["outbox"]["leases"], serde_json::json!([]));
    assert_eq!(after["outbox"]["pending"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_skips_tables_that_do_not_exist() {
    let db = testkit::database(&[&outbox::MIGRATOR]).await;
    let url = url_of(&db).await;
    let status = ctl_json(&url, &["status"]);
    assert_eq!(status["outbox"]["pending"], 0);
    assert_eq!(status["dead_letters"], serde_json::json!([]));
    assert_eq!(status["inbox"], Value::Null);
    assert_eq!(status["idempotency_keys"], Value::Null);
    let human = ctl_ok(&url, &["status"]);
    assert!(!human.contains("INBOX"), "{human}");
    assert!(!human.contains("IDEMPOTENCY"), "{human}");

    let bare = testkit::database(&[]).await;
    let bare_url = url_of(&bare).await;
    let status = ctl_json(&bare_url, &["status"]);
    assert_eq!(status["outbox"], Value::Null);
    assert_eq!(status["dead_letters"], Value::Null);
    let human = ctl_ok(&bare_url, &["status"]);
    assert!(human.contains("skipped"), "{human}");
    // Commands that need a missing table fail with a message, as runtime errors.
    let run = ctl(&bare_url, &["dead-letters", "list"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("outbox_dead_letters does not exist"),
        "{run:?}"
    );
}

#[tokio::test]
async fn an_unreachable_database_is_a_runtime_error() {
    let run = ctl(
        "postgres://postgres@127.0.0.1:1/none?connect_timeout=2",
        &["status"],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("connecting to the database"), "{run:?}");
}

#[test]
fn no_database_url_is_a_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_outboxctl"))
        .arg("status")
        .env_remove("DATABASE_URL")
        .output()
        .expect("run outboxctl");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("DATABASE_URL"));
}
