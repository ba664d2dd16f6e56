//! Publishing: keys, headers, rollbacks, dedup keys, and a relay killed before marking.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_are_published_with_keys_and_headers_and_rolled_back_ones_never() {
    let db = outbox_db().await;
    let topic = testkit::kafka::topic(4).await;
    let mut committed = HashMap::new();
    let mut rolled_back = HashSet::new();
    for batch in 0..110 {
        let mut tx = db.pool.begin().await.expect("begin");
        let events: Vec<NewEvent> = (0..100)
            .map(|i| {
                let aggregate = format!("order-{}", (batch * 100 + i) % 500);
                NewEvent::json(
                    &topic,
                    "order",
                    aggregate,
                    "OrderPlaced",
                    &serde_json::json!({ "n": batch * 100 + i }),
                )
                .expect("json")
                .header("tenant", "acme")
            })
            .collect();
        assert_eq!(
            outbox::enqueue_many(&mut tx, &events)
                .await
                .expect("enqueue"),
            100
        );
        if batch % 11 == 10 {
            tx.rollback().await.expect("rollback");
            rolled_back.extend(events.iter().map(|e| e.id));
        } else {
            tx.commit().await.expect("commit");
            committed.extend(events.into_iter().map(|e| (e.id, e)));
        }
    }
    assert_eq!((committed.len(), rolled_back.len()), (10_000, 1_000));

    let relay = Relay::new(
        db.pool.clone(),
        kafka().await,
        RelayConfig::default().batch_size(1000),
    )
    .expect("relay");
    drain(&relay, &db.pool).await;

    let messages = testkit::kafka::read_all(&topic).await;
    assert_eq!(
        messages.len(),
        10_000,
        "exactly the committed events, each once"
    );
    let mut seen = HashSet::new();
    for message in &messages {
        let id = event_id(message);
        assert!(
            !rolled_back.contains(&id),
            "a rolled-back event was published"
        );
        let event = committed.get(&id).expect("only committed events");
        assert!(seen.insert(id), "duplicate {id}");
        assert_eq!(
            message.key(),
            Some(event.aggregate_id.as_bytes()),
            "key = aggregate id"
        );
        assert_eq!(message.payload(), Some(event.payload.as_slice()));
        assert_eq!(
            header(message, "event-type").as_deref(),
            Some("OrderPlaced")
        );
        assert_eq!(header(message, "aggregate-type").as_deref(), Some("order"));
        assert_eq!(
            header(message, "aggregate-id").as_deref(),
            Some(event.aggregate_id.as_str())
        );
        assert_eq!(header(message, "tenant").as_deref(), Some("acme"));
        assert_eq!(
            header(message, "content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(
            header(message, "traceparent"),
            None,
            "enqueued outside any trace: no made-up trace context"
        );
    }
    // One aggregate, one partition.
    let mut partitions: HashMap<Vec<u8>, HashSet<i32>> = HashMap::new();
    for m in &messages {
        partitions
            .entry(m.key().expect("key").to_vec())
            .or_default()
            .insert(m.partition());
    }
    assert!(partitions.values().all(|p| p.len() == 1));
}

#[tokio::test]
async fn dedup_key_enqueues_once_per_aggregate() {
    let db = outbox_db().await;
    let mut tx = db.pool.begin().await.expect("begin");
    let first = NewEvent::bytes("t", "order", "1", "OrderPlaced", b"x".to_vec()).dedup_key("req-1");
    let again = NewEvent::bytes("t", "order", "1", "OrderPlaced", b"x".to_vec()).dedup_key("req-1");
    let other_aggregate =
        NewEvent::bytes("t", "order", "2", "OrderPlaced", b"x".to_vec()).dedup_key("req-1");
    assert!(outbox::enqueue(&mut tx, &first).await.expect("enqueue"));
    assert!(
        !outbox::enqueue(&mut tx, &again).await.expect("enqueue"),
        "same key, same aggregate: skipped"
    );
    assert!(
        outbox::enqueue(&mut tx, &other_aggregate)
            .await
            .expect("enqueue")
    );
    tx.commit().await.expect("commit");
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox_events").await,
        2
    );
}

/// Publishes for real, then never returns: the relay dies between publishing and marking.
struct PublishThenHang(KafkaPublisher, Arc<AtomicUsize>);

impl Publisher for PublishThenHang {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        self.0.publish(event).await?;
        self.1.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_after_publishing_but_before_marking_loses_nothing() {
    let db = outbox_db().await;
    let topic = testkit::kafka::topic(2).await;
    let mut tx = db.pool.begin().await.expect("begin");
    let events: Vec<NewEvent> = (0..200)
        .map(|i| NewEvent::bytes(&topic, "order", format!("o-{i}"), "OrderPlaced", vec![1]))
        .collect();
    outbox::enqueue_many(&mut tx, &events)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");

    let published = Arc::new(AtomicUsize::new(0));
    let doomed = Relay::new(
        db.pool.clone(),
        PublishThenHang(kafka().await, Arc::clone(&published)),
        RelayConfig::default().lease_ttl(Duration::from_secs(1)),
    )
    .expect("relay")
    .spawn();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while published.load(Ordering::SeqCst) < 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "doomed relay did not publish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.abort(); // killed: nothing marked
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox_events").await,
        200
    );

    let survivor = Relay::new(db.pool.clone(), kafka().await, RelayConfig::default())
        .expect("relay")
        .spawn();
    wait_until_empty(&db.pool, Duration::from_secs(30)).await;
    survivor.shutdown().await;

    let messages = testkit::kafka::read_all(&topic).await;
    let ids: HashSet<Uuid> = messages.iter().map(event_id).collect();
    assert_eq!(
        ids,
        events.iter().map(|e| e.id).collect(),
        "every event at least once"
    );
    assert_eq!(
        messages.len(),
        400,
        "published twice: once by each relay (at-least-once)"
    );
}
