//! The `leases` crate against a real PostgreSQL server: each test gets its own database.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use leases::{
    Clock, Completion, Heartbeat, Lease, LeaseKeeper, ManualClock, NamedLeases, RowLeases,
    TableSpec,
};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use testkit::TestDb;

const MINUTE: Duration = Duration::from_secs(60);

/// A `jobs` table with the lease columns and `rows` due rows.
async fn jobs(rows: i64) -> (TestDb, TableSpec) {
    let db = testkit::database(&leases::MIGRATOR).await;
    sqlx::raw_sql(
        "CREATE TABLE jobs (
            id bigint PRIMARY KEY,
            lease_owner text,
            lease_token bigint NOT NULL DEFAULT 0,
            lease_expires_at timestamptz,
            attempts int NOT NULL DEFAULT 0,
            next_attempt_at timestamptz DEFAULT now(),
            done_at timestamptz);
         CREATE INDEX jobs_due ON jobs (next_attempt_at, id) WHERE next_attempt_at IS NOT NULL;",
    )
    .execute(&db.pool)
    .await
    .expect("create jobs");
    sqlx::query("INSERT INTO jobs (id, next_attempt_at) SELECT g, now() - interval '1 hour' FROM generate_series(1, $1) g")
        .bind(rows)
        .execute(&db.pool)
        .await
        .expect("insert jobs");
    let spec = TableSpec::builder("jobs").build().expect("valid spec");
    (db, spec)
}

async fn db_now(pool: &PgPool) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT now()")
        .fetch_one(pool)
        .await
        .expect("now")
}

/// Polls `check` until it is true, failing the test after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claimers_get_each_row_exactly_once_without_waiting() {
    let (db, spec) = jobs(10_000).await;
    // A claimer whose transaction stays open holds row locks on its 100 rows for the whole run:
    // anyone waiting on it would hit the lock timeout instead of skipping its rows.
    let blocker = RowLeases::new(&spec, "blocker");
    let mut open_tx = db.pool.begin().await.expect("begin");
    let blocked: Vec<Lease<i64>> = blocker
        .claim(&mut *open_tx, 100, 10 * MINUTE)
        .await
        .expect("claim");
    assert_eq!(blocked.len(), 100);

    // Claimers may only wait on each other for the instant PostgreSQL needs to lock a row version
    // another claim statement just updated; never on a transaction that holds rows.
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(db.options.clone().options([("lock_timeout", "2s")]))
        .await
        .expect("pool");
    let claimers = (0..8).map(|n| {
        let leases = RowLeases::new(&spec, format!("claimer-{n}"));
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut got: Vec<Lease<i64>> = Vec::new();
            loop {
                let batch = leases
                    .claim(&pool, 50, 10 * MINUTE)
                    .await
                    .expect("claim never blocks");
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch);
            }
        })
    });
    let per_claimer: Vec<Vec<Lease<i64>>> = join_all(claimers)
        .await
        .into_iter()
        .map(|r| r.expect("claimer task"))
        .collect();
    open_tx.commit().await.expect("commit");

    let all: Vec<&Lease<i64>> = per_claimer.iter().flatten().chain(&blocked).collect();
    let distinct: HashSet<i64> = all.iter().map(|l| l.id).collect();
    assert_eq!(all.len(), 10_000, "every row claimed once in total");
    assert_eq!(distinct.len(), 10_000, "no row claimed twice");
    assert!(all.iter().all(|l| l.token == 1 && l.attempts == 1));
    assert!(
        per_claimer.iter().filter(|c| !c.is_empty()).count() > 1,
        "work was shared"
    );
    let (owners, tokens): (i64, i64) =
        sqlx::query_as("SELECT count(DISTINCT lease_owner), max(lease_token) FROM jobs")
            .fetch_one(&db.pool)
            .await
            .expect("count");
    assert!(owners > 2);
    assert_eq!(tokens, 1, "no row was claimed a second time");
}

#[tokio::test]
async fn expired_lease_is_reclaimed_with_higher_token_and_fences_the_first_owner() {
    let (db, spec) = jobs(1).await;
    let clock = ManualClock::new(db_now(&db.pool).await);
    let first = RowLeases::new(&spec, "first").with_clock(clock.clone());
    let second = RowLeases::new(&spec, "second").with_clock(clock.clone());

    let [lease]: [Lease<i64>; 1] = first
        .claim(&db.pool, 10, MINUTE)
        .await
        .expect("claim")
        .try_into()
        .expect("one row");
    assert!(
        second
            .claim::<i64>(&db.pool, 10, MINUTE)
            .await
            .expect("claim")
            .is_empty(),
        "held while valid"
    );

    clock.advance(MINUTE + Duration::from_secs(1));
    let [stolen]: [Lease<i64>; 1] = second
        .claim(&db.pool, 10, MINUTE)
        .await
        .expect("claim")
        .try_into()
        .expect("reclaimed");
    assert_eq!(stolen.id, lease.id);
    assert!(stolen.token > lease.token, "token increases on reclaim");
    assert_eq!(stolen.attempts, 2);

    assert_eq!(
        first.renew(&db.pool, &lease, MINUTE).await.expect("renew"),
        None,
        "renew reports lost"
    );
    assert!(
        !first.complete(&db.pool, &lease).await.expect("complete"),
        "complete reports lost"
    );
    assert!(
        !first
            .release(&db.pool, &lease, Duration::ZERO)
            .await
            .expect("release"),
        "release reports lost"
    );
    assert!(
        first
            .complete_many(&db.pool, std::slice::from_ref(&lease))
            .await
            .expect("batch")
            .is_empty()
    );

    let (owner, token, expires): (String, i64, DateTime<Utc>) =
        sqlx::query_as("SELECT lease_owner, lease_token, lease_expires_at FROM jobs WHERE id = $1")
            .bind(lease.id)
            .fetch_one(&db.pool)
            .await
            .expect("row");
    assert_eq!(
        (owner.as_str(), token, expires),
        ("second", stolen.token, stolen.expires_at),
        "stale owner changed nothing"
    );

    assert!(second.complete(&db.pool, &stolen).await.expect("complete"));
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(left, 0, "Completion::Delete removes the row");
}

#[tokio::test]
async fn batch_complete_and_renew_report_exactly_the_leases_still_held() {
    let (db, _) = jobs(10).await;
    let spec = TableSpec::builder("jobs")
        .completion(Completion::Keep)
        .completed_at_column("done_at")
        .build()
        .expect("spec");
    let clock = ManualClock::new(db_now(&db.pool).await);
    let a = RowLeases::new(&spec, "a").with_clock(clock.clone());
    let b = RowLeases::new(&spec, "b").with_clock(clock.clone());
    let held: Vec<Lease<i64>> = a.claim(&db.pool, 10, MINUTE).await.expect("claim");
    assert_eq!(held.len(), 10);

    // b takes over the first three after a's leases expire; a renews only those not yet taken.
    clock.advance(2 * MINUTE);
    let taken: Vec<Lease<i64>> = b.claim(&db.pool, 3, MINUTE).await.expect("claim");
    let renewed = a.renew_many(&db.pool, &held, MINUTE).await.expect("renew");
    let renewed_ids: HashSet<i64> = renewed.iter().map(|(id, _)| *id).collect();
    let taken_ids: HashSet<i64> = taken.iter().map(|l| l.id).collect();
    assert_eq!(renewed_ids.len(), 7);
    assert!(renewed_ids.is_disjoint(&taken_ids));

    let done = a.complete_many(&db.pool, &held).await.expect("complete");
    assert_eq!(done.len(), 7);
    let kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE next_attempt_at IS NULL AND lease_expires_at IS NULL
         AND lease_owner = 'a' AND done_at = $1",
    )
    .bind(clock.now())
    .fetch_one(&db.pool)
    .await
    .expect("count");
    assert_eq!(
        kept, 7,
        "Completion::Keep keeps finished rows, never due again"
    );
    assert!(
        a.complete_many(&db.pool, &held)
            .await
            .expect("again")
            .is_empty(),
        "completing twice is refused"
    );

    clock.advance(10 * MINUTE);
    let again: Vec<Lease<i64>> = b.claim(&db.pool, 10, MINUTE).await.expect("claim");
    assert_eq!(again.len(), 3, "finished rows are never claimed again");
}

#[tokio::test]
async fn release_with_delay_makes_the_row_due_only_after_the_delay() {
    let (db, spec) = jobs(1).await;
    let clock = ManualClock::new(db_now(&db.pool).await);
    let worker = RowLeases::new(&spec, "w").with_clock(clock.clone());
    let [lease]: [Lease<i64>; 1] = worker
        .claim(&db.pool, 1, MINUTE)
        .await
        .expect("claim")
        .try_into()
        .expect("one");
    assert!(
        worker
            .release(&db.pool, &lease, Duration::from_secs(30))
            .await
            .expect("release")
    );
    assert!(
        !worker
            .release(&db.pool, &lease, Duration::ZERO)
            .await
            .expect("release"),
        "released once"
    );

    clock.advance(Duration::from_secs(29));
    assert!(
        worker
            .claim::<i64>(&db.pool, 1, MINUTE)
            .await
            .expect("claim")
            .is_empty(),
        "not due before the delay"
    );
    clock.advance(Duration::from_secs(2));
    let again: Vec<Lease<i64>> = worker.claim(&db.pool, 1, MINUTE).await.expect("claim");
    assert_eq!(again.len(), 1, "due after the delay");
    assert_eq!((again[0].token, again[0].attempts), (2, 2));
}

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

    let held = heartbeat.stop().await;
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
    assert!(heartbeat.stop().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_lease_has_one_holder_and_fails_over_when_the_holder_is_cut_off() {
    let db = testkit::database(&leases::MIGRATOR).await;
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
    let db = testkit::database(&leases::MIGRATOR).await;
    let ttl = Duration::from_secs(2);
    let every = Duration::from_millis(250);
    let mut a = LeaseKeeper::start(NamedLeases::new(), db.pool.clone(), "job", "a", ttl, every)
        .expect("start");
    a.acquired().await;
    let mut b = LeaseKeeper::start(NamedLeases::new(), db.pool.clone(), "job", "b", ttl, every)
        .expect("start");
    drop(a); // a crash: no release, no more renewals
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
    let db = testkit::database(&leases::MIGRATOR).await;
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
async fn bad_identifiers_and_config_are_rejected_with_clear_errors() {
    let err = TableSpec::builder("jobs; DROP TABLE jobs")
        .build()
        .expect_err("rejected");
    assert!(err.to_string().contains("invalid table"), "{err}");
    let err = TableSpec::builder("jobs")
        .id_column("id) OR (1=1")
        .build()
        .expect_err("rejected");
    assert!(err.to_string().contains("invalid id column"), "{err}");

    let (db, spec) = jobs(1).await;
    let w = RowLeases::new(&spec, "w");
    let err = w
        .claim::<i64>(&db.pool, 1, Duration::ZERO)
        .await
        .expect_err("zero ttl");
    assert!(matches!(err, leases::Error::InvalidConfig(_)), "{err}");
    let err = LeaseKeeper::start(
        NamedLeases::new(),
        db.pool.clone(),
        "n",
        "o",
        MINUTE,
        MINUTE,
    )
    .expect_err("interval");
    assert!(err.to_string().contains("shorter than the ttl"), "{err}");
}
