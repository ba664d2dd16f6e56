//! Containers for users with a Docker engine, started once per test process.

use std::path::Path;

use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio::sync::OnceCell;

/// A service the fixtures can start in a container.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Service {
    Postgres,
    Kafka,
    Redis,
}

/// Whether a Docker engine looks reachable.
pub(crate) fn available() -> bool {
    std::env::var_os("DOCKER_HOST").is_some() || Path::new("/var/run/docker.sock").exists()
}

static POSTGRES: OnceCell<(ContainerAsync<GenericImage>, String)> = OnceCell::const_new();
static KAFKA: OnceCell<(ContainerAsync<GenericImage>, String)> = OnceCell::const_new();
static REDIS: OnceCell<(ContainerAsync<GenericImage>, String)> = OnceCell::const_new();

/// Starts (once) the container for `service` and returns its address.
pub(crate) async fn start(service: Service) -> String {
    let cell = match service {
        Service::Postgres => &POSTGRES,
        Service::Kafka => &KAFKA,
        Service::Redis => &REDIS,
    };
    let (_, url) = cell
        .get_or_init(|| async move {
            match service {
                Service::Postgres => postgres().await,
                Service::Kafka => kafka().await,
                Service::Redis => redis().await,
            }
        })
        .await;
    url.clone()
}

async fn postgres() -> (ContainerAsync<GenericImage>, String) {
    let container = GenericImage::new("postgres", "16-alpine")
        .with_exposed_port(ContainerPort::Tcp(5432))
        .with_wait_for(WaitFor::message_on_stderr(
            "database system is ready to accept connections",
        ))
        .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust")
        .start()
        .await
        .expect("start a PostgreSQL container");
    let port = container
        .get_host_port_ipv4(5432)
        .await
        .expect("PostgreSQL port");
    (
        container,
        format!("postgres://postgres@127.0.0.1:{port}/postgres"),
    )
}

async fn redis() -> (ContainerAsync<GenericImage>, String) {
    let container = GenericImage::new("redis", "7-alpine")
        .with_exposed_port(ContainerPort::Tcp(6379))
        .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
        .start()
        .await
        .expect("start a Redis container");
    let port = container
        .get_host_port_ipv4(6379)
        .await
        .expect("Redis port");
    (container, format!("redis://127.0.0.1:{port}"))
}

/// Apache Kafka in KRaft mode. The advertised address must be the one clients dial, so the
/// container's listener is published on a fixed host port.
async fn kafka() -> (ContainerAsync<GenericImage>, String) {
    const HOST_PORT: u16 = 29092;
    let container = GenericImage::new("apache/kafka", "3.9.1")
        .with_exposed_port(ContainerPort::Tcp(9092))
        .with_wait_for(WaitFor::message_on_stdout("Kafka Server started"))
        .with_mapped_port(HOST_PORT, ContainerPort::Tcp(9092))
        .with_env_var("KAFKA_NODE_ID", "1")
        .with_env_var("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env_var("KAFKA_LISTENERS", "PLAINTEXT://:9092,CONTROLLER://:9093")
        .with_env_var(
            "KAFKA_ADVERTISED_LISTENERS",
            format!("PLAINTEXT://127.0.0.1:{HOST_PORT}"),
        )
        .with_env_var("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env_var(
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        )
        .with_env_var("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
        .with_env_var("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env_var("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env_var("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env_var("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .start()
        .await
        .expect("start a Kafka container");
    (container, format!("127.0.0.1:{HOST_PORT}"))
}
