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
        for migrator in [
            &own,
            &leases::MIGRATOR,
            &outbox::MIGRATOR,
            &idempotency::MIGRATOR,
        ] {
            migrator
                .run(&db.pool)
                .await
                .expect("migrations run, twice over");
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
    assert_eq!(
        applied, 1,
        "the application's history holds only its own migration"
    );
    for table in ["users", "leases_named", "outbox_events", "idempotency_keys"] {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(&db.pool)
            .await
            .expect("regclass");
        assert!(exists, "{table} exists");
    }
}

#[tokio::test]
async fn a_database_migrated_with_one_merged_history_is_adopted() {
    let own = || {
        Migration::new(
            20_260_301_000_000,
            "users".into(),
            MigrationType::Simple,
            "CREATE TABLE users (id bigint PRIMARY KEY)".into_sql_str(),
            false,
        )
    };
    // How the commerce services migrated before: everything merged into `_sqlx_migrations`.
    let toolkit = [&leases::MIGRATOR, &outbox::MIGRATOR, &idempotency::MIGRATOR];
    let mut merged: Vec<Migration> = toolkit.iter().flat_map(|m| m.iter().cloned()).collect();
    merged.push(own());
    let db = testkit::database(&[]).await;
    Migrator::with_migrations(merged)
        .run(&db.pool)
        .await
        .expect("the old way");

    let own = Migrator::with_migrations(vec![own()]);
    commerce_platform::setup::migrate(&db.pool, &own)
        .await
        .expect("adopted and migrated");
    commerce_platform::setup::migrate(&db.pool, &own)
        .await
        .expect("and again: nothing to do");
    for (table, migrator) in [
        ("_sqlx_migrations", &own),
        ("_leases_migrations", &leases::MIGRATOR),
        ("_outbox_migrations", &outbox::MIGRATOR),
        ("_idempotency_migrations", &idempotency::MIGRATOR),
    ] {
        let versions: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT version FROM {table} ORDER BY version"
        )))
        .fetch_all(&db.pool)
        .await
        .expect("history");
        let expected: Vec<i64> = migrator.iter().map(|m| m.version).collect();
        assert_eq!(versions, expected, "{table} holds its own migrations");
    }
}
