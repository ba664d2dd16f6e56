//! The fencing check's plan: on the key index, with the `(id, token)` pairs (and, for a table
//! claimed in runs, the heads' groups) hashed, whatever the statistics say (a join with the pairs
//! turns into a nested loop, quadratic in the batch, when they are stale).

use sqlx::Executor as _;

use super::*;

#[tokio::test]
async fn the_fencing_check_stays_on_the_key_index_and_hashes_the_tokens_with_stale_statistics() {
    let (db, spec) = jobs(20_000).await;
    assert_fenced_plan(&db, &spec).await;
}

#[tokio::test]
async fn in_runs_the_fencing_check_also_hashes_the_heads_groups_with_stale_statistics() {
    let groups: Vec<(i32, i64)> = (0..1000).map(|g| (g, 20)).collect();
    let (db, spec) = super::groups::grouped(&groups).await;
    assert_fenced_plan(&db, &spec).await;
}

/// Claims 1,000 rows, then explains their completion as a generic plan over statistics that say
/// the table is a single row.
async fn assert_fenced_plan(db: &TestDb, spec: &TableSpec) {
    let leases = RowLeases::new(spec, "planner");
    let claimed: Vec<Lease<i64>> = leases.claim(&db.pool, 1000, MINUTE).await.expect("claim");
    assert_eq!(claimed.len(), 1000);
    let complete = leases
        .complete_query(&claimed[0], Sql::new(""))
        .expect("statement");
    let sql = sqlx::Execute::sql(complete).as_str().to_owned();

    let mut conn = db.pool.acquire().await.expect("connection");
    conn.execute("UPDATE pg_class SET reltuples = 1, relpages = 1 WHERE relname = 'jobs'")
        .await
        .expect("stale statistics");
    conn.execute("SET plan_cache_mode = force_generic_plan")
        .await
        .expect("generic plans");
    conn.execute(sqlx::AssertSqlSafe(format!(
        "PREPARE complete (int8[], int8[], text, timestamptz, interval, int8[]) AS {sql}"
    )))
    .await
    .expect("prepare");
    let array = |values: Vec<i64>| {
        let values: Vec<String> = values.iter().map(i64::to_string).collect();
        format!("'{{{}}}'", values.join(","))
    };
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN EXECUTE complete ({}, {}, 'planner', NULL, '0', {})",
        array(claimed.iter().map(|l| l.id).collect()),
        array(claimed.iter().map(|l| l.token).collect()),
        array(claimed.iter().map(|l| l.holder).collect()),
    )))
    .fetch_all(&mut *conn)
    .await
    .expect("explain");
    let plan = plan.join("\n");
    assert!(plan.contains("jobs_pkey"), "{plan}");
    assert!(plan.contains("hashed SubPlan"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    assert!(!plan.contains("Nested Loop"), "{plan}");
}
