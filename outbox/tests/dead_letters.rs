//! The dead-letter API's filters, lookup and bulk operations, against real PostgreSQL, with dead
//! letters made by a real relay whose publisher rejects events.

use std::time::Duration;

use chrono::Utc;
use outbox::dead_letters::{self, Filter};
use outbox::{Backoff, Event, NewEvent, PublishError, Publisher, Relay, RelayConfig};
use sqlx::PgPool;
use testkit::TestDb;
use uuid::Uuid;

/// Rejects every event: retriably for aggregates whose id starts with `flaky` (so they run out of
/// attempts), permanently otherwise.
struct Rejecting;

impl Publisher for Rejecting {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        if event.aggregate_id.starts_with("flaky") {
            Err(PublishError::retriable("injected: broker timed out"))
        } else {
            Err(PublishError::permanent("injected: rejected"))
        }
    }
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// Dead letters, oldest first: order:a on `orders` (permanent), order:b on `orders` (permanent),
/// payment:flaky on `payments` (attempts exhausted).
async fn dead(db: &TestDb) -> [NewEvent; 3] {
    let events = [
        NewEvent::bytes("orders", "order", "a", "OrderPlaced", b"a".to_vec())
            .header("trace", "t-1")
            .dedup_key("req-1"),
        NewEvent::bytes("orders", "order", "b", "OrderPlaced", b"b".to_vec()),
        NewEvent::bytes(
            "payments",
            "payment",
            "flaky",
            "PaymentTaken",
            b"c".to_vec(),
        ),
    ];
    // One at a time, so `dead_at` follows the array's order.
    for event in &events {
        let mut tx = db.pool.begin().await.expect("begin");
        outbox::enqueue(&mut tx, event).await.expect("enqueue");
        tx.commit().await.expect("commit");
        let backoff =
            Backoff::new(Duration::from_millis(5), Duration::from_millis(10), 2).expect("backoff");
        let relay = Relay::new(
            db.pool.clone(),
            Rejecting,
            RelayConfig::default().backoff(backoff),
        )
        .expect("relay");
        while count(&db.pool, "SELECT count(*) FROM outbox_events").await > 0 {
            relay.run_once().await.expect("batch");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    events
}

fn ids(letters: &[dead_letters::DeadLetter]) -> Vec<Uuid> {
    letters.iter().map(|d| d.id).collect()
}

#[tokio::test]
async fn filters_select_by_topic_aggregate_reason_and_time() {
    let db = testkit::database(&[&outbox::MIGRATOR]).await;
    let [a, b, flaky] = dead(&db).await;
    let matching = |filter: Filter| {
        let pool = db.pool.clone();
        async move {
            let listed = dead_letters::list_matching(&pool, &filter, 100)
                .await
                .expect("list");
            let counted = dead_letters::count_matching(&pool, &filter)
                .await
                .expect("count");
            assert_eq!(counted, listed.len() as u64, "{filter:?}");
            ids(&listed)
        }
    };

    assert!(Filter::new().is_empty());
    assert_eq!(matching(Filter::new()).await, [a.id, b.id, flaky.id]);
    assert_eq!(matching(Filter::new().topic("orders")).await, [a.id, b.id]);
    assert_eq!(
        matching(Filter::new().aggregate("order", "b")).await,
        [b.id]
    );
    assert_eq!(
        matching(Filter::new().aggregate("payment", "b")).await,
        Vec::<Uuid>::new()
    );
    assert_eq!(
        matching(Filter::new().aggregate_type("payment")).await,
        [flaky.id]
    );
    assert_eq!(matching(Filter::new().aggregate_id("a")).await, [a.id]);
    assert_eq!(
        matching(Filter::new().reason_contains("EXHAUSTED")).await,
        [flaky.id]
    );
    assert_eq!(
        matching(Filter::new().reason_contains("permanent").topic("payments")).await,
        Vec::<Uuid>::new()
    );
    let hour = chrono::Duration::hours(1);
    assert_eq!(
        matching(Filter::new().since(Utc::now() - hour)).await.len(),
        3
    );
    assert_eq!(
        matching(Filter::new().until(Utc::now() - hour)).await,
        Vec::<Uuid>::new()
    );
    // `since` is inclusive and `until` exclusive, on `dead_at`.
    let b_dead: chrono::DateTime<Utc> =
        sqlx::query_scalar("SELECT dead_at FROM outbox_dead_letters WHERE id = $1")
            .bind(b.id)
            .fetch_one(&db.pool)
            .await
            .expect("dead_at");
    assert_eq!(
        matching(Filter::new().since(b_dead)).await,
        [b.id, flaky.id]
    );
    assert_eq!(matching(Filter::new().until(b_dead)).await, [a.id]);

    let limited = dead_letters::list_matching(&db.pool, &Filter::new().topic("orders"), 1)
        .await
        .expect("list");
    assert_eq!(ids(&limited), [a.id]);
    // The filterless listing is unchanged.
    assert_eq!(
        ids(&dead_letters::list(&db.pool, 10).await.expect("list")),
        [a.id, b.id, flaky.id]
    );
}

#[tokio::test]
async fn get_returns_everything_stored() {
    let db = testkit::database(&[&outbox::MIGRATOR]).await;
    let [a, b, flaky] = dead(&db).await;

    let detail = dead_letters::get(&db.pool, a.id)
        .await
        .expect("get")
        .expect("a is dead");
    assert_eq!(detail.letter.id, a.id);
    assert_eq!(detail.letter.payload, b"a");
    assert_eq!(detail.letter.reason, "permanent publish failure");
    assert_eq!(detail.headers.get("trace").map(String::as_str), Some("t-1"));
    assert_eq!(detail.dedup_key.as_deref(), Some("req-1"));
    let listed = dead_letters::list(&db.pool, 10).await.expect("list");
    assert_eq!(detail.letter, listed[0]);

    let detail = dead_letters::get(&db.pool, b.id)
        .await
        .expect("get")
        .expect("b is dead");
    assert!(detail.headers.is_empty());
    assert_eq!(detail.dedup_key, None);
    let detail = dead_letters::get(&db.pool, flaky.id)
        .await
        .expect("get")
        .expect("flaky is dead");
    assert_eq!(
        (detail.letter.reason.as_str(), detail.letter.attempts),
        ("attempts exhausted (2)", 2)
    );
    assert_eq!(
        dead_letters::get(&db.pool, Uuid::now_v7())
            .await
            .expect("get"),
        None
    );
}

#[tokio::test]
async fn replay_matching_revives_only_the_matching_oldest_first() {
    let db = testkit::database(&[&outbox::MIGRATOR]).await;
    let [a, b, flaky] = dead(&db).await;

    let replayed = dead_letters::replay_matching(&db.pool, &Filter::new().topic("orders"))
        .await
        .expect("replay");
    assert_eq!(replayed.len(), 2);
    let pending: Vec<(Uuid, i32, Option<String>, serde_json::Value)> =
        sqlx::query_as("SELECT id, attempts, dedup_key, headers FROM outbox_events ORDER BY seq")
            .fetch_all(&db.pool)
            .await
            .expect("pending");
    assert_eq!(
        pending,
        [
            (
                a.id,
                0,
                Some("req-1".into()),
                serde_json::json!({"trace": "t-1"})
            ),
            (b.id, 0, None, serde_json::json!({})),
        ],
        "back in the outbox with fresh attempts, headers and dedup key, oldest first"
    );
    assert_eq!(
        ids(&dead_letters::list(&db.pool, 10).await.expect("list")),
        [flaky.id]
    );
    assert!(
        dead_letters::replay_matching(&db.pool, &Filter::new().topic("orders"))
            .await
            .expect("replay")
            .is_empty()
    );
}

#[tokio::test]
async fn discard_matching_deletes_only_the_matching() {
    let db = testkit::database(&[&outbox::MIGRATOR]).await;
    let [a, b, flaky] = dead(&db).await;

    let discarded =
        dead_letters::discard_matching(&db.pool, &Filter::new().reason_contains("permanent"))
            .await
            .expect("discard");
    let mut discarded = discarded;
    discarded.sort();
    let mut expected = vec![a.id, b.id];
    expected.sort();
    assert_eq!(discarded, expected);
    assert_eq!(
        ids(&dead_letters::list(&db.pool, 10).await.expect("list")),
        [flaky.id]
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox_events").await,
        0
    );
    // The empty filter matches everything.
    assert_eq!(
        dead_letters::discard_matching(&db.pool, &Filter::new())
            .await
            .expect("discard"),
        [flaky.id]
    );
}
