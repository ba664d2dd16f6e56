//! Batches of two partitions that update the same rows in opposite orders: without
//! [`Handler::lock_batch`] they deadlock (PostgreSQL fails one, the runner retries it); with it
//! the rows are taken up front in one order and neither batch fails. Each batch's first event
//! waits for the other partition's (up to a limit) after taking its row, so the two batches
//! always overlap.

use std::collections::HashSet;

use tokio::sync::Barrier;

use super::*;

/// Events per partition.
const EVENTS: i64 = 6;
/// How long a batch's first event waits for the other partition's.
const MEET: Duration = Duration::from_secs(2);

/// Adds one to the counter row its event names (`{"key": "a"}`), after the first event of each
/// partition has met the other's at `barrier`. With `up_front`, `lock_batch` first locks the
/// batch's rows in key order.
struct Counters {
    up_front: bool,
    barrier: Arc<Barrier>,
    met: Arc<Mutex<HashSet<i32>>>,
}

impl Handler for Counters {
    type Event = String;

    fn decode(&self, message: &Message) -> Result<String, HandlerError> {
        let payload: serde_json::Value =
            serde_json::from_slice(message.payload().unwrap_or_default())
                .map_err(HandlerError::decode)?;
        payload["key"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| HandlerError::decode("no key"))
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        key: String,
        message: &Message,
    ) -> Result<(), HandlerError> {
        sqlx::query("UPDATE counters SET n = n + 1 WHERE k = $1")
            .bind(&key)
            .execute(&mut *conn)
            .await?;
        let first = self.met.lock().expect("met").insert(message.partition());
        if first {
            let _ = tokio::time::timeout(MEET, self.barrier.wait()).await;
        }
        Ok(())
    }

    async fn lock_batch(
        &self,
        conn: &mut PgConnection,
        events: &[(String, &Message)],
    ) -> Result<(), HandlerError> {
        if self.up_front {
            let mut keys: Vec<&str> = events.iter().map(|(key, _)| key.as_str()).collect();
            keys.sort_unstable();
            keys.dedup();
            sqlx::query("SELECT k FROM counters WHERE k = ANY($1) ORDER BY k FOR UPDATE")
                .bind(&keys)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

/// Runs the two partitions' batches through a consumer whose handler locks `up_front` or not,
/// checks every event was applied once, and returns the runner's stats.
async fn run(up_front: bool) -> ConsumerStats {
    let db = testkit::database(&[&inbox::MIGRATOR]).await;
    sqlx::raw_sql(
        "CREATE TABLE counters (k text PRIMARY KEY, n bigint NOT NULL);
         INSERT INTO counters VALUES ('a', 0), ('b', 0);",
    )
    .execute(&db.pool)
    .await
    .expect("create counters");
    let (topic, dead_letters) = (
        testkit::kafka::topic(2).await,
        testkit::kafka::topic(1).await,
    );
    let producer = producer().await;
    // Partition 0 updates a, b, a, ...; partition 1 b, a, b, ...
    for n in 0..EVENTS {
        for (partition, key) in [(0, ["a", "b"]), (1, ["b", "a"])] {
            let payload = format!(r#"{{"key": "{}"}}"#, key[(n % 2) as usize]);
            let id = format!("p{partition}-{n}");
            let record = FutureRecord::to(&topic)
                .partition(partition)
                .key("k")
                .payload(&payload)
                .headers(
                    OwnedHeaders::new()
                        .insert(Header {
                            key: "event-type",
                            value: Some("Counted"),
                        })
                        .insert(Header {
                            key: "event-id",
                            value: Some(&id),
                        }),
                );
            producer
                .send(record, Duration::from_secs(10))
                .await
                .expect("delivered");
        }
    }
    let handler = Counters {
        up_front,
        barrier: Arc::new(Barrier::new(2)),
        met: Arc::default(),
    };
    let handle = Consumer::new(
        db.pool.clone(),
        config("counters", &topic, &dead_letters).await,
        handler,
    )
    .expect("consumer")
    .spawn();
    let stats = wait_for(&[&handle], "every event applied", |s| {
        s.processed == 2 * EVENTS as u64
    })
    .await;
    handle.shutdown().await;
    let counted: i64 = sqlx::query_scalar("SELECT sum(n)::bigint FROM counters")
        .fetch_one(&db.pool)
        .await
        .expect("counters");
    assert_eq!(counted, 2 * EVENTS, "every event applied once");
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_that_lock_their_shared_rows_up_front_do_not_deadlock() {
    let stats = run(true).await;
    assert_eq!(stats.retries, 0, "no batch failed: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_that_lock_shared_rows_one_event_at_a_time_deadlock_and_are_retried() {
    let stats = run(false).await;
    assert!(
        stats.retries >= 1,
        "a deadlocked batch was retried: {stats:?}"
    );
}
