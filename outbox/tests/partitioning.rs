//! Keys land on the partition the Java client picks: the relay's producer uses `murmur2_random`,
//! checked here against murmur2 computed as `org.apache.kafka.common.utils.Utils.murmur2` does.

use std::time::Duration;

use outbox::{KafkaPublisher, NewEvent, Relay, RelayConfig};
use rdkafka::Message;

/// Kafka's murmur2 (`Utils.murmur2`): seed 0x9747b28c, little-endian 4-byte blocks.
fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        for (i, &byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The Java client's default partition of a keyed record: `toPositive(murmur2(key)) % partitions`.
fn java_partition(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[test]
fn murmur2_matches_the_java_clients_test_vectors() {
    // From Apache Kafka's UtilsTest.testMurmur2.
    for (key, hash) in [
        (&b"21"[..], -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (
            b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        (b"abc", 479_470_107),
    ] {
        assert_eq!(murmur2(key), hash, "{}", String::from_utf8_lossy(key));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_aggregate_lands_on_the_partition_a_java_producer_picks() {
    const PARTITIONS: i32 = 7;
    const KEYS: usize = 400;
    let db = testkit::database(&[&outbox::MIGRATOR]).await;
    let topic = testkit::kafka::topic(PARTITIONS).await;
    let events: Vec<NewEvent> = (0..KEYS)
        .map(|n| {
            NewEvent::bytes(
                &topic,
                "order",
                format!("order-{n}-{}", n * 7919),
                "OrderPlaced",
                vec![],
            )
        })
        .collect();
    let mut tx = db.pool.begin().await.expect("begin");
    outbox::enqueue_many(&mut tx, &events)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    // No partitioner in the configuration: the publisher's default is what is tested.
    let publisher =
        KafkaPublisher::new(&testkit::kafka::bootstrap_servers().await).expect("publisher");
    let relay = Relay::new(
        db.pool.clone(),
        publisher,
        RelayConfig::default().poll_interval(Duration::from_millis(20)),
    )
    .expect("relay")
    .spawn();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let messages = loop {
        let messages = testkit::kafka::read_all(&topic).await;
        if messages.len() >= KEYS {
            break messages;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {KEYS} events published within 60 s",
            messages.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    relay.shutdown().await;
    assert_eq!(messages.len(), KEYS);
    let mut used = std::collections::HashSet::new();
    for message in &messages {
        let key = message.key().expect("keyed");
        assert_eq!(
            message.partition(),
            java_partition(key, PARTITIONS),
            "key {}",
            String::from_utf8_lossy(key)
        );
        used.insert(message.partition());
    }
    assert_eq!(
        used.len(),
        PARTITIONS as usize,
        "the keys spread over every partition"
    );
}
