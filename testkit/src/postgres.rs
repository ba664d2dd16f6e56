//! A fresh PostgreSQL database per test, with migrations applied, dropped when the test ends.

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::docker::Service;

/// The server's URL: `DATABASE_URL`, or a container.
pub async fn database_url() -> String {
    crate::service_url("DATABASE_URL", Service::Postgres).await
}

/// A database that exists for one test. Dropping it drops the database (even when the test
/// panics), closing any connection still open.
#[derive(Debug)]
pub struct TestDb {
    /// A pool on the database (10 connections).
    pub pool: PgPool,
    /// Connection options for the database, for tests that need their own pools or connections.
    pub options: PgConnectOptions,
    name: String,
    admin: PgConnectOptions,
    keep_on_failure: bool,
}

/// Creates a database named `test_<uuid>` on the server and runs `migrators` in it, in order
/// (each crate's migrator keeps its own history table).
///
/// # Panics
///
/// When the server cannot be reached or a migration fails: this is a test fixture.
pub async fn database(migrators: &[&Migrator]) -> TestDb {
    database_on(&database_url().await, migrators).await
}

/// [`database`] on the server at `server_url` (an [`OwnedPostgres`](crate::OwnedPostgres), say).
///
/// # Panics
///
/// As [`database`].
pub async fn database_on(server_url: &str, migrators: &[&Migrator]) -> TestDb {
    let admin: PgConnectOptions = server_url.parse().expect("a valid PostgreSQL URL");
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = admin.connect().await.expect("connect to PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create the test database");
    conn.close().await.ok();
    let options = admin.clone().database(&name);
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect_with(options.clone())
        .await
        .expect("connect to the test database");
    for migrator in migrators {
        migrator.run(&pool).await.expect("run migrations");
    }
    TestDb {
        pool,
        options,
        name,
        admin,
        keep_on_failure: false,
    }
}

impl TestDb {
    /// Keeps the database when the test fails (panics), and says so on standard error, so that
    /// what a failing fault test left behind can be inspected; a passing test still drops it.
    pub fn keep_on_failure(&mut self) {
        self.keep_on_failure = true;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.keep_on_failure && std::thread::panicking() {
            eprintln!(
                "the test failed: kept database {} for inspection",
                self.name
            );
            return;
        }
        let admin = self.admin.clone();
        let name = std::mem::take(&mut self.name);
        // Drop runs inside the test's runtime; the cleanup needs its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect_with(&admin).await {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                        .execute(&mut conn)
                        .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Ends the sessions in `pool`'s database whose `application_name` is `name`, and waits (up to
/// 5 s each) until they are gone: after a test SIGKILLs a process, what its sessions were still
/// doing (a commit in flight, a statement waiting on a lock) settles before the test reads the
/// database, instead of landing afterwards.
///
/// # Panics
///
/// When the database refuses.
pub async fn end_sessions(pool: &sqlx::PgPool, name: &str) {
    sqlx::query(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = $1",
    )
    .bind(name)
    .execute(pool)
    .await
    .expect("end the sessions");
}
