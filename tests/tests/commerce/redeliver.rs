//! Delivering every event of a stack a second time, and waiting until every consumer has
//! processed the copies.

use super::*;

/// Offsets committed by `group` on `topic` reach the end of every partition.
async fn caught_up(bootstrap: &str, group: &str, topic: &str) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let timeout = Duration::from_secs(5);
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), timeout) else {
        return false;
    };
    let mut list = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        list.add_partition(topic, p.id());
    }
    let Ok(committed) = consumer.committed_offsets(list, timeout) else {
        return false;
    };
    committed.elements().iter().all(|e| {
        let (_, high) = consumer
            .fetch_watermarks(topic, e.partition(), timeout)
            .unwrap_or((0, i64::MAX));
        match e.offset() {
            Offset::Offset(o) => o >= high,
            _ => high == 0,
        }
    })
}

/// Waits until every consumer group of the services running in `stack` has committed the end
/// of every topic it reads.
pub(crate) async fn wait_caught_up(stack: &Stack) {
    let topics = &stack.config.topics;
    let deadline = tokio::time::Instant::now() + FINAL;
    let running = |name: &str| {
        stack
            .services
            .iter()
            .any(|service| name.split('.').next() == Some(service.name))
    };
    for (name, group_topics) in commerce_launcher::consumers(topics)
        .into_iter()
        .filter(|(n, _)| running(n))
    {
        let group = format!("{}.{name}", topics.prefix);
        for topic in group_topics {
            while !caught_up(&stack.config.kafka, &group, topic).await {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{group} did not catch up on {topic}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Publishes every event of the stack's event topics whose key (an order or product id) is one
/// of `keys` a second time (same key, payload and headers), then waits until every consumer has
/// processed the copies.
pub(crate) async fn redeliver(stack: &Stack, keys: &[String]) {
    use rdkafka::Message;
    let producer: rdkafka::producer::FutureProducer = testkit::kafka::producer_config()
        .await
        .create()
        .expect("producer");
    let topics = &stack.config.topics;
    for topic in [
        &topics.orders,
        &topics.inventory,
        &topics.payments,
        &topics.shipments,
    ] {
        for message in testkit::kafka::read_all(topic).await {
            let key = message
                .key()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            if !keys.iter().any(|k| *k == key) {
                continue;
            }
            let mut record = rdkafka::producer::FutureRecord::<[u8], [u8]>::to(topic);
            record = record.key(key.as_bytes());
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            if let Some(headers) = message.headers() {
                record = record.headers(headers.clone());
            }
            producer
                .send(record, Duration::from_secs(10))
                .await
                .expect("redeliver");
        }
    }
    wait_caught_up(stack).await;
}
