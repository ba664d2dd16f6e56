//! Start-up: a service's own database with its migrations, and the topics.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::Config;

/// Creates the database `<prefix>_<service>` if needed, connects, and [`migrate`]s it.
///
/// # Errors
///
/// When the server cannot be reached or a migration fails.
pub async fn database(
    config: &Config,
    service: &str,
    own: &Migrator,
) -> Result<PgPool, sqlx::Error> {
    let admin: PgConnectOptions = config.database_url.parse()?;
    let name = format!("{}_{service}", config.db_prefix);
    let mut conn = admin.connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        // The name is built from the configured prefix and a service name; quote it anyway.
        let create = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut conn)
            .await
        {
            // Another process may have created it first: `duplicate_database` when its create
            // committed before this one began, a unique violation on `pg_database`'s name when
            // the two ran at once.
            let code = e.as_database_error().and_then(|d| d.code());
            if !matches!(code.as_deref(), Some("42P04" | "23505")) {
                return Err(e);
            }
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(config.db_pool_size)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(admin.database(&name))
        .await?;
    migrate(&pool, own).await?;
    Ok(pool)
}

/// Drops every database of the stack configured by `config` (`<db_prefix>_<service>`), ending
/// their sessions: what a test or a benchmark does with the stack it started once it passed.
/// Never point it at a prefix whose data you keep.
///
/// # Errors
///
/// When the server cannot be reached or refuses a drop.
pub async fn drop_databases(config: &Config) -> Result<(), sqlx::Error> {
    let admin: PgConnectOptions = config.database_url.parse()?;
    let mut conn = admin.connect().await?;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
            .bind(format!("{}_", config.db_prefix))
            .fetch_all(&mut conn)
            .await?;
    for name in names {
        let drop = format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            name.replace('"', "\"\"")
        );
        sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(&mut conn)
            .await?;
    }
    Ok(())
}

/// Applies the toolkit's migrations and then the service's `own` (see [`migrators`]), after
/// adopting the history of a database migrated by an earlier version (see CHANGELOG.md).
///
/// # Errors
///
/// When a migration fails.
pub async fn migrate(pool: &PgPool, own: &Migrator) -> Result<(), sqlx::Error> {
    adopt_toolkit_history(pool).await?;
    for migrator in migrators(own) {
        migrator.run(pool).await?;
    }
    Ok(())
}

/// The toolkit's migrators whose history an earlier version merged, each with the table it is kept
/// in now (the crates' `sqlx.toml`). `inbox` came after the histories were split: none of its rows
/// is in `_sqlx_migrations`.
fn toolkit() -> [(&'static Migrator, &'static str); 3] {
    [
        (&leases::MIGRATOR, "_leases_migrations"),
        (&outbox::MIGRATOR, "_outbox_migrations"),
        (&idempotency::MIGRATOR, "_idempotency_migrations"),
    ]
}

/// A database migrated before the crates kept their own history has the crates' rows in
/// `_sqlx_migrations`, merged with the service's: moves them to each crate's table (once, in one
/// transaction), so no migrator finds versions it does not know.
async fn adopt_toolkit_history(pool: &PgPool) -> Result<(), sqlx::Error> {
    let legacy: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !legacy {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    for (migrator, table) in toolkit() {
        let versions: Vec<i64> = migrator.iter().map(|m| m.version).collect();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {table} (LIKE _sqlx_migrations INCLUDING ALL)"
        )))
        .execute(&mut *tx)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH moved AS (DELETE FROM _sqlx_migrations WHERE version = ANY($1) RETURNING *)
             INSERT INTO {table} SELECT * FROM moved ON CONFLICT DO NOTHING"
        )))
        .bind(&versions)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// What a service's database runs, in order: the toolkit crates' migrators (leases, outbox,
/// idempotency, inbox), each with its own history table, then the service's `own` (history in
/// `_sqlx_migrations`). Nothing is merged, so versions never collide.
pub fn migrators(own: &Migrator) -> [&Migrator; 5] {
    [
        &leases::MIGRATOR,
        &outbox::MIGRATOR,
        &idempotency::MIGRATOR,
        &inbox::MIGRATOR,
        own,
    ]
}

/// Creates `topics` (with `partitions` partitions) unless they exist (the test broker does not
/// create topics on first use).
///
/// # Errors
///
/// When the broker cannot be reached or refuses a topic for another reason than that it exists.
pub async fn topics(bootstrap: &str, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics(&new, &options).await?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(())
}
