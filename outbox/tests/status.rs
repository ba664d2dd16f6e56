//! `outbox::status` and the dry run of `outbox::purge_published`, against real PostgreSQL, with
//! rows written as a relay leaves them.

use std::time::Duration;

use sqlx::PgPool;

/// Inserts an event of aggregate `id`, enqueued `age` ago, with `set` for the columns a relay
/// writes (`$1` is its id).
async fn event(pool: &PgPool, id: &str, age: &str, set: &'static str) {
    sqlx::query(
        "INSERT INTO outbox_events (id, topic, aggregate_type, aggregate_id, event_type, payload,
                                    created_at)
         VALUES (gen_random_uuid(), 'orders', 'order', $1, 'OrderPlaced', '\\x01',
                 now() - $2::interval)",
    )
    .bind(id)
    .bind(age)
    .execute(pool)
    .await
    .expect("insert event");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE outbox_events SET {set} WHERE aggregate_id = $1"
    )))
    .bind(id)
    .execute(pool)
    .await
    .expect("set relay columns");
}

#[tokio::test]
async fn status_reports_backlog_leases_retries_and_dead_letters() {
    let db = testkit::database(&[&outbox::MIGRATOR]).await;
    let pool = &db.pool;
    let empty = outbox::status(pool).await.expect("status");
    assert_eq!(empty.pending, 0);
    assert_eq!(empty.oldest_pending_age, None);
    assert_eq!(empty.oldest_pending, None);
    assert!(empty.leases.is_empty() && empty.dead_letters.is_empty());

    // The oldest pending event failed once and is leased again by relay-b.
    event(
        pool,
        "retried-leased",
        "1 hour",
        "attempts = 1, last_error = 'broker down', lease_owner = 'relay-b',
         lease_expires_at = now() + interval '20 seconds'",
    )
    .await;
    event(pool, "due", "10 minutes", "attempts = 0").await;
    // Its lease expired: pending, free, due.
    event(
        pool,
        "expired-lease",
        "9 minutes",
        "attempts = 1, lease_owner = 'relay-gone', lease_expires_at = now() - interval '1 second'",
    )
    .await;
    for id in ["held-1", "held-2"] {
        event(
            pool,
            id,
            "5 minutes",
            "attempts = 1, lease_owner = 'relay-a', lease_expires_at = now() + interval '30 seconds'",
        )
        .await;
    }
    // Failed twice, its lease given back, next attempt in a minute.
    event(
        pool,
        "retry",
        "8 minutes",
        "attempts = 2, next_attempt_at = now() + interval '1 minute'",
    )
    .await;
    for (id, age) in [("published-old", "10 days"), ("published-new", "1 hour")] {
        event(
            pool,
            id,
            age,
            "published_at = created_at, next_attempt_at = NULL",
        )
        .await;
    }
    sqlx::query(
        "INSERT INTO outbox_dead_letters (id, topic, aggregate_type, aggregate_id, event_type,
             payload, headers, created_at, attempts, reason, last_error, dead_at)
         SELECT gen_random_uuid(), topic, 'order', 'd', 'OrderPlaced', '\\x01', '{}', now(), 1,
                reason, 'rejected', now() - age
         FROM (VALUES ('orders', 'permanent publish failure', interval '2 hours'),
                      ('orders', 'permanent publish failure', interval '1 hour'),
                      ('orders', 'attempts exhausted (5)', interval '3 hours'),
                      ('payments', 'permanent publish failure', interval '1 minute'))
              AS d (topic, reason, age)",
    )
    .execute(pool)
    .await
    .expect("dead letters");

    let status = outbox::status(pool).await.expect("status");
    assert_eq!(status.pending, 6);
    let age = status.oldest_pending_age.expect("an oldest age");
    assert!(
        age >= Duration::from_secs(3_600) && age < Duration::from_secs(3_700),
        "{age:?}"
    );
    let oldest = status.oldest_pending.expect("an oldest event");
    assert_eq!(oldest.aggregate_id, "retried-leased");
    assert_eq!(oldest.attempts, 1);
    assert_eq!(oldest.last_error.as_deref(), Some("broker down"));
    assert_eq!(oldest.leased_by.as_deref(), Some("relay-b"));
    assert_eq!(status.waiting_for_retry, 1);
    assert_eq!(status.published_kept, 2);

    let leases: Vec<(Option<&str>, i64)> = status
        .leases
        .iter()
        .map(|l| (l.owner.as_deref(), l.events))
        .collect();
    assert_eq!(leases, [(Some("relay-a"), 2), (Some("relay-b"), 1)]);
    for (lease, ttl) in status.leases.iter().zip([30, 20]) {
        assert!(
            lease.last_expires_in > Duration::ZERO
                && lease.last_expires_in <= Duration::from_secs(ttl),
            "{lease:?}"
        );
    }

    let dead: Vec<(&str, &str, i64)> = status
        .dead_letters
        .iter()
        .map(|g| (g.topic.as_str(), g.reason.as_str(), g.count))
        .collect();
    assert_eq!(
        dead,
        [
            ("orders", "attempts exhausted (5)", 1),
            ("orders", "permanent publish failure", 2),
            ("payments", "permanent publish failure", 1),
        ]
    );
    let orders = &status.dead_letters[1];
    assert_eq!(
        (orders.newest - orders.oldest).num_minutes(),
        60,
        "{orders:?}"
    );

    // Once relay-b's lease has run out, the oldest event is leased by nobody.
    sqlx::query("UPDATE outbox_events SET lease_expires_at = now() - interval '1 second' WHERE aggregate_id = 'retried-leased'")
        .execute(pool)
        .await
        .expect("expire");
    let status = outbox::status(pool).await.expect("status");
    let oldest = status.oldest_pending.expect("an oldest event");
    assert_eq!(oldest.leased_by, None);
    assert_eq!(status.leases.len(), 1);
}

#[tokio::test]
async fn the_dry_run_counts_exactly_what_purge_published_deletes() {
    let db = testkit::database(&[&outbox::MIGRATOR]).await;
    let pool = &db.pool;
    for day in 1..=12 {
        event(
            pool,
            &format!("published-{day}"),
            &format!("{day} days"),
            "published_at = created_at, next_attempt_at = NULL",
        )
        .await;
    }
    // Unpublished, as old as the oldest: never purged.
    event(pool, "pending", "30 days", "attempts = 0").await;

    let week = Duration::from_secs(7 * 86_400 + 3_600);
    let would = outbox::count_purgeable(pool, week).await.expect("dry run");
    assert_eq!(would, 5, "published 8 to 12 days ago");
    assert_eq!(
        outbox::count_purgeable(pool, week).await.expect("dry run"),
        would,
        "a dry run deletes nothing"
    );
    assert_eq!(
        outbox::purge_published(pool, week, 2).await.expect("purge"),
        would
    );
    assert_eq!(
        outbox::count_purgeable(pool, week).await.expect("dry run"),
        0
    );
    let status = outbox::status(pool).await.expect("status");
    assert_eq!((status.published_kept, status.pending), (7, 1));
}
