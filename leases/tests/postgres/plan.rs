//! The fencing check's plan: on the key index, with the `(id, token)` pairs hashed, whatever the
//! statistics say (a join with the pairs turns into a nested loop, quadratic in the batch, when
//! they are stale).

use sqlx::Executor as _;

use super::*;

#[tokio::test]
async fn the_fencing_check_stays_on_the_key_index_and_hashes_the_tokens_with_stale_statistics() {
    let (db, spec) = jobs(20_000).await;
    let leases = RowLeases::new(&spec, "planner");
    let claimed: Vec<Lease<i64>> = leases.claim(&db.pool, 1000, MINUTE).await.expect("claim");
    let complete = leases.complete_query(&claimed[0], "").expect("statement");
    let sql = sqlx::Execute::sql(complete).as_str().to_owned();

    let mut conn = db.pool.acquire().await.expect("connection");
    // Statistics that say the table is a single row, and the plan PostgreSQL reuses for every
    // execution of a prepared statement.
    conn.execute("UPDATE pg_class SET reltuples = 1, relpages = 1 WHERE relname = 'jobs'")
        .await
        .expect("stale statistics");
    conn.execute("SET plan_cache_mode = force_generic_plan")
        .await
        .expect("generic plans");
    conn.execute(sqlx::AssertSqlSafe(format!(
        "PREPARE complete (int8[], int8[], text, timestamptz, interval) AS {sql}"
    )))
    .await
    .expect("prepare");
    let ids: Vec<String> = claimed.iter().map(|l| l.id.to_string()).collect();
    let tokens: Vec<String> = claimed.iter().map(|l| l.token.to_string()).collect();
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN EXECUTE complete ('{{{}}}', '{{{}}}', 'planner', NULL, '0')",
        ids.join(","),
        tokens.join(",")
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
