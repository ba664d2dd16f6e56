//! Start-up: a service's own database with its migrations, and the topics.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use sqlx::migrate::{Migration, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::Config;

/// Creates the database `<prefix>_<service>` if needed, connects, and applies `migrator` (see
/// [`with_toolkit`]).
///
/// # Errors
///
/// When the server cannot be reached or a migration fails.
pub async fn database(
    config: &Config,
    service: &str,
    migrator: &Migrator,
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
            // Another process may have created it first.
            if e.as_database_error().and_then(|d| d.code()).as_deref() != Some("42P04") {
                return Err(e);
            }
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(admin.database(&name))
        .await?;
    migrator.run(&pool).await?;
    Ok(pool)
}

/// A service's migrator: the toolkit's (leases, idempotency, outbox) and the service's `own`,
/// in version order.
pub fn with_toolkit(own: &Migrator) -> Migrator {
    merge(&[
        &leases::MIGRATOR,
        &idempotency::MIGRATOR,
        &outbox::MIGRATOR,
        own,
    ])
}

/// One migrator applying `migrators` (the crates' and a service's own) in version order. Versions
/// must be unique across them: leases 2026-01-01, idempotency 2026-01-02, outbox 2026-02-01, the
/// services 2026-03-xx.
pub fn merge(migrators: &[&Migrator]) -> Migrator {
    let mut migrations: Vec<Migration> = migrators
        .iter()
        .flat_map(|m| m.migrations.iter().cloned())
        .collect();
    migrations.sort_by_key(|m| m.version);
    let mut all = Migrator::DEFAULT;
    all.migrations = migrations.into();
    all
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
