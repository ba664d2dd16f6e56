//! A process running consumer runners (the `consumer-process` binary) SIGKILLed in the middle of a
//! stream and started again at once: every consumer group gets its partitions back within the
//! session timeout (static membership: `group.instance.id`), and consumption resumes where the
//! committed offsets say.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::ConnectOptions as _;
use workspace_tests::pipeline;

const PER_TOPIC: usize = 10_000;
const PARTITIONS: i32 = 4;
/// The runners' `session.timeout.ms`: a group whose member vanished without this is stuck that long.
const SESSION_TIMEOUT: Duration = Duration::from_secs(45);

struct Process {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Process {
    fn start(database_url: &str, bootstrap: &str, topics: &[String], dead_letters: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_consumer-process"))
            .env("DATABASE_URL", database_url)
            .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
            .env("CONSUMER_TOPICS", topics.join(","))
            .env("CONSUMER_DEAD_LETTERS", dead_letters)
            .env("CONSUMER_INSTANCE", "instance-1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start consumer-process");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut process = Self {
            child,
            stdin,
            stdout,
        };
        assert_eq!(process.line(), "ready");
        process
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read a line");
        line.trim().to_owned()
    }

    /// Closes standard input, so the process shuts down; returns the duplicates its runners skipped.
    fn shutdown(mut self, topics: usize) -> u64 {
        drop(self.stdin.take());
        let mut duplicates = 0;
        for _ in 0..topics {
            let line = self.line();
            let field = |name: &str| -> u64 {
                line.split_whitespace()
                    .find_map(|f| f.strip_prefix(name))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no {name} in {line:?}"))
            };
            assert_eq!(field("dead_lettered="), 0, "{line}");
            duplicates += field("duplicates=");
        }
        assert!(self.child.wait().expect("wait").success());
        duplicates
    }
}

async fn produce(producer: &FutureProducer, topic: &str) {
    let sends = (0..PER_TOPIC).map(|n| {
        let id = uuid::Uuid::new_v4().to_string();
        let key = format!("item-{n}");
        async move {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "event-type",
                    value: Some(pipeline::EVENT_TYPE),
                })
                .insert(Header {
                    key: "event-id",
                    value: Some(&id),
                });
            producer
                .send(
                    FutureRecord::to(topic)
                        .key(&key)
                        .payload("{}")
                        .headers(headers),
                    Duration::from_secs(30),
                )
                .await
                .expect("delivered");
        }
    });
    futures::future::join_all(sends).await;
}

/// The offsets the group `<topic>.effects` committed, summed over the topic's partitions.
fn committed(bootstrap: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}.effects"))
        .create()
        .expect("offsets client");
    let mut partitions = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        partitions.add_partition(topic, p);
    }
    let offsets = consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .expect("committed offsets");
    offsets
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(n) => n,
            _ => 0,
        })
        .sum()
}

/// Effects applied so far, per topic.
async fn applied_per_topic(pool: &sqlx::PgPool) -> std::collections::HashMap<String, i64> {
    sqlx::query_as("SELECT topic, count(*) FROM effects GROUP BY topic")
        .fetch_all(pool)
        .await
        .expect("effects per topic")
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumer_process_restarted_at_once_gets_its_partitions_back() {
    let sink = testkit::database(&[&inbox::MIGRATOR]).await;
    pipeline::create_effects(&sink.pool).await.expect("effects");
    let bootstrap = testkit::kafka::bootstrap_servers().await;
    let topics = vec![
        testkit::kafka::topic(PARTITIONS).await,
        testkit::kafka::topic(PARTITIONS).await,
    ];
    let dead_letters = testkit::kafka::topic(1).await;
    let producer: FutureProducer = testkit::kafka::producer_config()
        .await
        .create()
        .expect("producer");
    for topic in &topics {
        produce(&producer, topic).await;
    }
    let url = sink.options.to_url_lossy().to_string();
    let total = (PER_TOPIC * topics.len()) as i64;

    let mut first = Process::start(&url, &bootstrap, &topics, &dead_letters);
    let (_, distinct) = pipeline::wait_applied(&sink.pool, 1_000, Duration::from_secs(120)).await;
    assert!(distinct >= 1_000, "only {distinct} applied before the kill");
    first.child.kill().expect("SIGKILL");
    first.child.wait().expect("reap");
    // A commit the process sent just before it died lands now, not after the count below.
    testkit::postgres::end_sessions(&sink.pool, pipeline::CONSUMER_APPLICATION_NAME).await;
    let (applied_before, _) = pipeline::applied(&sink.pool).await.expect("applied");
    assert!(
        applied_before < total,
        "the kill came after the stream ended"
    );
    let committed_before: i64 = topics.iter().map(|t| committed(&bootstrap, t)).sum();
    assert!(committed_before <= applied_before);

    let at_kill = applied_per_topic(&sink.pool).await;
    let second = Process::start(&url, &bootstrap, &topics, &dead_letters);
    // Every group gets its partitions back within the session timeout: each topic's events are
    // applied again before it ends (without static membership nothing moves until then).
    let deadline = tokio::time::Instant::now() + SESSION_TIMEOUT;
    loop {
        let now = applied_per_topic(&sink.pool).await;
        let resumed = topics.iter().all(|t| {
            let before = at_kill.get(t).copied().unwrap_or(0);
            now.get(t).copied().unwrap_or(0) > before || before == PER_TOPIC as i64
        });
        if resumed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a group did not get its partitions back within the session timeout: \
             {at_kill:?} at the kill, {now:?} now"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The rest is a matter of throughput on a shared machine: a liveness bound only.
    let (rows, distinct) =
        pipeline::wait_applied(&sink.pool, total, Duration::from_secs(120)).await;
    assert_eq!(distinct, total, "every event applied after the restart");
    assert_eq!(rows, total, "no event is applied twice");
    let duplicates = second.shutdown(topics.len());
    assert_eq!(
        duplicates as i64,
        applied_before - committed_before,
        "the restart resumed at the committed offsets: it saw again exactly the events applied \
         but not yet committed"
    );
    println!(
        "consumer process SIGKILL: {applied_before} applied before the kill, {committed_before} \
         committed, {duplicates} redelivered and skipped by the inbox"
    );
    let _ = std::io::stdout().flush();
}
