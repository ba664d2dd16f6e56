//! The crates' migrations run beside an application's own: each crate keeps its history in a
//! table of its own, so no migrator is merged and no version collides.

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{PgPool, SqlSafeStr};
use testkit::TestDb;

async fn tables(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' AND table_name LIKE '\\_%migrations' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("tables")
}

async fn exists(pool: &PgPool, relation: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(relation)
        .fetch_one(pool)
        .await
        .expect("regclass")
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
            &inbox::MIGRATOR,
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
            "_inbox_migrations",
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
    for table in [
        "users",
        "leases_named",
        "outbox_events",
        "idempotency_keys",
        "inbox",
    ] {
        assert!(exists(&db.pool, table).await, "{table} exists");
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
    // `idempotency` had no migration after `PREVIOUS_RELEASE` then (its `inbox_moved` shares its
    // version with outbox's `outbox_identity`, which only separate histories allow).
    let toolkit = [&leases::MIGRATOR, &outbox::MIGRATOR];
    let mut merged: Vec<Migration> = toolkit.iter().flat_map(|m| m.iter().cloned()).collect();
    merged.extend(
        idempotency::MIGRATOR
            .iter()
            .filter(|m| m.version <= PREVIOUS_RELEASE)
            .cloned(),
    );
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
        ("_inbox_migrations", &inbox::MIGRATOR),
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

/// The last version of `idempotency`'s migrations in the release before the inbox moved to the
/// `inbox` crate.
const PREVIOUS_RELEASE: i64 = 20_261_202_000_000;

/// A database migrated by the previous release: the leases' migrations and `idempotency`'s up to
/// [`PREVIOUS_RELEASE`] (with its history in `_idempotency_migrations`, as that release kept it),
/// and two events in its `idempotency_inbox`.
async fn previous_release() -> TestDb {
    let db = testkit::database(&[&leases::MIGRATOR]).await;
    let mut previous = Migrator::with_migrations(
        idempotency::MIGRATOR
            .iter()
            .filter(|m| m.version <= PREVIOUS_RELEASE)
            .cloned()
            .collect(),
    );
    previous.dangerous_set_table_name("_idempotency_migrations");
    previous
        .run(&db.pool)
        .await
        .expect("the previous release's migrations");
    sqlx::query(
        "INSERT INTO idempotency_inbox (consumer, event_id, received_at)
         VALUES ('inventory', 'e1', now() - interval '1 day'), ('payment', 'e2', now())",
    )
    .execute(&db.pool)
    .await
    .expect("two events received");
    db
}

/// The inbox's records, oldest first.
async fn inbox_rows(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query_as("SELECT consumer, event_id FROM inbox ORDER BY received_at, consumer")
        .fetch_all(pool)
        .await
        .expect("inbox rows")
}

/// The versions in both crates' histories.
async fn histories(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT 'idempotency', version FROM _idempotency_migrations
         UNION ALL SELECT 'inbox', version FROM _inbox_migrations ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .expect("histories")
}

/// Both orders in which a service can run the two migrators.
fn orders() -> [[&'static Migrator; 2]; 2] {
    [
        [&idempotency::MIGRATOR, &inbox::MIGRATOR],
        [&inbox::MIGRATOR, &idempotency::MIGRATOR],
    ]
}

async fn run(pool: &PgPool, migrators: [&Migrator; 2]) {
    for migrator in migrators {
        migrator.run(pool).await.expect("migrations run");
    }
}

/// Runs the migrators of `order` one at a time; after each (so whichever runs first does it by
/// itself), `inbox` holds `expected` and `idempotency_inbox` is gone.
async fn run_each_expecting(pool: &PgPool, order: [&Migrator; 2], expected: &[(&str, &str)]) {
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|&(consumer, event)| (consumer.into(), event.into()))
        .collect();
    let names: Vec<_> = order.iter().map(|m| m.table_name.clone()).collect();
    for (migrator, name) in order.into_iter().zip(&names) {
        migrator.run(pool).await.expect("migrations run");
        assert_eq!(inbox_rows(pool).await, expected, "{names:?}, after {name}");
        assert!(
            !exists(pool, "idempotency_inbox").await,
            "{names:?}, after {name}"
        );
    }
}

#[tokio::test]
async fn the_previous_releases_inbox_becomes_inbox_whichever_migrator_runs_first() {
    for (n, order) in orders().into_iter().enumerate() {
        let db = previous_release().await;
        run_each_expecting(&db.pool, order, &[("inventory", "e1"), ("payment", "e2")]).await;
        for index in ["inbox_pkey", "inbox_received_at"] {
            assert!(exists(&db.pool, index).await, "order {n}: {index}");
        }
        let history = histories(&db.pool).await;
        run(&db.pool, order).await;
        run(&db.pool, order).await;
        assert_eq!(histories(&db.pool).await, history, "order {n}: no-op");
        assert_eq!(inbox_rows(&db.pool).await.len(), 2, "order {n}: no-op");
    }
}

#[tokio::test]
async fn when_both_inboxes_exist_the_old_ones_records_are_copied_over() {
    for order in orders() {
        let db = previous_release().await;
        // An `inbox` already there (created by hand here), holding one of the old records.
        sqlx::raw_sql(
            "CREATE TABLE inbox (
                consumer    text NOT NULL,
                event_id    text NOT NULL,
                received_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (consumer, event_id));
             INSERT INTO inbox (consumer, event_id, received_at)
             VALUES ('inventory', 'e1', now() - interval '1 day'), ('shipping', 'e3', now())",
        )
        .execute(&db.pool)
        .await
        .expect("an inbox");
        // Every record once.
        let expected = [("inventory", "e1"), ("payment", "e2"), ("shipping", "e3")];
        run_each_expecting(&db.pool, order, &expected).await;
    }
}

#[tokio::test]
async fn a_fresh_database_has_an_inbox_only_when_it_runs_the_inbox_migrator() {
    let http_only = testkit::database(&[&leases::MIGRATOR, &idempotency::MIGRATOR]).await;
    for table in ["inbox", "idempotency_inbox"] {
        assert!(!exists(&http_only.pool, table).await, "{table}");
    }
    for (n, order) in orders().into_iter().enumerate() {
        let db = testkit::database(&[&leases::MIGRATOR]).await;
        run(&db.pool, order).await;
        assert!(exists(&db.pool, "inbox").await, "order {n}");
        assert!(!exists(&db.pool, "idempotency_inbox").await, "order {n}");
    }
}
