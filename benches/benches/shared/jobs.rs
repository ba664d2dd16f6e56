//! The `jobs` table the `leases` benchmarks claim from, in a fresh database.

use leases::{RowLeases, TableSpec};
use testkit::TestDb;

/// A fresh database with leases' migrations and an empty `jobs` table (the lease columns and a
/// due index), and the `RowLeases` over it, owned by `bench`.
pub(crate) async fn database() -> (TestDb, RowLeases) {
    let db = testkit::database(&[&leases::MIGRATOR]).await;
    sqlx::raw_sql(
        "CREATE TABLE jobs (
            id bigint PRIMARY KEY, lease_owner text, lease_token bigint NOT NULL DEFAULT 0,
            lease_expires_at timestamptz, attempts int NOT NULL DEFAULT 0,
            next_attempt_at timestamptz DEFAULT now());
         CREATE INDEX jobs_due ON jobs (next_attempt_at, id) WHERE next_attempt_at IS NOT NULL;",
    )
    .execute(&db.pool)
    .await
    .expect("create");
    let leases = RowLeases::new(&TableSpec::builder("jobs").build().expect("spec"), "bench");
    (db, leases)
}
