//! The claim cursor: claims go on from the last full claim, and back to the head of the due
//! index after a short claim or once the rescan interval passed.

use super::*;

/// Empties `jobs` and inserts rows due the given minutes ago, keyed by position from 1.
async fn due_minutes_ago(pool: &PgPool, minutes: &[i32]) {
    sqlx::query(
        "INSERT INTO jobs (id, next_attempt_at)
         SELECT n, now() - make_interval(mins => m) FROM unnest($1::int4[]) WITH ORDINALITY AS x(m, n)",
    )
    .bind(minutes)
    .execute(pool)
    .await
    .expect("insert jobs");
}

async fn late_row(pool: &PgPool) {
    // Committed after the claims below began, with a due time before theirs.
    sqlx::query("INSERT INTO jobs (id, next_attempt_at) VALUES (5, now() - interval '20 minutes')")
        .execute(pool)
        .await
        .expect("late row");
}

#[tokio::test]
async fn a_cursor_goes_on_from_the_last_full_claim_and_back_to_the_head_after_a_short_one() {
    let (db, spec) = jobs(0).await;
    due_minutes_ago(&db.pool, &[10, 9, 8, 7]).await;
    let worker = RowLeases::new(&spec, "worker").claim_cursor(Duration::from_secs(3600));

    let first: Vec<Lease<i64>> = worker.claim(&db.pool, 2, MINUTE).await.expect("claim");
    assert_eq!(first.iter().map(|l| l.id).collect::<Vec<_>>(), [1, 2]);
    worker
        .complete_many(&db.pool, &first)
        .await
        .expect("complete");
    late_row(&db.pool).await;

    assert_eq!(
        claim_ids(&worker, &db.pool, 2).await,
        [3, 4],
        "a full claim starts the next one at its earliest due time: the late row is behind it"
    );
    assert_eq!(
        claim_ids(&worker, &db.pool, 2).await,
        Vec::<i64>::new(),
        "nothing is free from the cursor on"
    );
    assert_eq!(
        claim_ids(&worker, &db.pool, 2).await,
        [5],
        "after a short claim the walk starts at the head again"
    );
}

#[tokio::test]
async fn a_cursor_whose_rescan_interval_passed_walks_from_the_head() {
    let (db, spec) = jobs(0).await;
    due_minutes_ago(&db.pool, &[10, 9, 8, 7]).await;
    let worker = RowLeases::new(&spec, "worker").claim_cursor(Duration::ZERO);

    let first: Vec<Lease<i64>> = worker.claim(&db.pool, 2, MINUTE).await.expect("claim");
    worker
        .complete_many(&db.pool, &first)
        .await
        .expect("complete");
    late_row(&db.pool).await;
    assert_eq!(claim_ids(&worker, &db.pool, 2).await, [3, 5]);
}
