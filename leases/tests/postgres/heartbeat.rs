//! Heartbeat: a lease kept past its first expiry, and one lost to another owner.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_keeps_a_lease_past_its_first_expiry_and_it_expires_once_stopped() {
    let (db, spec) = jobs(1).await;
    let holder = RowLeases::new(&spec, "holder");
    let rival = RowLeases::new(&spec, "rival");
    let ttl = Duration::from_secs(1);
    let claimed: Vec<Lease<i64>> = holder.claim(&db.pool, 1, ttl).await.expect("claim");
    let first_expiry = claimed[0].expires_at;
    let heartbeat = Heartbeat::start(
        &holder,
        db.pool.clone(),
        claimed,
        ttl,
        Duration::from_millis(200),
    )
    .expect("start");

    // Wait (database time) until well past the first expiry.
    eventually(
        Duration::from_secs(10),
        "database time passes the first expiry",
        || async { db_now(&db.pool).await > first_expiry + chrono::TimeDelta::milliseconds(500) },
    )
    .await;
    assert!(
        rival
            .claim::<i64>(&db.pool, 1, ttl)
            .await
            .expect("claim")
            .is_empty(),
        "heartbeat kept the lease"
    );
    assert!(heartbeat.lost_now().is_empty());

    let held = heartbeat.shutdown().await;
    assert_eq!(held.len(), 1);
    assert!(
        held[0].expires_at > first_expiry,
        "renewals moved the expiry"
    );
    eventually(
        Duration::from_secs(10),
        "the lease expires and the rival claims it",
        || async {
            !rival
                .claim::<i64>(&db.pool, 1, ttl)
                .await
                .expect("claim")
                .is_empty()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_reports_a_lease_taken_by_another_owner() {
    let (db, spec) = jobs(1).await;
    let holder = RowLeases::new(&spec, "holder");
    let claimed: Vec<Lease<i64>> = holder.claim(&db.pool, 1, MINUTE).await.expect("claim");
    let id = claimed[0].id;
    let mut heartbeat = Heartbeat::start(
        &holder,
        db.pool.clone(),
        claimed,
        MINUTE,
        Duration::from_millis(50),
    )
    .expect("start");
    // Another owner takes the row over (as after an expiry the holder did not see).
    sqlx::query(
        "UPDATE jobs SET lease_owner = 'rival', lease_token = lease_token + 1 WHERE id = $1",
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .expect("steal");
    let lost = tokio::time::timeout(Duration::from_secs(10), heartbeat.lost())
        .await
        .expect("told in time");
    assert_eq!(lost, vec![id]);
    assert!(heartbeat.shutdown().await.is_empty());
}
