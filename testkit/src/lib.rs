//! Real-service fixtures shared by the workspace's tests: a fresh PostgreSQL database per test with
//! a crate's migrations applied, a fresh Kafka topic per test, a Redis connection, a manual clock,
//! and, for fault tests, an Apache Kafka broker or a PostgreSQL server owned by one test
//! ([`OwnedBroker`], [`OwnedPostgres`]) that it may stop, kill and restart.
//!
//! Each service's address comes from the environment (`DATABASE_URL`, `KAFKA_BOOTSTRAP_SERVERS`,
//! `REDIS_URL`, as printed by `scripts/services up`). When a variable is unset and a Docker engine
//! is reachable, the fixture starts a container with `testcontainers` (once per test process);
//! otherwise it panics with a message that says which script to run.

#![deny(unsafe_code)]

mod broker;
mod docker;
pub mod exit;
pub mod kafka;
mod kafka_proxy;
mod pg_server;
pub mod postgres;
mod process;
pub mod redis;

pub use broker::OwnedBroker;
pub use kafka_proxy::KafkaProxy;
pub use leases::ManualClock;
pub use pg_server::OwnedPostgres;
pub use postgres::{TestDb, database, database_on};
pub use process::free_port;
pub use process::signal;

/// Resolves a service address: the environment variable, else a container, else a clear panic.
async fn service_url(var: &str, container: docker::Service) -> String {
    if let Ok(url) = std::env::var(var) {
        return url;
    }
    if docker::available() {
        return docker::start(container).await;
    }
    panic!(
        "{var} is not set and no Docker engine is reachable. Start the services with \
         `eval \"$(scripts/services up)\"` (or run the whole suite with `scripts/test`)."
    )
}
