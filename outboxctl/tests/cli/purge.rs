//! `purge published | inbox | idempotency-keys`.

use super::*;

/// Two rows of each kind that a purge deletes and one (or two) that it keeps.
async fn seed(pool: &PgPool) {
    for (age, published) in [
        ("10 days", true),
        ("8 days", true),
        ("1 day", true),
        ("10 days", false),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO outbox_events
                (id, topic, aggregate_type, aggregate_id, event_type, payload, created_at,
                 published_at, next_attempt_at)
             VALUES (gen_random_uuid(), 'orders', 'order', 'o', 'OrderPlaced', '\\x01',
                     now() - interval '{age}',
                     {published}, {due})",
            published = if published {
                format!("now() - interval '{age}'")
            } else {
                "NULL".into()
            },
            due = if published { "NULL" } else { "now()" },
        )))
        .execute(pool)
        .await
        .expect("seed outbox_events");
    }
    for (event, age) in [("e1", "10 days"), ("e2", "8 days"), ("e3", "1 hour")] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO inbox (consumer, event_id, received_at)
             VALUES ('billing', '{event}', now() - interval '{age}')"
        )))
        .execute(pool)
        .await
        .expect("seed inbox");
    }
    // Expired, expired, still retained, expired but in flight (leased).
    for (key, retain, lease) in [
        ("k1", "now() - interval '1 hour'", "NULL"),
        ("k2", "now() - interval '1 day'", "NULL"),
        ("k3", "now() + interval '1 day'", "NULL"),
        (
            "k4",
            "now() - interval '1 hour'",
            "now() + interval '1 minute'",
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO idempotency_keys
                (scope, route, idempotency_key, fingerprint, created_at, retain_until,
                 lease_owner, lease_expires_at)
             VALUES ('tenant', 'POST /orders', '{key}', '\\x00', now() - interval '2 days',
                     {retain}, 'api-1', {lease})"
        )))
        .execute(pool)
        .await
        .expect("seed idempotency_keys");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_are_refused_without_yes_count_with_dry_run_and_delete_with_yes() {
    let db = full_db().await;
    let url = url_of(&db).await;
    seed(&db.pool).await;

    for (args, table, rows, sql, left) in [
        (
            &["purge", "published", "--older-than", "7d"][..],
            "outbox_events",
            2,
            "SELECT count(*) FROM outbox_events",
            2,
        ),
        (
            &["purge", "inbox", "--older-than", "7d"],
            "inbox",
            2,
            "SELECT count(*) FROM inbox",
            1,
        ),
        (
            &["purge", "idempotency-keys"],
            "idempotency_keys",
            2,
            "SELECT count(*) FROM idempotency_keys",
            2,
        ),
    ] {
        let before = count(&db.pool, sql).await;
        let refused = ctl(&url, args);
        assert_eq!(refused.code, 2, "{args:?}: {refused:?}");
        assert!(
            refused
                .stderr
                .contains(&format!("{rows} row(s) from {table}"))
                && refused.stderr.contains("--yes"),
            "{refused:?}"
        );
        let dry = ctl_ok(&url, &[args, &["--dry-run"]].concat());
        assert!(
            dry.contains(&format!("would delete {rows} row(s) from {table}")),
            "{dry}"
        );
        let dry = ctl_json(&url, &[args, &["--dry-run"]].concat());
        assert_eq!(
            (dry["rows"].clone(), dry["dry_run"].clone()),
            (Value::from(rows), Value::from(true))
        );
        assert_eq!(count(&db.pool, sql).await, before, "{args:?} changed rows");

        let done = ctl_ok(&url, &[args, &["--yes", "--batch-size", "1"]].concat());
        assert_eq!(done, format!("deleted {rows} row(s) from {table}\n"));
        assert_eq!(count(&db.pool, sql).await, left, "{args:?}");
        let again = ctl_json(&url, &[args, &["--yes"]].concat());
        assert_eq!(again["rows"], 0, "{args:?}");
    }
    // What stayed: the recent published event and the pending one, the recent inbox row, the
    // retained key and the leased one.
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM outbox_events WHERE published_at IS NULL"
        )
        .await,
        1
    );
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT idempotency_key FROM idempotency_keys ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .expect("keys");
    assert_eq!(keys, ["k3", "k4"]);

    // Bad durations and missing --older-than are usage errors.
    assert_eq!(
        ctl(
            &url,
            &["purge", "inbox", "--older-than", "7 parsecs", "--yes"]
        )
        .code,
        2
    );
    assert_eq!(ctl(&url, &["purge", "published", "--yes"]).code, 2);
    assert_eq!(
        ctl(
            &url,
            &["purge", "idempotency-keys", "--batch-size", "0", "--yes"]
        )
        .code,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_a_table_that_does_not_exist_is_an_error() {
    let db = testkit::database(&[&outbox::MIGRATOR]).await;
    let url = url_of(&db).await;
    let run = ctl(&url, &["purge", "inbox", "--older-than", "7d", "--yes"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("table inbox does not exist"), "{run:?}");
}
