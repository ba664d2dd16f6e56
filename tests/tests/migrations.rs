//! The crates' migrations run beside an application's own: each crate keeps its history in a
//! table of its own, so no migrator is merged and no version collides.

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{PgPool, SqlSafeStr};

async fn tables(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' AND table_name LIKE '\\_%migrations' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("tables")
}

#[tokio::test]
async fn each_crate_keeps_its_own_history_beside_the_applications() {
    // The application's own first migration has the same version as the leases crate's.
    let version = leases::MIGRATOR.iter().next().expect("a migration").version;
    let own = Migrator::with_migrations(vec![Migration::new(
        version,
        "users".into(),
        MigrationType::Simple,
        "CREATE TABLE users (id bigint PRIMARY KEY)".into_sql_str(),
        false,
    )]);
    let db = testkit::database(&[]).await;
    for _ in 0..2 {
        for migrator in [&own, &leases::MIGRATOR, &outbox::MIGRATOR, &idempotency::MIGRATOR] {
            migrator.run(&db.pool).await.expect("migrations run, twice over");
        }
    }
    assert_eq!(
        tables(&db.pool).await,
        [
            "_idempotency_migrations",
            "_leases_migrations",
            "_outbox_migrations",
            "_sqlx_migrations"
        ]
    );
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(applied, 1, "the application's history holds only its own migration");
    for table in ["users", "leases_named", "outbox_events", "idempotency_keys"] {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(&db.pool)
            .await
            .expect("regclass");
        assert!(exists, "{table} exists");
    }
}
