//! Must show 7: the consumer runner applies each event once, dead-letters poison, resumes after a shutdown.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_delivered_twice_has_its_effect_once() {
    let db = db().await;
    let topic = testkit::kafka::topic(1).await;
    let dead_letters = testkit::kafka::topic(1).await;
    produce(
        &producer().await,
        &topic,
        &[
            event("e1", "Applied", br#"{"n": 1}"#),
            event("e1", "Applied", br#"{"n": 1}"#), // redelivered
            event("e2", "Applied", br#"{"n": 2}"#),
            event("e1", "Applied", br#"{"n": 1}"#), // and once more, later
        ],
    )
    .await;
    let (handler, _gate) = effects_handler(false);
    let consumer = Consumer::new(
        db.pool.clone(),
        config("inventory", &topic, &dead_letters).await,
        handler,
    )
    .expect("consumer")
    .spawn();
    let stats = wait_for(&[&consumer], "4 messages", |s| {
        s.processed + s.duplicates == 4
    })
    .await;
    assert_eq!((stats.processed, stats.duplicates), (2, 2));
    assert_eq!(
        effects(&db.pool).await,
        [("e1".into(), 1), ("e2".into(), 2)]
    );
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_event_delivered_concurrently_to_two_instances_has_its_effect_once() {
    let db = db().await;
    let topic = testkit::kafka::topic(1).await;
    let dead_letters = testkit::kafka::topic(1).await;
    produce(
        &producer().await,
        &topic,
        &[event("e1", "Applied", br#"{"n": 1}"#)],
    )
    .await;

    // Two instances of the same consumer, each in its own group, so each is delivered the event.
    let (handler, mut gate) = effects_handler(true);
    let first = Consumer::new(
        db.pool.clone(),
        config("inventory", &topic, &dead_letters).await,
        handler.clone(),
    )
    .expect("consumer")
    .spawn();
    let second = Consumer::new(
        db.pool.clone(),
        config("inventory", &topic, &dead_letters).await,
        handler,
    )
    .expect("consumer")
    .spawn();

    // One instance is inside its handler, its transaction open ...
    let id = tokio::time::timeout(WAIT, gate.entered.recv())
        .await
        .expect("an instance handles the event")
        .expect("channel");
    assert_eq!(id, "e1");
    // ... and the other is waiting on the inbox row at the same time.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&db.pool)
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second instance never reached the inbox"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate.open.send_replace(true);

    let stats = wait_for(&[&first, &second], "both deliveries", |s| {
        s.processed + s.duplicates == 2
    })
    .await;
    assert_eq!((stats.processed, stats.duplicates), (1, 1));
    assert_eq!(effects(&db.pool).await, [("e1".into(), 1)]);
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_with_their_reason_and_the_partition_keeps_flowing() {
    let db = db().await;
    let topic = testkit::kafka::topic(1).await;
    let dead_letters = testkit::kafka::topic(1).await;
    produce(
        &producer().await,
        &topic,
        &[
            event("ok-1", "Applied", br#"{"n": 1}"#),
            event("garbage", "Applied", b"\xffnot json"), // offset 1
            event("ok-2", "Applied", br#"{"n": 2}"#),
            event("alien", "Exploded", br#"{"n": 99}"#), // offset 3
            event("flaky", "Applied", br#"{"n": 3, "flaky": 2}"#),
            event("refused", "Applied", br#"{"n": 98, "reject": true}"#), // offset 5
            Event {
                id: None,
                event_type: "Applied",
                payload: br#"{"n": 97}"#,
            }, // offset 6
            event("ok-4", "Applied", br#"{"n": 4}"#),
        ],
    )
    .await;
    let (handler, _gate) = effects_handler(false);
    let consumer = Consumer::new(
        db.pool.clone(),
        config("inventory", &topic, &dead_letters).await,
        handler,
    )
    .expect("consumer")
    .spawn();
    let stats = wait_for(&[&consumer], "all 8 messages", |s| {
        s.processed + s.dead_lettered == 8
    })
    .await;
    assert_eq!(
        (
            stats.processed,
            stats.dead_lettered,
            stats.duplicates,
            stats.retries
        ),
        (4, 4, 0, 2)
    );
    // The healthy events were applied once each, in partition order, the flaky one after its
    // two retries (its rolled-back attempts left nothing behind).
    assert_eq!(
        effects(&db.pool).await,
        [
            ("ok-1".into(), 1),
            ("ok-2".into(), 2),
            ("flaky".into(), 3),
            ("ok-4".into(), 4)
        ]
    );

    let mut dead = testkit::kafka::read_all(&dead_letters).await;
    dead.sort_by_key(|m| header(m, "dlq-original-offset").and_then(|o| o.parse::<i64>().ok()));
    let summary: Vec<(Option<String>, Option<String>, Option<String>)> = dead
        .iter()
        .map(|m| {
            (
                header(m, "dlq-original-offset"),
                header(m, "dlq-reason"),
                header(m, "event-id"),
            )
        })
        .collect();
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(
        summary,
        [
            (some("1"), some("decode-failed"), some("garbage")),
            (some("3"), some("unknown-event-type"), some("alien")),
            (some("5"), some("rejected"), some("refused")),
            (some("6"), some("missing-event-id"), None),
        ]
    );
    for message in &dead {
        use rdkafka::Message as _;
        assert_eq!(
            header(message, "dlq-original-topic").as_deref(),
            Some(topic.as_str())
        );
        assert_eq!(
            header(message, "dlq-original-partition").as_deref(),
            Some("0")
        );
        assert_eq!(
            header(message, "dlq-consumer").as_deref(),
            Some("inventory")
        );
        assert!(header(message, "dlq-error").is_some_and(|e| !e.is_empty()));
        assert_eq!(message.key(), Some(&b"aggregate-1"[..]), "the original key");
    }
    assert_eq!(
        rdkafka::Message::payload(&dead[0]),
        Some(&b"\xffnot json"[..]),
        "the original bytes"
    );
    consumer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_graceful_shutdown_the_group_resumes_after_the_last_applied_message() {
    let db = db().await;
    let topic = testkit::kafka::topic(1).await;
    let dead_letters = testkit::kafka::topic(1).await;
    let producer = producer().await;
    produce(
        &producer,
        &topic,
        &[
            event("e1", "Applied", br#"{"n": 1}"#),
            event("e2", "Applied", br#"{"n": 2}"#),
            event("e3", "Applied", br#"{"n": 3}"#),
        ],
    )
    .await;
    // Offsets are committed only at revocation and shutdown, not on a timer.
    let mut kafka = ClientConfig::new();
    kafka
        .set(
            "bootstrap.servers",
            testkit::kafka::bootstrap_servers().await,
        )
        .set("auto.commit.interval.ms", "3600000");
    let config = configured(
        ConsumerConfig::new("inventory", kafka),
        &topic,
        &dead_letters,
    )
    .await;
    let (handler, _gate) = effects_handler(false);
    let first = Consumer::new(db.pool.clone(), config.clone(), handler.clone())
        .expect("consumer")
        .spawn();
    wait_for(&[&first], "3 messages", |s| s.processed == 3).await;
    let stats = first.shutdown().await;
    assert_eq!(stats.processed, 3);

    produce(
        &producer,
        &topic,
        &[
            event("e4", "Applied", br#"{"n": 4}"#),
            event("e5", "Applied", br#"{"n": 5}"#),
        ],
    )
    .await;
    let second = Consumer::new(db.pool.clone(), config, handler)
        .expect("consumer")
        .spawn();
    let stats = wait_for(&[&second], "2 new messages", |s| s.processed == 2).await;
    // Had the offsets not been committed, the three old messages would have come first, as
    // duplicates.
    assert_eq!(stats.duplicates, 0);
    assert_eq!(effects(&db.pool).await.len(), 5);
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_retrying_one_message_says_for_how_long_until_it_gets_past_it() {
    let db = db().await;
    let topic = testkit::kafka::topic(1).await;
    let dead_letters = testkit::kafka::topic(1).await;
    // Fails 40 times (10 to 100 ms apart, a few seconds in all), then applies.
    produce(
        &producer().await,
        &topic,
        &[event("e1", "Applied", br#"{"n": 1, "flaky": 40}"#)],
    )
    .await;
    let (handler, _gate) = effects_handler(false);
    let consumer = Consumer::new(
        db.pool.clone(),
        config("inventory", &topic, &dead_letters).await,
        handler,
    )
    .expect("consumer")
    .spawn();
    let stuck = wait_for(&[&consumer], "a retry", |s| s.retries > 5).await;
    assert_eq!(stuck.processed, 0);
    assert!(
        consumer
            .stats()
            .retrying_for
            .is_some_and(|d| d > Duration::ZERO),
        "{:?}",
        consumer.stats()
    );
    wait_for(&[&consumer], "the message applied", |s| s.processed == 1).await;
    assert_eq!(consumer.stats().retrying_for, None, "moving again");
    consumer.shutdown().await;
}

/// Sends `aborted` in a Kafka transaction that is aborted, then `committed` in one that commits.
async fn one_aborted_one_committed(topic: &str, aborted: Event<'_>, committed: Event<'_>) {
    use rdkafka::producer::Producer as _;

    let producer: FutureProducer = testkit::kafka::producer_config()
        .await
        .set(
            "transactional.id",
            format!("test-{}", uuid::Uuid::new_v4().simple()),
        )
        .create()
        .expect("transactional producer");
    let timeout = Duration::from_secs(30);
    let (p, t) = (producer.clone(), timeout);
    tokio::task::spawn_blocking(move || p.init_transactions(t))
        .await
        .expect("join")
        .expect("init");
    for (event, commit) in [(aborted, false), (committed, true)] {
        producer.begin_transaction().expect("begin");
        produce(&producer, topic, &[event]).await;
        let p = producer.clone();
        tokio::task::spawn_blocking(move || {
            if commit {
                p.commit_transaction(timeout)
            } else {
                p.abort_transaction(timeout)
            }
        })
        .await
        .expect("join")
        .expect("end the transaction");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_an_aborted_transaction_are_skipped_unless_read_committed_is_off() {
    let topic = testkit::kafka::topic(1).await;
    let dead_letters = testkit::kafka::topic(1).await;
    one_aborted_one_committed(
        &topic,
        event("aborted", "Applied", br#"{"n": 1}"#),
        event("committed", "Applied", br#"{"n": 2}"#),
    )
    .await;
    for (read_committed, expected) in [
        (true, vec![("committed".to_owned(), 2)]),
        (
            false,
            vec![("aborted".to_owned(), 1), ("committed".to_owned(), 2)],
        ),
    ] {
        let db = db().await;
        let (handler, _gate) = effects_handler(false);
        let config = config("inventory", &topic, &dead_letters)
            .await
            .read_committed(read_committed);
        let consumer = Consumer::new(db.pool.clone(), config, handler)
            .expect("consumer")
            .spawn();
        wait_for(&[&consumer], "the committed event", |s| {
            s.processed == expected.len() as u64
        })
        .await;
        assert_eq!(
            effects(&db.pool).await,
            expected,
            "read_committed {read_committed}"
        );
        consumer.shutdown().await;
    }
}
