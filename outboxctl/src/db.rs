//! The connection to the operator's database, and what it contains.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// Connects to `url` with a small pool (the CLI runs one statement at a time).
pub(crate) async fn connect(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(15))
        .connect(url)
        .await
        .context("connecting to the database (DATABASE_URL / --database-url)")
}

/// Whether table `name` exists on the connection's `search_path`.
pub(crate) async fn table_exists(pool: &PgPool, name: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(name)
        .fetch_one(pool)
        .await
}

/// Fails with a clear message when table `name` (of `migrations`) does not exist.
pub(crate) async fn require_table(
    pool: &PgPool,
    name: &str,
    migrations: &str,
) -> anyhow::Result<()> {
    if table_exists(pool, name).await? {
        Ok(())
    } else {
        anyhow::bail!(
            "table {name} does not exist in this database (are the {migrations} migrations applied?)"
        )
    }
}
