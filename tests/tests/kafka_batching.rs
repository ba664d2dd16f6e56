//! A producer with librdkafka's default batching, read back in full by a consumer group: the case
//! the earlier stand-in broker failed (it miscounted offsets of multi-record batches).

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};

const MESSAGES: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_batched_messages_are_all_read_back_by_a_consumer_group() {
    let topic = testkit::kafka::topic(3).await;
    let producer: FutureProducer = testkit::kafka::producer_config()
        .await
        .create()
        .expect("producer");
    let sends = (0..MESSAGES).map(|n| {
        let (producer, topic) = (&producer, &topic);
        async move {
            let payload = n.to_string();
            producer
                .send(
                    FutureRecord::to(topic).key(&payload).payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .expect("delivered")
        }
    });
    let delivered = futures::future::join_all(sends).await;
    // Records share batches: several land on consecutive offsets of one produce request. The
    // broker assigns the offsets, so count distinct (partition, offset) pairs to be sure none
    // was counted twice.
    let offsets: HashSet<(i32, i64)> = delivered.iter().map(|d| (d.partition, d.offset)).collect();
    assert_eq!(offsets.len(), MESSAGES);

    let consumer: StreamConsumer = ClientConfig::new()
        .set(
            "bootstrap.servers",
            testkit::kafka::bootstrap_servers().await,
        )
        .set(
            "group.id",
            format!("batching-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < MESSAGES {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {MESSAGES} read back", seen.len()))
            .expect("consume");
        let payload = String::from_utf8_lossy(message.payload().expect("payload"));
        seen.insert(payload.parse::<usize>().expect("a number"));
    }
    assert_eq!(seen, (0..MESSAGES).collect::<HashSet<_>>());
}
