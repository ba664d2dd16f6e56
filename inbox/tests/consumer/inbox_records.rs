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
