//! Fenced statements with the caller's columns, claims by key, and claim filters.

use super::*;
use leases::{Binds, Error, KeyClaim};
use sqlx::FromRow;

/// How many rows of `jobs` satisfy `predicate`.
async fn jobs_where(pool: &PgPool, predicate: &'static str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM jobs WHERE {predicate}"
    )))
    .fetch_one(pool)
    .await
    .expect("count")
}

#[tokio::test]
async fn release_complete_and_move_write_the_callers_columns_only_while_the_lease_is_held() {
    let (db, _) = jobs(3).await;
    sqlx::raw_sql(
        "ALTER TABLE jobs ADD COLUMN last_error text, ADD COLUMN result text;
         CREATE TABLE failed_jobs (id bigint PRIMARY KEY, reason text NOT NULL);",
    )
    .execute(&db.pool)
    .await
    .expect("columns");
    let spec = kept_jobs();
    let clock = ManualClock::new(db_now(&db.pool).await);
    let stale = RowLeases::new(&spec, "stale").with_clock(clock.clone());
    let current = RowLeases::new(&spec, "current").with_clock(clock.clone());
    let old: Vec<Lease<i64>> = stale.claim(&db.pool, 3, MINUTE).await.expect("claim");
    clock.advance(2 * MINUTE);
    let new: Vec<Lease<i64>> = current.claim(&db.pool, 3, MINUTE).await.expect("claim");
    assert_eq!((old.len(), new.len()), (3, 3));
    assert_eq!(
        release_complete_move(&stale, &old, &db.pool).await,
        (0, 0, 0),
        "the stale owner changes nothing"
    );
    assert_eq!(
        jobs_where(
            &db.pool,
            "lease_owner = 'current' AND last_error IS NULL AND result IS NULL"
        )
        .await,
        3,
        "the stale owner wrote none of its columns"
    );
    assert_eq!(
        release_complete_move(&current, &new, &db.pool).await,
        (1, 1, 1),
        "the current owner changes each row once"
    );
    let now = clock.now().expect("manual");
    let (error, due): (String, DateTime<Utc>) = sqlx::query_as(
        "SELECT last_error, next_attempt_at FROM jobs WHERE id = $1 AND lease_owner IS NULL",
    )
    .bind(new[0].id)
    .fetch_one(&db.pool)
    .await
    .expect("released row");
    assert_eq!(
        (error.as_str(), due),
        ("broker down", now + chrono::TimeDelta::seconds(30))
    );
    assert_eq!(
        jobs_where(
            &db.pool,
            "result = 'ok' AND done_at IS NOT NULL AND next_attempt_at IS NULL"
        )
        .await,
        1
    );
    let failed: Vec<(i64, String)> = sqlx::query_as("SELECT id, reason FROM failed_jobs")
        .fetch_all(&db.pool)
        .await
        .expect("failed");
    assert_eq!(failed, [(new[2].id, "poison".to_owned())]);
    assert_eq!(
        jobs_where(&db.pool, "true").await,
        2,
        "the moved row left the table"
    );

    let deleting = RowLeases::new(&TableSpec::builder("jobs").build().expect("spec"), "d");
    let Err(err) = deleting.complete_query(&new[1], Sql::new("result = $1").bind("ok")) else {
        panic!("a deleted row has no columns left to set");
    };
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");

    // Numbered after the statement's own parameters (the old contract), or a value short: both
    // refused when the statement is built, before anything reaches PostgreSQL.
    for set in [
        Sql::new("last_error = $7").bind("x"),
        Sql::new("last_error = $1, note = $2").bind("x"),
    ] {
        let Err(err) = current.release_query(&new[0], Duration::ZERO, set) else {
            panic!("a statement with misnumbered parameters was built");
        };
        assert!(matches!(err, Error::InvalidStatement(_)), "{err}");
    }
}

/// Retries the first lease with `last_error`, completes the second with `result`, moves the third
/// to `failed_jobs`; how many rows each changed.
async fn release_complete_move(
    holder: &RowLeases,
    leases: &[Lease<i64>],
    pool: &PgPool,
) -> (u64, u64, u64) {
    let released = holder
        .release_query(
            &leases[0],
            Duration::from_secs(30),
            Sql::new("last_error = $1").bind("broker down"),
        )
        .expect("release")
        .execute(pool)
        .await
        .expect("release");
    let completed = holder
        .complete_query(&leases[1], Sql::new("result = $1").bind("ok"))
        .expect("complete")
        .execute(pool)
        .await
        .expect("complete");
    let moved = holder
        .move_query(
            &leases[2],
            Sql::new("INSERT INTO failed_jobs (id, reason) SELECT id, $1 FROM moved")
                .bind("poison"),
        )
        .expect("move")
        .execute(pool)
        .await
        .expect("move");
    (
        released.rows_affected(),
        completed.rows_affected(),
        moved.rows_affected(),
    )
}

/// One row per name, claimed by key: no attempts, no schedule.
const LOCK: KeyClaim = KeyClaim {
    conflict: "name",
    columns: "name, note",
    values: "$1, $2",
    from: "",
    on_claim: "note = excluded.note",
    claim_when: "locks.note IS DISTINCT FROM 'frozen'",
};

async fn claim_lock(locks: &RowLeases, pool: &PgPool, note: &str) -> Option<Lease<i64>> {
    let row = locks
        .claim_key_query(
            &LOCK,
            MINUTE,
            Binds::new().bind("report").bind(note.to_owned()),
        )
        .expect("query")
        .fetch_optional(pool)
        .await
        .expect("claim");
    row.as_ref()
        .map(Lease::from_row)
        .transpose()
        .expect("lease")
}

#[tokio::test]
async fn claim_by_key_inserts_or_takes_over_a_free_row_and_fences_the_previous_holder() {
    let db = testkit::database(&[&leases::MIGRATOR]).await;
    sqlx::raw_sql(
        "CREATE TABLE locks (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name text NOT NULL UNIQUE,
            note text,
            lease_owner text,
            lease_token bigint NOT NULL DEFAULT 0,
            lease_expires_at timestamptz)",
    )
    .execute(&db.pool)
    .await
    .expect("create locks");
    let spec = TableSpec::builder("locks")
        .without_schedule()
        .completion(Completion::Keep)
        .build()
        .expect("spec");
    let clock = ManualClock::new(db_now(&db.pool).await);
    let a = RowLeases::new(&spec, "a").with_clock(clock.clone());
    let b = RowLeases::new(&spec, "b").with_clock(clock.clone());

    let first = claim_lock(&a, &db.pool, "first").await.expect("inserted");
    assert_eq!((first.token, first.attempts), (1, 1));
    assert!(
        claim_lock(&b, &db.pool, "b").await.is_none(),
        "held while valid"
    );

    clock.advance(MINUTE + Duration::from_secs(1));
    let second = claim_lock(&b, &db.pool, "frozen")
        .await
        .expect("taken over");
    assert_eq!((second.id, second.token, second.attempts), (first.id, 2, 2));
    assert_eq!(
        a.renew(&db.pool, &first, MINUTE).await.expect("renew"),
        None
    );
    assert!(
        !a.release(&db.pool, &first, Duration::ZERO)
            .await
            .expect("release")
    );
    let stale = a
        .complete_query(&first, Sql::new("note = $1").bind("stale"))
        .expect("query")
        .execute(&db.pool)
        .await
        .expect("complete");
    assert_eq!(stale.rows_affected(), 0, "the previous holder is fenced");

    // Released, the row is free at once; the caller's condition still decides.
    assert!(
        b.release(&db.pool, &second, Duration::ZERO)
            .await
            .expect("release")
    );
    assert!(
        claim_lock(&a, &db.pool, "again").await.is_none(),
        "claim_when refuses"
    );
    let note: String = sqlx::query_scalar("SELECT note FROM locks")
        .fetch_one(&db.pool)
        .await
        .expect("note");
    assert_eq!(note, "frozen");

    let err = a
        .claim::<i64>(&db.pool, 1, MINUTE)
        .await
        .expect_err("no due order on a table without a schedule");
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    let err = b
        .release(&db.pool, &second, MINUTE)
        .await
        .expect_err("no later due time either");
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
}

#[tokio::test]
async fn a_claim_filter_names_the_candidate_row_by_its_table() {
    let (db, _) = jobs(6).await;
    sqlx::raw_sql("ALTER TABLE jobs ADD COLUMN grp int; UPDATE jobs SET grp = id % 2")
        .execute(&db.pool)
        .await
        .expect("groups");
    let spec = TableSpec::builder("jobs")
        .claim_filter(
            "NOT EXISTS (SELECT 1 FROM jobs o
             WHERE o.grp = jobs.grp AND o.id < jobs.id AND o.next_attempt_at IS NOT NULL)",
        )
        .build()
        .expect("spec");
    let worker = RowLeases::new(&spec, "w");
    assert_eq!(
        claim_ids(&worker, &db.pool, 10).await,
        [1, 2],
        "one row per group: the oldest"
    );
}
