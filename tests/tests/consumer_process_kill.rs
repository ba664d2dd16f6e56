//! A process running consumer runners (the `consumer-process` binary) SIGKILLed in the middle of a
//! stream and started again at once: every consumer group gets its partitions back within the
//! session timeout (static membership: `group.instance.id`), and consumption resumes where the
//! committed offsets say. Then a second process joins the groups while batches are applied, and
//! the partitions are split between the two: every event is applied once, each partition's in
//! offset order.

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
/// The live stream during which a second process joins: `WAVES` waves of `WAVE` events per
/// topic, 100 ms apart.
const WAVES: usize = 100;
const WAVE: usize = 100;
/// The runners' `session.timeout.ms`: a group whose member vanished without this is stuck that long.
const SESSION_TIMEOUT: Duration = Duration::from_secs(45);

struct Process {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Process {
    fn start(
        instance: &str,
        database_url: &str,
        bootstrap: &str,
        topics: &[String],
        dead_letters: &str,
    ) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_consumer-process"))
            .env("DATABASE_URL", database_url)
            .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
            .env("CONSUMER_TOPICS", topics.join(","))
            .env("CONSUMER_DEAD_LETTERS", dead_letters)
            .env("CONSUMER_INSTANCE", instance)
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

    /// Closes standard input, so the process shuts down; returns the events its runners applied
    /// and the duplicates they skipped.
    fn shutdown(mut self, topics: usize) -> (u64, u64) {
        drop(self.stdin.take());
        let (mut processed, mut duplicates) = (0, 0);
        for _ in 0..topics {
            let line = self.line();
            let field = |name: &str| -> u64 {
                line.split_whitespace()
                    .find_map(|f| f.strip_prefix(name))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no {name} in {line:?}"))
            };
            assert_eq!(field("dead_lettered="), 0, "{line}");
            processed += field("processed=");
            duplicates += field("duplicates=");
        }
        assert!(self.child.wait().expect("wait").success());
        (processed, duplicates)
    }
}

/// Sends `count` events to `topic`, each with a new event id, spread over its partitions.
async fn produce(producer: &FutureProducer, topic: &str, count: usize) {
    let sends = (0..count).map(|n| {
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
        produce(&producer, topic, PER_TOPIC).await;
    }
    let url = sink.options.to_url_lossy().to_string();
    let total = (PER_TOPIC * topics.len()) as i64;

    let mut first = Process::start("instance-1", &url, &bootstrap, &topics, &dead_letters);
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
    let second = Process::start("instance-1", &url, &bootstrap, &topics, &dead_letters);
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
    // A live stream (a wave of events every 100 ms), and while it is applied a second member
    // joins every group: the partitions are split between the two processes mid-stream.
    let stream = tokio::spawn({
        let (producer, topics) = (producer.clone(), topics.clone());
        async move {
            for _ in 0..WAVES {
                for topic in &topics {
                    produce(&producer, topic, WAVE).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let total = total + (WAVES * WAVE * topics.len()) as i64;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (joined_at, _) = pipeline::applied(&sink.pool).await.expect("applied");
    let third = Process::start("instance-2", &url, &bootstrap, &topics, &dead_letters);
    stream.await.expect("the stream was sent");
    // The rest is a matter of throughput on a shared machine: a liveness bound only.
    let (rows, distinct) =
        pipeline::wait_applied(&sink.pool, total, Duration::from_secs(120)).await;
    assert_eq!(distinct, total, "every event applied after the restart");
    assert_eq!(rows, total, "no event is applied twice");
    let ((_, restarted), (joined, joined_skipped)) =
        (second.shutdown(topics.len()), third.shutdown(topics.len()));
    assert!(
        joined > 0,
        "the joining process got partitions and applied events"
    );
    let duplicates = restarted + joined_skipped;
    // The restart resumed at the committed offsets, so it saw again at least the events applied
    // but not committed at the kill (the join may hand over a few more).
    assert!(
        duplicates as i64 >= applied_before - committed_before,
        "{duplicates} redelivered, {applied_before} applied and {committed_before} committed at \
         the kill"
    );
    assert_partition_order(&sink.pool, &bootstrap, &topics).await;
    println!(
        "consumer process SIGKILL: {applied_before} applied before the kill, {committed_before} \
         committed, a second process joined at {joined_at} applied and applied {joined}; \
         {duplicates} redelivered and skipped by the inbox; every partition applied in offset \
         order"
    );
    let _ = std::io::stdout().flush();
}

/// Checks that each partition's events were applied (in `effects`' insertion order) in offset
/// order, whichever process applied them.
async fn assert_partition_order(pool: &sqlx::PgPool, bootstrap: &str, topics: &[String]) {
    use rdkafka::Message as _;
    use rdkafka::message::Headers as _;

    let mut place = std::collections::HashMap::new();
    for topic in topics {
        for message in testkit::kafka::read_to_end(bootstrap, topic, "read_committed").await {
            let id = message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "event-id").and_then(|h| h.value))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .expect("event-id header");
            place.insert(id, (topic.clone(), message.partition(), message.offset()));
        }
    }
    let applied: Vec<String> = sqlx::query_scalar("SELECT event_id FROM effects ORDER BY seq")
        .fetch_all(pool)
        .await
        .expect("effects");
    let mut last = std::collections::HashMap::new();
    for id in applied {
        let (topic, partition, offset) = place[&id].clone();
        if let Some(previous) = last.insert((topic.clone(), partition), offset) {
            assert!(
                previous < offset,
                "{topic}/{partition}: offset {offset} applied after {previous}"
            );
        }
    }
}
