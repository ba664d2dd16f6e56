//! A process running one outbox relay, for the fault tests that SIGKILL and SIGSTOP it
//! (`tests/tests/relay_kill.rs`, `tests/tests/exactly_once_pause.rs`).
//!
//! Environment: `DATABASE_URL` (a database with the outbox and leases migrations),
//! `KAFKA_BOOTSTRAP_SERVERS`, `RELAY_MODE` (`exactly-once` or `at-least-once`), `RELAY_NAME` (the
//! exactly-once relay's name), `RELAY_OWNER`, `RELAY_SHARDS`, `RELAY_LEASE_TTL_MS`. Logs go to
//! standard error (`RUST_LOG`, default `outbox=info,leases=info,librdkafka=warn,rdkafka=warn`). Prints `ready` once the relay runs; when
//! standard input closes it shuts the relay down and prints `stopped`. Its database sessions
//! carry the application name `relay-process`.

use std::io::BufRead;
use std::time::Duration;

use outbox::exactly_once::{ExactlyOnceConfig, ExactlyOnceRelay};
use outbox::{KafkaPublisher, Relay, RelayConfig};
use workspace_tests::relay_process::{APPLICATION_NAME, Mode};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "outbox=info,leases=info,librdkafka=warn,rdkafka=warn".into()),
        )
        .init();
    // Named, so a test can end this process's sessions after it killed the process.
    let options = env("DATABASE_URL")
        .parse::<sqlx::postgres::PgConnectOptions>()
        .expect("DATABASE_URL")
        .application_name(APPLICATION_NAME);
    let pool = sqlx::PgPool::connect_with(options)
        .await
        .expect("connect to PostgreSQL");
    let ttl = Duration::from_millis(env("RELAY_LEASE_TTL_MS").parse().expect("a ttl in ms"));
    let mut kafka = rdkafka::ClientConfig::new();
    kafka.set("bootstrap.servers", env("KAFKA_BOOTSTRAP_SERVERS"));
    let relay = match env("RELAY_MODE").parse::<Mode>().expect("RELAY_MODE") {
        Mode::ExactlyOnce => {
            let config = ExactlyOnceConfig::new(env("RELAY_NAME"))
                .owner(env("RELAY_OWNER"))
                .shards(env("RELAY_SHARDS").parse().expect("a shard count"))
                .lease_ttl(ttl)
                .transaction_timeout(Duration::from_secs(10));
            ExactlyOnceRelay::new(pool, &kafka, config)
                .await
                .expect("exactly-once relay")
                .spawn()
        }
        Mode::AtLeastOnce => {
            let publisher = KafkaPublisher::from_config(&kafka).expect("publisher");
            let config = RelayConfig::default()
                .owner(env("RELAY_OWNER"))
                .lease_ttl(ttl);
            Relay::new(pool, publisher, config).expect("relay").spawn()
        }
    };
    println!("ready");
    // Block a thread, not the runtime, until standard input closes.
    tokio::task::spawn_blocking(|| for _ in std::io::stdin().lock().lines() {})
        .await
        .expect("stdin");
    relay.shutdown().await;
    println!("stopped");
}
