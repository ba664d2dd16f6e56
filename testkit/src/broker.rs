//! An Apache Kafka broker owned by one test: its own process, ports and log directory, so the test
//! can stop, kill and restart it without touching the shared broker other tests use.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// The broker's configuration template, shared with `scripts/services`.
const SERVER_PROPERTIES: &str = include_str!("../../scripts/kafka/server.properties");
/// The broker's logging configuration, shared with `scripts/services`.
const LOG4J2: &str = include_str!("../../scripts/kafka/log4j2.yaml");
/// The tool that formats a log directory.
const STORAGE_TOOL: &str = "kafka.tools.StorageTool";
/// Logging for the tools: warnings only, on stderr, so their output is theirs alone.
const TOOLS_LOG4J2: &str = "Configuration:
  Appenders:
    Console:
      name: STDERR
      target: SYSTEM_ERR
      PatternLayout:
        pattern: \"[%d] %p %m (%c)%n\"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: STDERR
";
/// Where the tools' logging configuration is written, in the broker's directory.
const TOOLS_LOG4J2_FILE: &str = "tools-log4j2.yaml";
/// The tool that finds and aborts hanging transactions.
const TRANSACTIONS_TOOL: &str = "org.apache.kafka.tools.TransactionsCommand";

/// A single-node KRaft broker (broker and controller in one JVM) on free loopback ports, with its
/// data in a temporary directory that survives [`stop`](Self::stop) and [`kill`](Self::kill).
/// Dropping it kills the process and removes the directory, unless the test is failing (then the
/// directory, with the broker's log, is kept for inspection).
///
/// Its jars are the ones `scripts/services up` fetched (`OUTBOX_TOOLKIT_KAFKA_LIBS`).
#[derive(Debug)]
pub struct OwnedBroker {
    dir: PathBuf,
    libs: PathBuf,
    port: u16,
    process: Option<Child>,
}

impl OwnedBroker {
    /// Formats a log directory and starts the broker; returns once a client got metadata.
    ///
    /// # Panics
    ///
    /// When `OUTBOX_TOOLKIT_KAFKA_LIBS` is unset, or the broker does not start within 60 s.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// [`start`](Self::start), with the broker telling clients to come back on
    /// `127.0.0.1:advertised` (where a [`KafkaProxy`](crate::KafkaProxy) listens) rather than on
    /// its own port.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub async fn start_advertising(advertised: u16) -> Self {
        Self::start_with(Some(advertised)).await
    }

    async fn start_with(advertised: Option<u16>) -> Self {
        let libs = PathBuf::from(std::env::var_os("OUTBOX_TOOLKIT_KAFKA_LIBS").expect(
            "OUTBOX_TOOLKIT_KAFKA_LIBS is not set: run `eval \"$(scripts/services up)\"` first",
        ));
        let dir = std::env::temp_dir().join(format!(
            "outbox-toolkit-kafka-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(dir.join("data")).expect("create the broker's directory");
        let (port, controller_port) = (crate::free_port(), crate::free_port());
        let mut properties = server_properties(port, controller_port, &dir.join("data"));
        if let Some(advertised) = advertised {
            properties = properties.replace(
                &format!("advertised.listeners=PLAINTEXT://127.0.0.1:{port}"),
                &format!("advertised.listeners=PLAINTEXT://127.0.0.1:{advertised}"),
            );
        }
        std::fs::write(dir.join("server.properties"), properties).expect("write server.properties");
        std::fs::write(dir.join("log4j2.yaml"), LOG4J2).expect("write log4j2.yaml");
        std::fs::write(dir.join(TOOLS_LOG4J2_FILE), TOOLS_LOG4J2).expect("write the tools' log4j2");
        let mut broker = Self {
            dir,
            libs,
            port,
            process: None,
        };
        let cluster_id = broker
            .java(STORAGE_TOOL, &["random-uuid"])
            .expect("a cluster id");
        let cluster_id = cluster_id.lines().last().expect("a cluster id").trim();
        let properties = broker.dir.join("server.properties");
        let properties = properties.to_str().expect("UTF-8 path");
        broker
            .java(
                STORAGE_TOOL,
                &["format", "-t", cluster_id, "-c", properties],
            )
            .expect("format the log directory");
        broker.restart().await;
        broker
    }

    /// The address clients dial (`127.0.0.1:<port>`).
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's process id (to pause it with `SIGSTOP`, say).
    ///
    /// # Panics
    ///
    /// When it is not running.
    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("the broker is running").id()
    }

    /// Stops the broker with SIGTERM (a controlled shutdown) and waits until it exited.
    ///
    /// # Panics
    ///
    /// When it is not running or does not exit within 60 s.
    pub fn stop(&mut self) {
        let mut process = self.process.take().expect("the broker is running");
        crate::process::terminate(&mut process, Duration::from_secs(60));
    }

    /// Kills the broker with SIGKILL (no shutdown at all) and waits until it is gone.
    ///
    /// # Panics
    ///
    /// When it is not running.
    pub fn kill(&mut self) {
        let mut process = self.process.take().expect("the broker is running");
        process.kill().expect("SIGKILL the broker");
        process.wait().expect("wait for the broker");
    }

    /// Starts the broker again on the same ports and data; returns once a client got metadata.
    ///
    /// # Panics
    ///
    /// When it is already running or does not answer within 60 s.
    pub async fn restart(&mut self) {
        assert!(self.process.is_none(), "the broker is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))
            .expect("open the broker's log");
        let process = Command::new("java")
            .args(["-Xms128m", "-Xmx512m", "-XX:+UseG1GC"])
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.dir.join("log4j2.yaml").display()
            ))
            .arg("-cp")
            .arg(self.classpath())
            .arg("kafka.Kafka")
            .arg(self.dir.join("server.properties"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start java (is a JDK 17+ installed?)");
        self.process = Some(process);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let bootstrap = self.bootstrap_servers();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let probe = bootstrap.clone();
            let answered = tokio::task::spawn_blocking(move || {
                let consumer: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &probe)
                    .create()
                    .expect("metadata client");
                consumer
                    .fetch_metadata(None, Duration::from_secs(2))
                    .is_ok_and(|m| !m.brokers().is_empty())
            })
            .await
            .expect("metadata probe");
            if answered {
                return;
            }
            if let Some(status) = self
                .process
                .as_mut()
                .and_then(|p| p.try_wait().expect("poll the broker"))
            {
                panic!("the broker exited with {status}; see {}", self.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the broker did not answer within 60 s; see {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Aborts the transactions Kafka left *hanging* on this broker (open on a partition for more
    /// than a minute while their coordinator no longer tracks them), as an operator would with
    /// `kafka-transactions.sh find-hanging` and `abort`; returns them as `topic-partition@offset`.
    /// One that ended meanwhile is skipped.
    ///
    /// A one-node cluster restarted after a crash can leave them: its controller fences the old
    /// broker registration, every partition is leaderless for a moment, and the transaction
    /// coordinator drops the commit or abort markers it was sending to them as if the partitions
    /// had been deleted (the broker logs "these partitions are likely deleted already").
    ///
    /// # Panics
    ///
    /// When `find-hanging` fails.
    pub fn abort_hanging_transactions(&self) -> Vec<String> {
        let bootstrap = self.bootstrap_servers();
        let tool = |args: &[&str]| {
            let mut all = vec!["--bootstrap-server", &bootstrap];
            all.extend_from_slice(args);
            self.java(TRANSACTIONS_TOOL, &all)
        };
        let found = tool(&[
            "find-hanging",
            "--broker-id",
            "1",
            "--max-transaction-timeout",
            "1",
        ])
        .unwrap_or_else(|error| panic!("find-hanging failed: {error}"));
        hanging(&found)
            .into_iter()
            .filter_map(|(topic, partition, offset)| {
                let abort = [
                    "abort",
                    "--topic",
                    topic,
                    "--partition",
                    partition,
                    "--start-offset",
                    offset,
                ];
                match tool(&abort) {
                    Ok(_) => Some(format!("{topic}-{partition}@{offset}")),
                    Err(error) => {
                        eprintln!("not aborted (it ended meanwhile?): {error}");
                        None
                    }
                }
            })
            .collect()
    }

    /// Runs the Kafka tool `class` with `args` (its own logs on stderr) and returns what it
    /// printed, or what it said when it failed.
    fn java(&self, class: &str, args: &[&str]) -> Result<String, String> {
        let output = Command::new("java")
            .arg("-cp")
            .arg(self.classpath())
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.dir.join(TOOLS_LOG4J2_FILE).display()
            ))
            .arg(class)
            .args(args)
            .output()
            .expect("run java (is a JDK 17+ installed?)");
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "{class} {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    fn classpath(&self) -> String {
        format!("{}/*", self.libs.display())
    }

    fn log(&self) -> String {
        self.dir.join("broker.log").display().to_string()
    }
}

impl Drop for OwnedBroker {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "the test failed: kept the broker's directory {} (its log: broker.log)",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The `(topic, partition, start offset)` of each row of `find-hanging`'s table in `output`:
/// the rows after the header whose cells line up with it.
fn hanging(output: &str) -> Vec<(&str, &str, &str)> {
    let mut lines = output
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>());
    let Some(header) = lines.by_ref().find(|cells| cells.first() == Some(&"Topic")) else {
        return Vec::new();
    };
    let column = |name: &str| header.iter().position(|cell| *cell == name);
    let (Some(topic), Some(partition), Some(offset)) =
        (column("Topic"), column("Partition"), column("StartOffset"))
    else {
        return Vec::new();
    };
    let number = |cell: &str| cell.parse::<i64>().is_ok();
    lines
        .filter(|cells| {
            cells.len() == header.len() && number(cells[partition]) && number(cells[offset])
        })
        .map(|cells| (cells[topic], cells[partition], cells[offset]))
        .collect()
}

/// `scripts/kafka/server.properties` for a broker on `port` (and its controller on
/// `controller_port`) with its log directory at `log_dir`.
pub(crate) fn server_properties(port: u16, controller_port: u16, log_dir: &Path) -> String {
    SERVER_PROPERTIES
        .replace("@PORT@", &port.to_string())
        .replace("@CONTROLLER_PORT@", &controller_port.to_string())
        .replace("@LOG_DIR@", &log_dir.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_is_filled_in_for_a_one_node_cluster() {
        let properties = server_properties(19_500, 19_501, Path::new("/tmp/x"));
        for placeholder in ["@PORT@", "@CONTROLLER_PORT@", "@LOG_DIR@"] {
            assert!(!properties.contains(placeholder), "{properties}");
        }
        for line in [
            "listeners=PLAINTEXT://127.0.0.1:19500,CONTROLLER://127.0.0.1:19501",
            "advertised.listeners=PLAINTEXT://127.0.0.1:19500",
            "controller.quorum.voters=1@127.0.0.1:19501",
            "log.dirs=/tmp/x",
            "offsets.topic.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "auto.create.topics.enable=false",
            "group.initial.rebalance.delay.ms=0",
        ] {
            assert!(properties.lines().any(|l| l == line), "missing {line}");
        }
    }

    #[test]
    fn find_hanging_rows_are_read_past_any_other_line() {
        let output = "[2026-12-07 21:15:40,318] WARN [AdminClient clientId=adminclient-1] \
            Connection to node 1 could not be established. (org.apache.kafka.clients.NetworkClient)
Topic\tPartition\tProducerId\tProducerEpoch\tCoordinatorEpoch\tStartOffset\tLastTimestamp\tDuration(min)
restart.outbox-progress\t1\t1\t1\t2\t56\t1796676609092\t3
test-abc\t0\t1\t1\t2\t4410\t1796676609090\t3
[2026-12-07 21:15:41,000] WARN a line after the table (org.apache.kafka.clients.NetworkClient)
";
        assert_eq!(
            hanging(output),
            [
                ("restart.outbox-progress", "1", "56"),
                ("test-abc", "0", "4410")
            ]
        );
        assert!(hanging("no table here").is_empty());
    }
}
