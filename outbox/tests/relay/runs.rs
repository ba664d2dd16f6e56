//! Runs: an aggregate's backlog is claimed and published as runs of consecutive events, in order,
//! and a failure in the middle of a run never lets a later event reach the broker first.

use super::*;

/// `n` events of one aggregate, payload = their index (big-endian `u32`).
async fn enqueue_run(pool: &PgPool, topic: &str, aggregate: &str, n: u32) -> Vec<NewEvent> {
    let events: Vec<NewEvent> = (0..n)
        .map(|i| NewEvent::bytes(topic, "order", aggregate, "Step", i.to_be_bytes().to_vec()))
        .collect();
    let mut tx = pool.begin().await.expect("begin");
    outbox::enqueue_many(&mut tx, &events)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    events
}

/// The payload indexes of `messages`, in partition order.
fn indexes(messages: &[OwnedMessage]) -> Vec<u32> {
    let mut sorted: Vec<&OwnedMessage> = messages.iter().collect();
    sorted.sort_by_key(|m| (m.partition(), m.offset()));
    sorted
        .iter()
        .map(|m| u32::from_be_bytes(m.payload().expect("payload").try_into().expect("u32")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_aggregate_is_published_in_runs_in_order() {
    let db = outbox_db().await;
    let topic = testkit::kafka::topic(1).await;
    enqueue_run(&db.pool, &topic, "hot", 2_000).await;
    let relay = Relay::new(
        db.pool.clone(),
        kafka().await,
        RelayConfig::default().batch_size(500),
    )
    .expect("relay");
    let mut batches = 0;
    while count(&db.pool, "SELECT count(*) FROM outbox_events").await > 0 {
        let outcome = relay.run_once().await.expect("batch");
        assert_eq!(outcome.published, outcome.claimed, "{outcome:?}");
        batches += 1;
    }
    assert_eq!(
        batches, 4,
        "2,000 events of one aggregate in four claims of 500"
    );
    let expected: Vec<u32> = (0..2_000).collect();
    assert_eq!(indexes(&testkit::kafka::read_all(&topic).await), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_refused_for_good_in_a_run_is_dead_lettered_and_the_rest_follows_in_order() {
    refused_for_good_in_a_run(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_head_refused_for_good_is_dead_lettered_after_the_rest_is_marked() {
    // The run's events are held through its head: burying it first would lose them all.
    refused_for_good_in_a_run(0).await;
}

/// A run of ten events of one aggregate whose event `refused` is too large for the producer
/// (refused when it is queued): it is dead-lettered, and the other nine are published in order
/// and marked, none lost.
async fn refused_for_good_in_a_run(refused: usize) {
    let db = outbox_db().await;
    let topic = testkit::kafka::topic(1).await;
    let mut events: Vec<NewEvent> = (0..10_u32)
        .map(|i| NewEvent::bytes(&topic, "order", "hot", "Step", i.to_be_bytes().to_vec()))
        .collect();
    events[refused] = NewEvent::bytes(&topic, "order", "hot", "Step", vec![0; 2 * 1024 * 1024]);
    let mut tx = db.pool.begin().await.expect("begin");
    outbox::enqueue_many(&mut tx, &events)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    let relay = Relay::new(db.pool.clone(), kafka().await, RelayConfig::default()).expect("relay");
    let outcome = relay.run_once().await.expect("batch");
    assert_eq!(
        (
            outcome.claimed,
            outcome.published,
            outcome.dead_lettered,
            outcome.lost
        ),
        (10, 9, 1, 0)
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox_events").await,
        0
    );
    let dead: Uuid = sqlx::query_scalar("SELECT id FROM outbox_dead_letters")
        .fetch_one(&db.pool)
        .await
        .expect("dead letter");
    assert_eq!(dead, events[refused].id);
    let expected: Vec<u32> = (0..10_u32).filter(|&i| i as usize != refused).collect();
    assert_eq!(indexes(&testkit::kafka::read_all(&topic).await), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cut_by_a_full_queue_is_finished_in_order_after_the_outage() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;

    let db = outbox_db().await;
    let cluster: MockCluster<'static, DefaultProducerContext> =
        MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("orders", 1, 1).expect("topic");
    let bootstrap = cluster.bootstrap_servers();
    // Room for five messages: with the broker down, the sixth of the run cannot be queued.
    let mut config = testkit::kafka::producer_config_for(&bootstrap);
    config.set("queue.buffering.max.messages", "5");
    let publisher = KafkaPublisher::from_config(&config).expect("publisher");
    enqueue_run(&db.pool, "orders", "hot", 20).await;
    let relay = Arc::new(
        Relay::new(
            db.pool.clone(),
            publisher,
            RelayConfig::default().backoff(fast_backoff(100)),
        )
        .expect("relay"),
    );

    cluster.broker_down(1).expect("broker down");
    let first = tokio::spawn({
        let relay = Arc::clone(&relay);
        async move { relay.run_once().await }
    });
    // The sixth event waits 5 s for room, then the run stops there; the five queued ones wait
    // for the broker (no delivery timeout).
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(
        !first.is_finished(),
        "the queued events wait for the broker"
    );
    cluster.broker_up(1).expect("broker up");
    let outcome = first.await.expect("task").expect("batch");
    assert_eq!(
        (outcome.claimed, outcome.published, outcome.retried),
        (20, 5, 15),
        "the run stopped at the refused event; the rest is retried, not sent"
    );
    let failed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE last_error IS NOT NULL")
            .fetch_one(&db.pool)
            .await
            .expect("errors");
    assert_eq!(
        failed, 1,
        "only the refused event was rescheduled; the ones behind it were never written"
    );
    drain(&relay, &db.pool).await;
    let expected: Vec<u32> = (0..20).collect();
    assert_eq!(
        indexes(&testkit::kafka::read_all_from(&bootstrap, "orders").await),
        expected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_a_claim_cursor_publishes_an_event_committed_behind_it_in_order() {
    let db = outbox_db().await;
    let topic = testkit::kafka::topic(1).await;
    enqueue_run(&db.pool, &topic, "early", 4).await;
    let relay = Relay::new(
        db.pool.clone(),
        kafka().await,
        RelayConfig::default()
            .batch_size(2)
            .claim_cursor(Duration::from_secs(3600)),
    )
    .expect("relay");
    let first = relay.run_once().await.expect("batch");
    assert_eq!((first.claimed, first.published), (2, 2));
    // An event due before the cursor (as one committed late by a long transaction is), with an
    // event of its aggregate after it.
    let late = enqueue_run(&db.pool, &topic, "late", 2).await;
    sqlx::query(
        "UPDATE outbox_events SET next_attempt_at = now() - interval '1 hour' WHERE aggregate_id = 'late'",
    )
    .execute(&db.pool)
    .await
    .expect("due an hour ago");
    let mut claims = Vec::new();
    while count(&db.pool, "SELECT count(*) FROM outbox_events").await > 0 {
        let outcome = relay.run_once().await.expect("batch");
        assert_eq!(outcome.published, outcome.claimed, "{outcome:?}");
        claims.push(outcome.claimed);
        assert!(
            claims.len() < 10,
            "the late events were never claimed: {claims:?}"
        );
    }
    assert_eq!(
        claims,
        [2, 0, 2],
        "the rest of the backlog from the cursor, a short claim, then the late run from the head"
    );
    let messages = testkit::kafka::read_all(&topic).await;
    let ids: Vec<Uuid> = messages
        .iter()
        .filter(|m| m.key() == Some(b"late".as_slice()))
        .map(event_id)
        .collect();
    assert_eq!(
        ids,
        late.iter().map(|e| e.id).collect::<Vec<_>>(),
        "the late run, in order"
    );
    assert_eq!(messages.len(), 6, "every event once");
}

/// Records each event's attempt as it is published, and fails `fail_at` the first time.
struct Attempts {
    fail_at: Uuid,
    failed: AtomicBool,
    seen: Arc<std::sync::Mutex<Vec<i32>>>,
}

impl Publisher for Attempts {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        self.seen.lock().expect("seen").push(event.attempts);
        if event.id == self.fail_at && !self.failed.swap(true, Ordering::SeqCst) {
            return Err(PublishError::retriable("injected: broker timed out"));
        }
        Ok(())
    }
}

#[tokio::test]
async fn an_event_behind_its_runs_head_counts_its_attempts_and_the_held_back_ones_do_not() {
    let db = outbox_db().await;
    let events = enqueue_run(&db.pool, "t", "hot", 5).await;
    let seen = Arc::new(std::sync::Mutex::default());
    let publisher = Attempts {
        fail_at: events[2].id,
        failed: AtomicBool::new(false),
        seen: Arc::clone(&seen),
    };
    let relay = Relay::new(
        db.pool.clone(),
        publisher,
        RelayConfig::default().backoff(fast_backoff(10)),
    )
    .expect("relay");
    let first = relay.run_once().await.expect("batch");
    assert_eq!((first.claimed, first.published, first.retried), (5, 2, 3));
    while count(&db.pool, "SELECT count(*) FROM outbox_events").await > 0 {
        relay.run_once().await.expect("batch");
    }
    assert_eq!(
        *seen.lock().expect("seen"),
        [1, 1, 1, 2, 1, 1],
        "the failed event's retry is its second attempt; the two held back behind it were not \
         sent, and their first send is their first attempt"
    );
}
