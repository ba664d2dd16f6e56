//! The inbox: fresh, duplicate, purge.

use super::*;

#[tokio::test]
async fn the_inbox_tells_fresh_from_duplicate_and_purges_old_records() {
    let db = db().await;
    let mut tx = db.pool.begin().await.expect("begin");
    assert_eq!(
        inbox::receive(&mut tx, "inventory", "e1")
            .await
            .expect("receive"),
        Delivery::Fresh
    );
    assert_eq!(
        inbox::receive(&mut tx, "inventory", "e1")
            .await
            .expect("receive"),
        Delivery::Duplicate
    );
    assert_eq!(
        inbox::receive(&mut tx, "payment", "e1")
            .await
            .expect("receive"),
        Delivery::Fresh,
        "each consumer has its own inbox"
    );
    tx.rollback().await.expect("rollback");
    // Rolled back with the effects: the event is fresh again.
    let mut tx = db.pool.begin().await.expect("begin");
    assert_eq!(
        inbox::receive(&mut tx, "inventory", "e1")
            .await
            .expect("receive"),
        Delivery::Fresh
    );
    tx.commit().await.expect("commit");

    sqlx::query(
        "INSERT INTO inbox (consumer, event_id, received_at)
         SELECT 'inventory', 'old-' || g, now() - interval '8 days' FROM generate_series(1, 25) g",
    )
    .execute(&db.pool)
    .await
    .expect("old records");
    let purged = inbox::purge(&db.pool, Duration::from_secs(7 * 24 * 3600), 10)
        .await
        .expect("purge");
    assert_eq!(purged, 25);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(left, 1);
}

#[tokio::test]
async fn status_counts_the_records_and_the_dry_run_counts_what_purge_deletes() {
    let db = db().await;
    let empty = inbox::status(&db.pool).await.expect("status");
    assert_eq!((empty.rows, empty.oldest_age), (0, None));

    sqlx::query(
        "INSERT INTO inbox (consumer, event_id, received_at)
         SELECT 'billing', 'old-' || g, now() - g * interval '1 day' FROM generate_series(1, 10) g",
    )
    .execute(&db.pool)
    .await
    .expect("records");
    let status = inbox::status(&db.pool).await.expect("status");
    assert_eq!(status.rows, 10);
    let oldest = status.oldest_age.expect("an oldest record");
    assert!(
        oldest >= Duration::from_secs(10 * 86_400) && oldest < Duration::from_secs(11 * 86_400),
        "{oldest:?}"
    );

    // Received 8, 9 and 10 days ago.
    let week = Duration::from_secs(7 * 86_400 + 3_600);
    let would = inbox::count_purgeable(&db.pool, week)
        .await
        .expect("dry run");
    assert_eq!(would, 3);
    assert_eq!(
        inbox::status(&db.pool).await.expect("status").rows,
        10,
        "a dry run deletes nothing"
    );
    assert_eq!(inbox::purge(&db.pool, week, 2).await.expect("purge"), would);
    assert_eq!(
        inbox::count_purgeable(&db.pool, week)
            .await
            .expect("dry run"),
        0
    );
    assert_eq!(inbox::status(&db.pool).await.expect("status").rows, 7);
}
