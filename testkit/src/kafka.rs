//! A unique Kafka topic per test, created explicitly (the test broker does not auto-create).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

use crate::docker::Service;

/// The brokers' address: `KAFKA_BOOTSTRAP_SERVERS`, or a container.
pub async fn bootstrap_servers() -> String {
    crate::service_url("KAFKA_BOOTSTRAP_SERVERS", Service::Kafka).await
}

/// Creates a topic named `test-<uuid>` with `partitions` partitions and returns its name.
///
/// # Panics
///
/// When the broker cannot be reached or refuses the topic: this is a test fixture.
pub async fn topic(partitions: i32) -> String {
    let name = format!("test-{}", uuid::Uuid::new_v4().simple());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers().await)
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
