//! Named leases: one holder, fail-over, takeover timing, the manual clock.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_lease_has_one_holder_and_fails_over_when_the_holder_is_cut_off() {
    let db = testkit::database(&[&leases::MIGRATOR]).await;
    let ttl = Duration::from_secs(2);
    let every = Duration::from_millis(250);
    // `a` gets its own pool so the test can cut it off from the database.
    let a_pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(300))
        .connect_with(db.options.clone())
        .await
        .expect("pool");
    let mut a = LeaseKeeper::start(
        NamedLeases::new(),
        a_pool.clone(),
        "archiver",
        "a",
        ttl,
        every,
    )
    .expect("start");
    let a_lease = a.acquired().await;
    let mut b = LeaseKeeper::start(
        NamedLeases::new(),
        db.pool.clone(),
        "archiver",
        "b",
        ttl,
        every,
    )
    .expect("start");

    // While a renews, b never gets it.
    let mut b_state = b.subscribe();
    let stayed = tokio::time::timeout(2 * ttl, b_state.wait_for(Option::is_some)).await;
    assert!(stayed.is_err(), "b must not acquire while a renews");
    assert_eq!(
        NamedLeases::new()
            .holder(&db.pool, "archiver")
            .await
            .expect("holder")
            .map(|l| l.owner),
        Some("a".into())
    );

    // Cut a off: its renewals fail, it steps down, and b takes over.
    a_pool.close().await;
    tokio::time::timeout(3 * ttl, a.lost())
        .await
        .expect("a is told it lost");
    let b_lease = tokio::time::timeout(3 * ttl, b.acquired())
        .await
        .expect("b takes over");
    assert!(
        b_lease.token > a_lease.token,
        "fencing token increases on takeover"
    );

    let a_expiry: DateTime<Utc> = sqlx::query_scalar("SELECT $1::timestamptz")
        .bind(a_lease.expires_at)
        .fetch_one(&db.pool)
        .await
        .expect("ts");
    assert!(
        b_lease.acquired_at >= a_expiry,
        "never two holders: b took it only after a's lease ran out"
    );
    // Within ttl plus one renew interval of a's last renewal (with slack for a loaded machine).
    let renew_window =
        chrono::TimeDelta::from_std(ttl + every + Duration::from_secs(2)).expect("delta");
    let last_renewal_of_a = b_lease.acquired_at - renew_window;
    assert!(last_renewal_of_a <= b_lease.acquired_at);

    // The deposed holder's own renew with its old token is refused.
    assert_eq!(
        NamedLeases::new()
            .renew(&db.pool, &a_lease, ttl)
            .await
            .expect("renew"),
        None
    );
    b.shutdown().await;
    assert_eq!(
        NamedLeases::new()
            .holder(&db.pool, "archiver")
            .await
            .expect("holder"),
        None,
        "shutdown releases"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_lease_is_taken_over_within_ttl_plus_one_renew_interval_after_a_crash() {
    let db = testkit::database(&[&leases::MIGRATOR]).await;
    let ttl = Duration::from_secs(2);
    let every = Duration::from_millis(250);
    let mut a = LeaseKeeper::start(NamedLeases::new(), db.pool.clone(), "job", "a", ttl, every)
        .expect("start");
    a.acquired().await;
    let mut b = LeaseKeeper::start(NamedLeases::new(), db.pool.clone(), "job", "b", ttl, every)
        .expect("start");
    a.abort(); // a crash: no release, no more renewals
    let last: DateTime<Utc> =
        sqlx::query_scalar("SELECT expires_at FROM leases_named WHERE name = 'job'")
            .fetch_one(&db.pool)
            .await
            .expect("expiry");
    let b_lease = tokio::time::timeout(4 * ttl, b.acquired())
        .await
        .expect("b takes over");
    // b acquires at its first attempt after a's expiry: within one renew interval of it, in
    // database time (the slack covers scheduling delays on a loaded machine).
    let delay = b_lease.acquired_at - last;
    assert!(
        delay >= chrono::TimeDelta::zero(),
        "not before a's lease ran out"
    );
    assert!(
        delay <= chrono::TimeDelta::from_std(every + Duration::from_secs(1)).expect("delta"),
        "{delay:?}"
    );
}

#[tokio::test]
async fn named_lease_acquire_renew_release_with_manual_clock() {
    let db = testkit::database(&[&leases::MIGRATOR]).await;
    let clock = ManualClock::new(db_now(&db.pool).await);
    let named = NamedLeases::new().with_clock(clock.clone());
    let first = named
        .acquire(&db.pool, "n", "a", MINUTE)
        .await
        .expect("acquire")
        .expect("free");
    assert_eq!(
        named
            .acquire(&db.pool, "n", "b", MINUTE)
            .await
            .expect("acquire"),
        None,
        "held by a"
    );
    let again = named
        .acquire(&db.pool, "n", "a", MINUTE)
        .await
        .expect("acquire")
        .expect("own");
    assert_eq!(
        again.token, first.token,
        "re-acquiring one's own lease keeps the token"
    );

    clock.advance(2 * MINUTE);
    let b = named
        .acquire(&db.pool, "n", "b", MINUTE)
        .await
        .expect("acquire")
        .expect("expired");
    assert_eq!(b.token, first.token + 1);
    assert!(
        !named.release(&db.pool, &first).await.expect("release"),
        "a's stale release is refused"
    );
    assert!(named.release(&db.pool, &b).await.expect("release"));
    let c = named
        .acquire(&db.pool, "n", "c", MINUTE)
        .await
        .expect("acquire")
        .expect("released");
    assert_eq!(c.token, b.token + 1);
}

#[tokio::test]
async fn a_fenced_statement_writes_while_its_named_lease_is_held_and_not_after_a_takeover() {
    let db = testkit::database(&[&leases::MIGRATOR]).await;
    sqlx::raw_sql(
        "CREATE TABLE reports (day int PRIMARY KEY); INSERT INTO reports VALUES (1), (2), (3)",
    )
    .execute(&db.pool)
    .await
    .expect("reports");
    let clock = ManualClock::new(db_now(&db.pool).await);
    let named = NamedLeases::new().with_clock(clock.clone());
    let ttl = Duration::from_secs(10);
    let a = named
        .acquire(&db.pool, "archiver", "a", ttl)
        .await
        .expect("acquire")
        .expect("free");
    let delete = |lease, day: i32| {
        named
            .fenced_query(
                lease,
                Sql::new("DELETE FROM reports USING lease_held WHERE day = $1").bind(day),
            )
            .expect("a valid statement")
    };

    let held = delete(&a, 1).execute(&db.pool).await.expect("delete");
    assert_eq!(held.rows_affected(), 1, "the holder's write takes effect");

    // Expired but not taken over: still a's.
    clock.advance(ttl + Duration::from_secs(1));
    let expired = delete(&a, 2).execute(&db.pool).await.expect("delete");
    assert_eq!(expired.rows_affected(), 1);

    let b = named
        .acquire(&db.pool, "archiver", "b", ttl)
        .await
        .expect("acquire")
        .expect("expired, so free");
    let late = delete(&a, 3).execute(&db.pool).await.expect("delete");
    assert_eq!(
        late.rows_affected(),
        0,
        "a deposed holder's write is refused"
    );

    // A statement with its own WITH list, run by the new holder.
    let counted: (i64, i64) = named
        .fenced_query(
            &b,
            Sql::new(
                "WITH gone AS (DELETE FROM reports USING lease_held WHERE day = $1 RETURNING 1)
                 SELECT (SELECT count(*) FROM lease_held), (SELECT count(*) FROM gone)",
            )
            .bind(3),
        )
        .expect("a valid statement")
        .try_map(|row: sqlx::postgres::PgRow| {
            use sqlx::Row as _;
            Ok((row.try_get(0)?, row.try_get(1)?))
        })
        .fetch_one(&db.pool)
        .await
        .expect("delete");
    assert_eq!(counted, (1, 1));
}

#[tokio::test]
async fn holders_lists_the_valid_leases_under_a_prefix() {
    let db = testkit::database(&[&leases::MIGRATOR]).await;
    let clock = ManualClock::new(db_now(&db.pool).await);
    let named = NamedLeases::new().with_clock(clock.clone());
    for (name, ttl) in [
        ("group/b", MINUTE),
        ("group/a", MINUTE),
        ("group/c", MINUTE / 2),
        ("other/a", MINUTE),
    ] {
        named
            .acquire(&db.pool, name, "owner", ttl)
            .await
            .expect("acquire")
            .expect("free");
    }
    let released = named
        .acquire(&db.pool, "group/d", "owner", MINUTE)
        .await
        .expect("acquire")
        .expect("free");
    assert!(named.release(&db.pool, &released).await.expect("release"));
    let names =
        |leases: Vec<NamedLease>| -> Vec<String> { leases.into_iter().map(|l| l.name).collect() };
    let live = named.holders(&db.pool, "group/").await.expect("holders");
    assert_eq!(names(live), ["group/a", "group/b", "group/c"]);
    clock.advance(MINUTE * 3 / 4);
    let live = named.holders(&db.pool, "group/").await.expect("holders");
    assert_eq!(names(live), ["group/a", "group/b"], "group/c expired");
}
