//! A unique Kafka topic per test, created explicitly (the test broker does not auto-create), and
//! producer settings as in production.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

use crate::docker::Service;

/// The brokers' address: `KAFKA_BOOTSTRAP_SERVERS`, or a container.
pub async fn bootstrap_servers() -> String {
    crate::service_url("KAFKA_BOOTSTRAP_SERVERS", Service::Kafka).await
}

/// Producer settings for the test broker: the bootstrap servers, librdkafka's default batching
/// and the Java client's partitioner (`murmur2_random`), as the workspace's producers use.
pub async fn producer_config() -> ClientConfig {
    producer_config_for(&bootstrap_servers().await)
}

/// [`producer_config`] for the brokers at `bootstrap_servers` (an [`OwnedBroker`](crate::OwnedBroker), say).
pub fn producer_config_for(bootstrap_servers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set("partitioner", "murmur2_random");
    config
}

/// Creates a topic named `test-<uuid>` with `partitions` partitions and returns its name.
///
/// # Panics
///
/// When the broker cannot be reached or refuses the topic: this is a test fixture.
pub async fn topic(partitions: i32) -> String {
    topic_on(&bootstrap_servers().await, partitions).await
}

/// [`topic`] on the brokers at `bootstrap_servers`.
///
/// # Panics
///
/// As [`topic`].
pub async fn topic_on(bootstrap_servers: &str, partitions: i32) -> String {
    let name = format!("test-{}", uuid::Uuid::new_v4().simple());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .create()
        .expect("create a Kafka admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(
            &[NewTopic::new(&name, partitions, TopicReplication::Fixed(1))],
            &options,
        )
        .await
        .expect("create the test topic");
    for result in results {
        result.unwrap_or_else(|(topic, code)| panic!("creating topic {topic} failed: {code}"));
    }
    name
}

/// Every message in `topic` at the moment of the call: reads all partitions from the beginning up
/// to their high watermarks, so the result is exact without waiting for stragglers (produce with
/// [`producer_config`]).
///
/// # Panics
///
/// When the broker cannot be reached, or the messages are not all read within 60 s.
pub async fn read_all(topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    read_all_from(&bootstrap_servers().await, topic).await
}

/// [`read_all`] from the brokers at `bootstrap_servers` (a mock cluster, say).
///
/// # Panics
///
/// As [`read_all`].
pub async fn read_all_from(
    bootstrap_servers: &str,
    topic: &str,
) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::{Message, Offset, TopicPartitionList};

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .set(
            "group.id",
            format!("read-all-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .expect("create a Kafka consumer");
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .expect("topic metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut assignment = TopicPartitionList::new();
    let mut remaining = std::collections::HashMap::new();
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .expect("watermarks");
        if high > low {
            remaining.insert(p, high);
        }
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .expect("assign");
    }
    consumer.assign(&assignment).expect("assign partitions");
    let mut messages = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !remaining.is_empty() {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("read_all({topic}) timed out; partitions left: {remaining:?}")
            })
            .expect("consume");
        let (partition, offset) = (message.partition(), message.offset());
        messages.push(message.detach());
        if remaining
            .get(&partition)
            .is_some_and(|&high| offset + 1 >= high)
        {
            remaining.remove(&partition);
        }
    }
    messages
}

/// Every message of `topic` that a consumer with `isolation.level=<isolation>` sees
/// (`read_committed` or `read_uncommitted`), read from the beginning of every partition to its end
/// (for `read_committed`, the last stable offset: call it when no transaction is open). Unlike
/// [`read_all_from`] it does not count on offsets being contiguous, which transaction markers and
/// aborted records are not.
///
/// # Panics
///
/// When the broker cannot be reached, or the end is not reached within 120 s.
pub async fn read_to_end(
    bootstrap_servers: &str,
    topic: &str,
    isolation: &str,
) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::error::KafkaError;
    use rdkafka::{Offset, TopicPartitionList};

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .set(
            "group.id",
            format!("read-to-end-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .expect("create a Kafka consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let mut remaining: std::collections::HashSet<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut assignment = TopicPartitionList::new();
    for &p in &remaining {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .expect("assign");
    }
    consumer.assign(&assignment).expect("assign partitions");
    let mut messages = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !remaining.is_empty() {
        let next = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("read_to_end({topic}) timed out; partitions left: {remaining:?}")
            });
        match next {
            Ok(message) => messages.push(message.detach()),
            Err(KafkaError::PartitionEOF(partition)) => {
                remaining.remove(&partition);
            }
            Err(error) => panic!("consume {topic}: {error}"),
        }
    }
    messages
}
