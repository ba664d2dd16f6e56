//! The key table's status and the purge of expired keys, with its dry run.

use super::*;

#[tokio::test]
async fn status_counts_keys_and_the_dry_run_counts_what_purge_deletes() {
    let db = db().await;
    let start = Utc::now();
    let clock = ManualClock::new(start);
    let store = PostgresStore::new(db.pool.clone()).with_clock(clock.clone());
    let empty = store.status().await.expect("status");
    assert_eq!((empty.keys, empty.in_flight, empty.expired), (0, 0, 0));

    // Retention and lease end relative to the store's clock: past retention (two), retained,
    // past retention but in flight, retained and in flight.
    for (key, retained_for, leased_for) in [
        ("k1", "-1 hour", None),
        ("k2", "-1 day", None),
        ("k3", "1 day", None),
        ("k4", "-1 hour", Some("1 minute")),
        ("k5", "1 day", Some("1 minute")),
    ] {
        sqlx::query(
            "INSERT INTO idempotency_keys
                (scope, route, idempotency_key, fingerprint, created_at, retain_until,
                 lease_owner, lease_expires_at)
             VALUES ('tenant', 'POST /orders', $1, '\\x00', $2 - interval '2 days',
                     $2 + $3::interval, 'api-1', $2 + $4::interval)",
        )
        .bind(key)
        .bind(start)
        .bind(retained_for)
        .bind(leased_for)
        .execute(&db.pool)
        .await
        .expect("seed idempotency_keys");
    }
    let status = store.status().await.expect("status");
    assert_eq!((status.keys, status.in_flight, status.expired), (5, 2, 2));
    assert_eq!(store.count_expired().await.expect("dry run"), 2);
    assert_eq!(
        store.status().await.expect("status").keys,
        5,
        "a dry run deletes nothing"
    );

    // Two minutes later the leases have run out: k4 is expired too, k5 is only retained.
    clock.advance(2 * MINUTE);
    let status = store.status().await.expect("status");
    assert_eq!((status.keys, status.in_flight, status.expired), (5, 0, 3));
    let would = store.count_expired().await.expect("dry run");
    assert_eq!(would, 3);
    assert_eq!(store.purge_expired(2).await.expect("purge"), would);
    let status = store.status().await.expect("status");
    assert_eq!((status.keys, status.in_flight, status.expired), (2, 0, 0));
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM idempotency_keys WHERE idempotency_key IN ('k3', 'k5')"
        )
        .await,
        2
    );
}
