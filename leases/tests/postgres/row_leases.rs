//! Row leases: concurrent claims, expiry and fencing, batch complete and renew, release with a delay.

use super::*;

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
    let spec = kept_jobs();
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
