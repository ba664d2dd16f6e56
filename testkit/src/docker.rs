//! Containers for users with a Docker engine, started once per test process, each on a host port
//! the engine picks. An interrupted run (Ctrl-C, SIGTERM) stops and removes them (testcontainers'
//! `watchdog`); one that ends normally leaves them to the engine, since a process-wide container
//! has no owner to drop it: `docker rm -f $(docker ps -q -f label=org.testcontainers.managed-by=testcontainers)`.

use std::path::Path;

use testcontainers::core::{ContainerPort, ExecCommand, WaitFor};
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

/// The Apache Kafka image, the same release `scripts/services` runs.
const KAFKA_IMAGE: (&str, &str) = ("apache/kafka", "4.4.0");
/// The port the broker listens on inside the container; the engine maps it to a free host port.
const KAFKA_PORT: u16 = 9092;
/// Where the container waits for its configuration (written once the host port is known).
const KAFKA_PROPERTIES: &str = "/tmp/server.properties";

/// Apache Kafka in KRaft mode, configured as `scripts/services` configures it. Clients must dial
/// the advertised address, which holds the host port the engine picked, and that port is known
/// only once the container runs: so the container waits for its `server.properties`, written
/// through `exec` after start, then formats its storage and starts the broker.
async fn kafka() -> (ContainerAsync<GenericImage>, String) {
    let (name, tag) = KAFKA_IMAGE;
    let container = GenericImage::new(name, tag)
        .with_exposed_port(ContainerPort::Tcp(KAFKA_PORT))
        .with_cmd([
            "sh".to_owned(),
            "-c".to_owned(),
            format!(
                "while [ ! -f {KAFKA_PROPERTIES} ]; do sleep 0.1; done; \
                 /opt/kafka/bin/kafka-storage.sh format --ignore-formatted \
                 -t \"$(/opt/kafka/bin/kafka-storage.sh random-uuid)\" -c {KAFKA_PROPERTIES} && \
                 exec /opt/kafka/bin/kafka-server-start.sh {KAFKA_PROPERTIES}"
            ),
        ])
        .start()
        .await
        .expect("start a Kafka container");
    let port = container
        .get_host_port_ipv4(KAFKA_PORT)
        .await
        .expect("Kafka port");
    let configure = ExecCommand::new([
        "sh".to_owned(),
        "-c".to_owned(),
        format!("printf '%s' \"$PROPERTIES\" > {KAFKA_PROPERTIES}.part && mv {KAFKA_PROPERTIES}.part {KAFKA_PROPERTIES}"),
    ])
    .with_env_vars([("PROPERTIES", kafka_properties(port))])
    .with_container_ready_conditions(vec![WaitFor::message_on_stdout("Kafka Server started")]);
    container
        .exec(configure)
        .await
        .expect("configure the Kafka container");
    (container, format!("127.0.0.1:{port}"))
}

/// The broker's `server.properties` inside the container: the template `scripts/services` uses,
/// with clients served on every interface and advertised at `127.0.0.1:<host_port>`, and the
/// broker's own traffic on an internal listener (the host port means nothing inside).
fn kafka_properties(host_port: u16) -> String {
    let mut properties =
        crate::broker::server_properties(KAFKA_PORT, KAFKA_PORT + 1, Path::new("/tmp/kafka-data"));
    properties.push_str(&format!(
        "\n# In a container: later keys override the ones above.\n\
         listeners=PLAINTEXT://0.0.0.0:{KAFKA_PORT},CONTROLLER://127.0.0.1:{controller},BROKER://127.0.0.1:{broker}\n\
         advertised.listeners=PLAINTEXT://127.0.0.1:{host_port},BROKER://127.0.0.1:{broker}\n\
         inter.broker.listener.name=BROKER\n\
         listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,BROKER:PLAINTEXT\n",
        controller = KAFKA_PORT + 1,
        broker = KAFKA_PORT + 2,
    ));
    properties
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The last value of each key, as `java.util.Properties` reads the file.
    fn effective(properties: &str) -> std::collections::HashMap<&str, &str> {
        properties
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .collect()
    }

    #[test]
    fn the_container_broker_advertises_the_mapped_port_with_the_scripts_settings() {
        let container = kafka_properties(49_153);
        let script = crate::broker::server_properties(9092, 9093, Path::new("/tmp/kafka-data"));
        let (container, script) = (effective(&container), effective(&script));
        assert_eq!(
            container["advertised.listeners"],
            "PLAINTEXT://127.0.0.1:49153,BROKER://127.0.0.1:9094"
        );
        assert_eq!(
            container["listeners"],
            "PLAINTEXT://0.0.0.0:9092,CONTROLLER://127.0.0.1:9093,BROKER://127.0.0.1:9094"
        );
        assert_eq!(container["inter.broker.listener.name"], "BROKER");
        for (key, value) in &script {
            if !key.contains("listener") {
                assert_eq!(
                    container[key], *value,
                    "{key} differs from the script's broker"
                );
            }
        }
        assert!(
            !container
                .values()
                .any(|v| v.contains("@PORT@") || v.contains("@LOG_DIR@"))
        );
    }
}
