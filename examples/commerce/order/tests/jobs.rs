//! The singleton jobs: reservation expiry, stuck orders and the archiver, against real
//! PostgreSQL.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use commerce_events::Event;
use commerce_order::domain::OrderState;
use commerce_order::jobs;
use common::{Harness, count, eventually, insert_order};
use uuid::Uuid;

const HOUR: Duration = Duration::from_secs(60 * 60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

async fn cancelled_events(h: &Harness) -> Vec<(Uuid, String)> {
    h.outbox()
        .await
        .into_iter()
        .filter(|e| e.0 == "OrderCancelled")
        .map(|(_, topic, _, _, payload)| {
            assert_eq!(topic, h.config.topics.orders);
            match commerce_events::decode(&payload).expect("valid").event {
                Event::OrderCancelled {
                    order_id, reason, ..
                } => (order_id, reason),
                other => panic!("{other:?}"),
            }
        })
        .collect()
}

#[tokio::test]
async fn the_expiry_job_cancels_stale_reservations_only() {
    let h = Harness::new().await;
    let stale = insert_order(h.pool(), "timeout-tom", OrderState::Reserved, HOUR).await;
    let fresh = insert_order(h.pool(), "alice", OrderState::Reserved, Duration::ZERO).await;
    let paid = insert_order(h.pool(), "bob", OrderState::Paid, HOUR).await;
    let pending = insert_order(h.pool(), "carol", OrderState::Pending, HOUR).await;

    let job = jobs::spawn_expiry(
        h.pool().clone(),
        h.config.topics.clone(),
        Duration::from_secs(30),
        "test-instance",
    );
    eventually(
        Duration::from_secs(20),
        "the stale reservation is cancelled",
        || async { h.state_of(stale).await.0 == "CANCELLED" },
    )
    .await;
    let holder: Option<String> =
        sqlx::query_scalar("SELECT owner FROM leases_named WHERE name = $1")
            .bind(jobs::EXPIRY_LEASE)
            .fetch_optional(h.pool())
            .await
            .expect("lease");
    assert_eq!(holder.as_deref(), Some("test-instance"));
    job.shutdown().await.expect("the job stops");
    let released: Option<String> =
        sqlx::query_scalar("SELECT owner FROM leases_named WHERE name = $1")
            .bind(jobs::EXPIRY_LEASE)
            .fetch_one(h.pool())
            .await
            .expect("lease row");
    assert_eq!(released, None, "stopping releases the lease");

    assert_eq!(
        h.state_of(stale).await,
        ("CANCELLED".into(), Some("payment timeout".into()))
    );
    assert_eq!(h.state_of(fresh).await.0, "RESERVED");
    assert_eq!(h.state_of(paid).await.0, "PAID");
    assert_eq!(h.state_of(pending).await.0, "PENDING");
    assert_eq!(
        cancelled_events(&h).await,
        [(stale, "payment timeout".to_owned())]
    );
}

#[tokio::test]
async fn the_stuck_order_job_cancels_orders_waiting_too_long_for_a_reservation_or_a_confirmation() {
    let h = Harness::new().await;
    let pending = insert_order(h.pool(), "alice", OrderState::Pending, HOUR).await;
    let paid = insert_order(h.pool(), "bob", OrderState::Paid, HOUR).await;
    let fresh = insert_order(h.pool(), "carol", OrderState::Pending, Duration::ZERO).await;
    let reserved = insert_order(h.pool(), "dave", OrderState::Reserved, HOUR).await;
    let confirmed = insert_order(h.pool(), "erin", OrderState::Confirmed, HOUR).await;

    let job = jobs::spawn_stuck(
        h.pool().clone(),
        h.config.topics.clone(),
        Duration::from_secs(30 * 60),
        "test-instance",
    );
    eventually(
        Duration::from_secs(20),
        "the stuck orders are cancelled",
        || async {
            h.state_of(paid).await.0 == "CANCELLED" && h.state_of(pending).await.0 == "CANCELLED"
        },
    )
    .await;
    job.shutdown().await.expect("the job stops");

    let stuck = commerce_order::domain::STUCK.to_owned();
    for id in [pending, paid] {
        assert_eq!(
            h.state_of(id).await,
            ("CANCELLED".into(), Some(stuck.clone()))
        );
    }
    assert_eq!(h.state_of(fresh).await.0, "PENDING");
    assert_eq!(h.state_of(reserved).await.0, "RESERVED", "the expiry job's");
    assert_eq!(h.state_of(confirmed).await.0, "CONFIRMED");
    // OrderCancelled is what gives every unit and cent back (inventory, payment).
    let mut cancelled = cancelled_events(&h).await;
    cancelled.sort();
    let mut expected = vec![(pending, stuck.clone()), (paid, stuck)];
    expected.sort();
    assert_eq!(cancelled, expected);
}

#[tokio::test]
async fn expiry_works_in_chunks_and_only_once() {
    let h = Harness::new().await;
    let mut stale = Vec::new();
    for _ in 0..5 {
        stale.push(insert_order(h.pool(), "alice", OrderState::Reserved, HOUR).await);
    }
    let topics = &h.config.topics;
    let cancelled =
        commerce_order::expire_reservations(h.pool(), topics, Duration::from_secs(30), 2)
            .await
            .expect("expires");
    assert_eq!(cancelled, 5);
    let again = commerce_order::expire_reservations(h.pool(), topics, Duration::from_secs(30), 2)
        .await
        .expect("expires");
    assert_eq!(again, 0);
    let mut events: Vec<Uuid> = cancelled_events(&h)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    events.sort();
    stale.sort();
    assert_eq!(events, stale);
}

#[tokio::test]
async fn the_archiver_moves_old_finished_orders_which_stay_readable() {
    let h = Harness::new().await;
    let old_completed = insert_order(h.pool(), "alice", OrderState::Completed, 40 * DAY).await;
    let old_cancelled = insert_order(h.pool(), "alice", OrderState::Cancelled, 31 * DAY).await;
    let old_failed = insert_order(h.pool(), "alice", OrderState::Failed, 35 * DAY).await;
    let recent_completed = insert_order(h.pool(), "alice", OrderState::Completed, DAY).await;
    let old_pending = insert_order(h.pool(), "alice", OrderState::Pending, 40 * DAY).await;
    let old_paid = insert_order(h.pool(), "alice", OrderState::Paid, 40 * DAY).await;

    let moved = commerce_order::archive_finished(h.pool(), 30 * DAY, 2)
        .await
        .expect("archives");
    assert_eq!(moved, 3);
    let live: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM orders ORDER BY id")
        .fetch_all(h.pool())
        .await
        .expect("live");
    assert_eq!(live, [recent_completed, old_pending, old_paid]);
    let archived: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM orders_archive ORDER BY id")
        .fetch_all(h.pool())
        .await
        .expect("archived");
    assert_eq!(archived, [old_completed, old_cancelled, old_failed]);
    assert_eq!(count(h.pool(), "order_lines_archive").await, 3);
    assert_eq!(count(h.pool(), "order_lines").await, 3);

    // Still readable (with its lines), listed, and not cancellable.
    let read = h
        .get("alice", &format!("/api/v1/orders/{old_completed}"))
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!(read.body["state"], "COMPLETED");
    assert_eq!(read.body["lines"][0]["quantity"], 2);
    assert_eq!(read.body["total_cents"], 500);
    let list = h.get("alice", "/api/v1/orders").await;
    assert_eq!(list.body.as_array().map(Vec::len), Some(6));
    h.post("alice", &format!("/api/v1/orders/{old_completed}/cancel"))
        .await
        .assert_problem(StatusCode::CONFLICT);
    h.get("bob", &format!("/api/v1/orders/{old_completed}"))
        .await
        .assert_problem(StatusCode::NOT_FOUND);

    assert_eq!(
        commerce_order::archive_finished(h.pool(), 30 * DAY, 2)
            .await
            .expect("archives"),
        0
    );
}

#[tokio::test]
async fn archived_orders_are_deleted_after_their_retention() {
    let h = Harness::new().await;
    let [kept, expired, ancient] = [
        insert_order(h.pool(), "alice", OrderState::Completed, 40 * DAY).await,
        insert_order(h.pool(), "alice", OrderState::Cancelled, 40 * DAY).await,
        insert_order(h.pool(), "alice", OrderState::Failed, 40 * DAY).await,
    ];
    commerce_order::archive_finished(h.pool(), 30 * DAY, 10)
        .await
        .expect("archives");
    for (id, days) in [(kept, 10.0), (expired, 400.0), (ancient, 800.0)] {
        sqlx::query(
            "UPDATE orders_archive SET archived_at = now() - $2 * interval '1 day' WHERE id = $1",
        )
        .bind(id)
        .bind(days)
        .execute(h.pool())
        .await
        .expect("age the archived order");
    }
    let pruned = commerce_order::prune_archive(h.pool(), 365 * DAY, 1)
        .await
        .expect("prunes");
    assert_eq!(pruned, 2);
    let left: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM orders_archive")
        .fetch_all(h.pool())
        .await
        .expect("archive");
    assert_eq!(left, [kept]);
    assert_eq!(
        count(h.pool(), "order_lines_archive").await,
        1,
        "lines go with their orders"
    );
}

#[tokio::test]
async fn the_archiver_job_runs_when_it_holds_its_lease() {
    let h = Harness::new().await;
    let old = insert_order(h.pool(), "alice", OrderState::Failed, 40 * DAY).await;
    // Another instance holds the lease: this one waits.
    let named = leases::NamedLeases::new();
    let other = named
        .acquire(
            h.pool(),
            jobs::ARCHIVER_LEASE,
            "other-instance",
            Duration::from_secs(60),
        )
        .await
        .expect("acquire")
        .expect("free");
    let job = jobs::spawn_archiver(h.pool().clone(), 30 * DAY, 365 * DAY, "this-instance");
    assert_eq!(count(h.pool(), "orders_archive").await, 0);
    // The other instance steps down: this one takes over and archives.
    named.release(h.pool(), &other).await.expect("release");
    eventually(Duration::from_secs(20), "the order is archived", || async {
        count(h.pool(), "orders_archive").await == 1
    })
    .await;
    let holder: Option<String> =
        sqlx::query_scalar("SELECT owner FROM leases_named WHERE name = $1")
            .bind(jobs::ARCHIVER_LEASE)
            .fetch_one(h.pool())
            .await
            .expect("lease row");
    assert_eq!(holder.as_deref(), Some("this-instance"));
    job.shutdown().await.expect("the job stops");
    assert_eq!(h.state_of(old).await.0, "FAILED");
    assert_eq!(count(h.pool(), "orders").await, 0);
}
