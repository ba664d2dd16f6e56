//! Batches: a partition's messages are applied a batch per transaction, partitions in parallel,
//! with failures as precise as one message per transaction.

use futures::future::join_all;

use super::*;

/// Sends `events` (key, event id, JSON payload) at once, in order per key.
async fn produce_keyed(topic: &str, events: &[(String, String, String)]) {
    let producer = producer().await;
    let sends = events.iter().map(|(key, id, payload)| {
        let record = FutureRecord::to(topic).key(key).payload(payload).headers(
            OwnedHeaders::new()
                .insert(Header {
                    key: "event-type",
                    value: Some("Applied"),
                })
                .insert(Header {
                    key: "event-id",
                    value: Some(id),
                }),
        );
        producer.send(record, Duration::from_secs(30))
    });
    for delivered in join_all(sends).await {
        delivered.expect("delivered");
    }
}

/// The `inventory` consumer of `topic` with `handler`, in a group of its own, running.
async fn inventory(
    db: &TestDb,
    topic: &str,
    dead_letters: &str,
    handler: Effects,
) -> ConsumerHandle {
    Consumer::new(
        db.pool.clone(),
        config("inventory", topic, dead_letters).await,
        handler,
    )
    .expect("consumer")
    .spawn()
}

/// `count` events of one aggregate, numbered from 0, with `payload(n)` as their JSON payload.
fn numbered(count: i64, payload: impl Fn(i64) -> String) -> Vec<(String, String, String)> {
    (0..count)
        .map(|n| ("a".to_owned(), format!("e{n}"), payload(n)))
        .collect()
}

/// The event ids expected in the effects, in order: `e0`, `e1`, ... without `skipped`.
fn in_order(count: i64, skipped: Option<i64>) -> Vec<(String, i64)> {
    (0..count)
        .filter(|n| Some(*n) != skipped)
        .map(|n| (format!("e{n}"), n))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_in_the_middle_of_a_batch_is_dead_lettered_alone_and_the_rest_applied_in_order()
 {
    let db = db().await;
    let topic = testkit::kafka::topic(1).await;
    let dead_letters = testkit::kafka::topic(1).await;
    // On the topic before the consumer starts: one batch.
    produce_keyed(
        &topic,
        &numbered(99, |n| {
            if n == 49 {
                r#"{"n": 49, "reject": true}"#.to_owned()
            } else {
                format!(r#"{{"n": {n}}}"#)
            }
        }),
    )
    .await;
    let consumer = inventory(&db, &topic, &dead_letters, effects_handler(false).0).await;
    let stats = wait_for(&[&consumer], "99 messages", |s| {
        s.processed + s.dead_lettered == 99
    })
    .await;
    consumer.shutdown().await;
    assert_eq!((stats.processed, stats.dead_lettered), (98, 1));
    assert!(
        stats.isolated >= 1,
        "a batch failed and was isolated: {stats:?}"
    );
    assert_eq!(effects(&db.pool).await, in_order(99, Some(49)));
    let dead = testkit::kafka::read_all(&dead_letters).await;
    assert_eq!(dead.len(), 1, "the poison event alone is dead-lettered");
    assert_eq!(header(&dead[0], "event-id").as_deref(), Some("e49"));
    assert_eq!(header(&dead[0], "dlq-reason").as_deref(), Some("rejected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_delivered_again_after_its_commit_applies_nothing_twice() {
    let db = db().await;
    let topic = testkit::kafka::topic(1).await;
    let dead_letters = testkit::kafka::topic(1).await;
    produce_keyed(&topic, &numbered(50, |n| format!(r#"{{"n": {n}}}"#))).await;
    let (handler, _gate) = effects_handler(false);
    let first = inventory(&db, &topic, &dead_letters, handler.clone()).await;
    wait_for(&[&first], "50 applied", |s| s.processed == 50).await;
    // A crash after the commit, before any offset reached Kafka: the same consumer (its inbox
    // name) reads the whole partition again, from a group with no offsets.
    first.abort();
    let again = inventory(&db, &topic, &dead_letters, handler).await;
    let stats = wait_for(&[&again], "50 redelivered", |s| s.duplicates == 50).await;
    again.shutdown().await;
    assert_eq!(stats.processed, 0, "nothing applied twice");
    assert_eq!(effects(&db.pool).await, in_order(50, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retriable_failure_applies_the_batch_again_without_reordering() {
    let db = db().await;
    let topic = testkit::kafka::topic(1).await;
    let dead_letters = testkit::kafka::topic(1).await;
    produce_keyed(
        &topic,
        &numbered(30, |n| {
            let flaky = if n == 10 { 2 } else { 0 };
            format!(r#"{{"n": {n}, "flaky": {flaky}}}"#)
        }),
    )
    .await;
    let consumer = inventory(&db, &topic, &dead_letters, effects_handler(false).0).await;
    let stats = wait_for(&[&consumer], "30 applied", |s| s.processed == 30).await;
    consumer.shutdown().await;
    assert!(stats.retries >= 2, "the batch was retried: {stats:?}");
    assert_eq!(stats.dead_lettered, 0);
    assert_eq!(effects(&db.pool).await, in_order(30, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_apply_in_parallel_and_a_runner_joining_mid_way_applies_nothing_twice() {
    let db = db().await;
    let topic = testkit::kafka::topic(4).await;
    let dead_letters = testkit::kafka::topic(1).await;
    let aggregates = 16;
    let per_aggregate = 200;
    // Numbers `numbers` of every aggregate, interleaved.
    let events = |numbers: std::ops::Range<i64>| -> Vec<(String, String, String)> {
        numbers
            .flat_map(|n| {
                (0..aggregates).map(move |a| {
                    (
                        format!("agg-{a}"),
                        format!("agg-{a}/{n}"),
                        format!(r#"{{"n": {n}, "pause_ms": 2}}"#),
                    )
                })
            })
            .collect()
    };
    produce_keyed(&topic, &events(0..per_aggregate / 2)).await;
    let total = (aggregates * per_aggregate) as u64;
    let group = new_group();
    let (handler, _gate) = effects_handler(false);
    let start = || async {
        let config = config("inventory", &topic, &dead_letters)
            .await
            .group_id(group.clone())
            .batch_size(50);
        Consumer::new(db.pool.clone(), config, handler.clone())
            .expect("consumer")
            .spawn()
    };
    let first = start().await;
    wait_for(&[&first], "a first part", |s| s.processed >= total / 8).await;
    // The second joins while the first is in the middle of its batches.
    let second = start().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while second.stats().partitions == 0 || first.stats().partitions == 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the group rebalanced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The second half lands on both runners' partitions.
    produce_keyed(&topic, &events(per_aggregate / 2..per_aggregate)).await;
    wait_for(&[&first, &second], "every event", |s| s.processed == total).await;
    let stats = [second.shutdown().await, first.shutdown().await];
    assert!(
        stats.iter().all(|s| s.processed > 0),
        "both runners applied events: {stats:?}"
    );
    let batches: u64 = stats.iter().map(|s| s.batches).sum();
    assert!(
        batches < total / 4,
        "batches, not single messages: {stats:?}"
    );
    assert!(stats.iter().all(|s| s.dead_lettered == 0));

    // Each event applied once, each aggregate's events in order.
    let applied = effects(&db.pool).await;
    assert_eq!(applied.len() as u64, total, "each event once");
    let mut next: HashMap<String, i64> = HashMap::new();
    for (id, n) in applied {
        let (aggregate, _) = id.split_once('/').expect("aggregate/n");
        let expected = next.entry(aggregate.to_owned()).or_default();
        assert_eq!(n, *expected, "{aggregate} in order");
        *expected += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_runner_leaves_its_group_and_its_partitions_move_on() {
    let db = db().await;
    let topic = testkit::kafka::topic(2).await;
    let dead_letters = testkit::kafka::topic(1).await;
    produce_keyed(&topic, &numbered(20, |n| format!(r#"{{"n": {n}}}"#))).await;
    let group = new_group();
    let start = || async {
        let config = config("inventory", &topic, &dead_letters)
            .await
            .group_id(group.clone());
        Consumer::new(db.pool.clone(), config, effects_handler(false).0)
            .expect("consumer")
            .spawn()
    };
    let crashed = start().await;
    wait_for(&[&crashed], "20 applied", |s| s.processed == 20).await;
    // A crash of the runner (its workers included) leaves the group: the next member gets the
    // partitions at once, not after the session or poll timeout.
    crashed.abort();
    let next = start().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while next.stats().partitions < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the next member got the partitions: {:?}",
            next.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    next.shutdown().await;
}
