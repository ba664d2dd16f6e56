//! Grouped tables: each group is claimed in id order, in runs of consecutive rows.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::*;

/// `jobs` with a `grp` column and the group index; `groups` is `(group, rows)`, ids in order.
pub(super) async fn grouped(groups: &[(i32, i64)]) -> (TestDb, TableSpec) {
    let (db, _) = jobs(0).await;
    sqlx::raw_sql(
        "ALTER TABLE jobs ADD COLUMN grp int NOT NULL;
         CREATE INDEX jobs_grp ON jobs (grp, id) WHERE next_attempt_at IS NOT NULL;",
    )
    .execute(&db.pool)
    .await
    .expect("groups");
    let mut next = 1_i64;
    for &(grp, rows) in groups {
        sqlx::query(
            "INSERT INTO jobs (id, grp, next_attempt_at)
             SELECT g, $1, now() - interval '1 hour' FROM generate_series($2::int8, $3) g",
        )
        .bind(grp)
        .bind(next)
        .bind(next + rows - 1)
        .execute(&db.pool)
        .await
        .expect("insert");
        next += rows;
    }
    let spec = TableSpec::builder("jobs")
        .group_columns(&["grp"])
        .build()
        .expect("spec");
    (db, spec)
}

#[tokio::test]
async fn a_claim_takes_each_head_with_the_free_rows_behind_it() {
    // Group 1: ids 1-6, group 2: ids 7-9.
    let (db, spec) = grouped(&[(1, 6), (2, 3)]).await;
    sqlx::raw_sql(
        "UPDATE jobs SET next_attempt_at = now() + interval '1 hour' WHERE id = 4;
         UPDATE jobs SET lease_owner = 'other', lease_expires_at = now() + interval '1 hour' WHERE id = 8;",
    )
    .execute(&db.pool)
    .await
    .expect("a waiting row and a leased row");
    let first = RowLeases::new(&spec, "first");
    assert_eq!(
        claim_ids(&first, &db.pool, 100).await,
        [1, 2, 3, 7],
        "each run stops at the first row that is not due or is leased"
    );
    let second = RowLeases::new(&spec, "second");
    assert!(
        claim_ids(&second, &db.pool, 100).await.is_empty(),
        "while a head is leased, nothing behind it is claimable"
    );
}

#[tokio::test]
async fn a_cut_run_keeps_its_first_rows_and_the_rest_waits_for_them() {
    let (db, spec) = grouped(&[(1, 10), (2, 10)]).await;
    let worker = RowLeases::new(&spec, "w");
    let first = worker
        .claim::<i64>(&db.pool, 4, MINUTE)
        .await
        .expect("claim");
    let mut ids: Vec<i64> = first.iter().map(|lease| lease.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3, 4], "the oldest head's run, cut to the limit");
    assert_eq!(
        claim_ids(&RowLeases::new(&spec, "other"), &db.pool, 3).await,
        [11, 12, 13],
        "another claimer gets the next group, never the rest of the first run"
    );
    worker
        .complete_many(&db.pool, &first)
        .await
        .expect("complete");
    assert_eq!(claim_ids(&worker, &db.pool, 100).await, [5, 6, 7, 8, 9, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claimers_finish_every_group_in_id_order() {
    let groups: Vec<(i32, i64)> = (0..20).map(|g| (g, 50)).collect();
    let (db, spec) = grouped(&groups).await;
    // Each worker records a row while it holds the row's lease, then completes it.
    let log: Arc<Mutex<BTreeMap<i32, Vec<i64>>>> = Arc::default();
    let workers = (0..8).map(|n| {
        let (pool, spec, log) = (db.pool.clone(), spec.clone(), Arc::clone(&log));
        tokio::spawn(async move {
            let worker = RowLeases::new(&spec, format!("w{n}"));
            loop {
                let claimed = worker.claim::<i64>(&pool, 30, MINUTE).await.expect("claim");
                if claimed.is_empty() {
                    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
                        .fetch_one(&pool)
                        .await
                        .expect("count");
                    if left == 0 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let mut ids: Vec<i64> = claimed.iter().map(|lease| lease.id).collect();
                ids.sort_unstable();
                {
                    let mut log = log.lock().expect("log");
                    for id in ids {
                        let grp = i32::try_from((id - 1) / 50).expect("small");
                        log.entry(grp).or_default().push(id);
                    }
                }
                let done = worker
                    .complete_many(&pool, &claimed)
                    .await
                    .expect("complete");
                assert_eq!(done.len(), claimed.len(), "no lease was lost");
            }
        })
    });
    for worker in join_all(workers).await {
        worker.expect("worker");
    }
    let log = log.lock().expect("log");
    assert_eq!(log.len(), 20);
    for (grp, ids) in log.iter() {
        let expected: Vec<i64> = (i64::from(*grp) * 50 + 1..=i64::from(*grp) * 50 + 50).collect();
        assert_eq!(ids, &expected, "group {grp} in id order, each row once");
    }
}

/// The lease columns of row `id`: owner, token, attempts, and whether an expiry is set.
async fn lease_row(pool: &PgPool, id: i64) -> (Option<String>, i64, i32, bool) {
    sqlx::query_as(
        "SELECT lease_owner, lease_token, attempts, lease_expires_at IS NOT NULL
         FROM jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("row")
}

/// `leases` sorted by id.
fn by_id(mut leases: Vec<Lease<i64>>) -> Vec<Lease<i64>> {
    leases.sort_unstable_by_key(|lease| lease.id);
    leases
}

#[tokio::test]
async fn a_claim_writes_only_the_heads_and_each_member_holds_its_heads_lease() {
    // Group 1: ids 1-4, group 2: ids 5-6.
    let (db, spec) = grouped(&[(1, 4), (2, 2)]).await;
    let worker = RowLeases::new(&spec, "w");
    let leases = by_id(worker.claim(&db.pool, 100, MINUTE).await.expect("claim"));
    assert_eq!(leases.len(), 6);
    for lease in &leases {
        let head = &leases[if lease.id <= 4 { 0 } else { 4 }];
        assert_eq!(
            lease.holder, head.id,
            "row {} is held through its head",
            lease.id
        );
        assert_eq!(
            (lease.token, lease.expires_at),
            (head.token, head.expires_at)
        );
        assert_eq!(lease.attempts, 1, "the claim is each row's first attempt");
    }
    for head in [1, 5] {
        assert_eq!(
            lease_row(&db.pool, head).await,
            (Some("w".into()), 1, 1, true)
        );
    }
    for member in [2, 3, 4, 6] {
        assert_eq!(
            lease_row(&db.pool, member).await,
            (None, 0, 0, false),
            "member {member} is not written"
        );
    }
    let renewed = worker
        .renew_many(&db.pool, &leases, MINUTE * 2)
        .await
        .expect("renew");
    assert_eq!(renewed.len(), 6, "renewing the heads renews every member");
    let done = worker.complete_many(&db.pool, &leases).await.expect("done");
    assert_eq!(done.len(), 6);
}

/// Group 1 (ids 1 to 3) claimed as one run by `stale`, whose lease has then expired; `current`
/// shares its clock.
async fn an_expired_run() -> (TestDb, RowLeases, RowLeases, Vec<Lease<i64>>) {
    let (db, spec) = grouped(&[(1, 3)]).await;
    let clock = ManualClock::new(db_now(&db.pool).await);
    let stale = RowLeases::new(&spec, "stale").with_clock(clock.clone());
    let current = RowLeases::new(&spec, "current").with_clock(clock.clone());
    let old = by_id(stale.claim(&db.pool, 10, MINUTE).await.expect("claim"));
    clock.advance(MINUTE * 2);
    (db, stale, current, old)
}

#[tokio::test]
async fn a_member_is_lost_with_its_head_and_held_by_whoever_takes_the_head_over() {
    let (db, stale, current, old) = an_expired_run().await;
    let new = by_id(current.claim(&db.pool, 10, MINUTE).await.expect("claim"));
    assert_eq!(new.iter().map(|l| l.id).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(new[2].token > old[2].token);

    let moved = stale
        .move_query(&old[2], Sql::new("SELECT 1 FROM moved"))
        .expect("a valid statement")
        .execute(&db.pool)
        .await
        .expect("move");
    assert_eq!(
        moved.rows_affected(),
        0,
        "a member's lease is lost with its head's"
    );
    assert!(
        stale
            .renew_many(&db.pool, &old, MINUTE)
            .await
            .expect("renew")
            .is_empty()
    );
    only_the_new_holder_holds(&db.pool, (&stale, &old), (&current, &new)).await;
}

#[tokio::test]
async fn a_released_member_counts_its_attempt_and_stays_behind_as_its_groups_next_head() {
    let (db, spec) = grouped(&[(1, 5)]).await;
    let worker = RowLeases::new(&spec, "w");
    let leases = by_id(worker.claim(&db.pool, 10, MINUTE).await.expect("claim"));
    assert!(
        worker
            .release(&db.pool, &leases[2], Duration::from_secs(3600))
            .await
            .expect("release")
    );
    assert_eq!(lease_row(&db.pool, 3).await, (None, 0, 1, false));
    let done = worker
        .complete_many(&db.pool, &leases[..2])
        .await
        .expect("complete");
    assert_eq!(done, [1, 2]);
    assert!(
        worker
            .complete_many(&db.pool, &leases[3..])
            .await
            .expect("complete")
            .is_empty(),
        "the rest of the run was held through its head, which is finished"
    );
    assert!(
        claim_ids(&RowLeases::new(&spec, "other"), &db.pool, 10)
            .await
            .is_empty(),
        "row 3, waiting for its retry, heads the group"
    );
}

#[tokio::test]
async fn a_head_taken_over_as_a_member_cuts_its_old_holder_off() {
    let (db, stale, current, old) = an_expired_run().await;
    // A row of the group committed late with a smaller id: the next claim's head, with the
    // expired head 1 and its run behind it.
    sqlx::query(
        "INSERT INTO jobs (id, grp, next_attempt_at) VALUES (0, 1, now() - interval '1 hour')",
    )
    .execute(&db.pool)
    .await
    .expect("late row");
    let new = by_id(current.claim(&db.pool, 10, MINUTE).await.expect("claim"));
    assert_eq!(new.iter().map(|l| l.id).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert!(new.iter().all(|lease| lease.holder == 0));

    // Row 1's old holder lost its run when row 1 was claimed behind row 0.
    only_the_new_holder_holds(&db.pool, (&stale, &old), (&current, &new)).await;
}

/// `stale`'s leases `old` are lost (a member's release, then the whole batch's completion change
/// nothing), and `current` completes every one of its leases `new`.
async fn only_the_new_holder_holds(
    pool: &PgPool,
    (stale, old): (&RowLeases, &[Lease<i64>]),
    (current, new): (&RowLeases, &[Lease<i64>]),
) {
    assert!(
        !stale
            .release(pool, &old[1], Duration::ZERO)
            .await
            .expect("release")
    );
    assert!(
        stale
            .complete_many(pool, old)
            .await
            .expect("complete")
            .is_empty()
    );
    let done = current.complete_many(pool, new).await.expect("complete");
    assert_eq!(done.len(), new.len());
}
