//! Lifecycle: LISTEN/NOTIFY wake-up, graceful shutdown, a broker away for a while, retention and purge.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_publishes_long_before_the_poll_interval() {
    let db = outbox_db().await;
    let topic = testkit::kafka::topic(1).await;
    let poll = Duration::from_secs(10);
    let relay = Relay::new(
        db.pool.clone(),
        kafka().await,
        RelayConfig::default().poll_interval(poll),
    )
    .expect("relay")
    .spawn();
    // Let the relay go idle (its first empty claim), then commit one event.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut tx = db.pool.begin().await.expect("begin");
    outbox::enqueue(
        &mut tx,
        &NewEvent::bytes(&topic, "order", "1", "OrderPlaced", vec![1]),
    )
    .await
    .expect("enqueue");
    tx.commit().await.expect("commit");
    let committed = tokio::time::Instant::now();
    wait_until_empty(&db.pool, poll).await;
    let latency = committed.elapsed();
    relay.shutdown().await;
    println!("commit to acknowledged-and-marked: {latency:?}");
    // Polling alone would take up to 10 s; the notification makes it milliseconds. The bound
    // leaves room for a loaded machine while still telling the two apart.
    assert!(
        latency < poll / 2,
        "published after {latency:?}: the notification did not wake the relay"
    );
    assert_eq!(testkit::kafka::read_all(&topic).await.len(), 1);
}

/// Publishes after a delay, as a broker that takes its time would.
struct Slow(KafkaPublisher, Duration);

impl Publisher for Slow {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        tokio::time::sleep(self.1).await;
        self.0.publish(event).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_one_aggregate_drains_without_waiting_for_a_poll_per_event() {
    let db = outbox_db().await;
    let topic = testkit::kafka::topic(1).await;
    // Committed before the relay listens: no notification will come for them.
    let events: Vec<NewEvent> = (0..30)
        .map(|n| NewEvent::bytes(&topic, "order", "hot", "OrderChanged", vec![n]))
        .collect();
    let mut tx = db.pool.begin().await.expect("begin");
    outbox::enqueue_many(&mut tx, &events)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    let poll = Duration::from_secs(10);
    let relay = Relay::new(
        db.pool.clone(),
        kafka().await,
        RelayConfig::default().poll_interval(poll).batch_size(10),
    )
    .expect("relay")
    .spawn();
    // A run starts at the aggregate's oldest unpublished event: in batches of 10 the backlog
    // takes three claims, each possible only once the one before is published. A relay that
    // waited for the poll interval between them would need two polls (20 s). It claims again as
    // soon as a batch took events off the aggregate's head.
    wait_until_empty(&db.pool, poll).await;
    relay.shutdown().await;
    let published: Vec<Vec<u8>> = testkit::kafka::read_all(&topic)
        .await
        .iter()
        .map(|m| m.payload().expect("payload").to_vec())
        .collect();
    let expected: Vec<Vec<u8>> = (0..30).map(|n| vec![n]).collect();
    assert_eq!(published, expected, "in commit order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_leaves_no_row_leased() {
    let db = outbox_db().await;
    let topic = testkit::kafka::topic(1).await;
    let mut tx = db.pool.begin().await.expect("begin");
    let events: Vec<NewEvent> = (0..500)
        .map(|i| NewEvent::bytes(&topic, "order", format!("{i}"), "OrderPlaced", vec![1]))
        .collect();
    outbox::enqueue_many(&mut tx, &events)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    let relay = Relay::new(
        db.pool.clone(),
        Slow(kafka().await, Duration::from_millis(200)),
        RelayConfig::default().batch_size(100),
    )
    .expect("relay")
    .spawn();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while count(
        &db.pool,
        "SELECT count(*) FROM outbox_events WHERE lease_expires_at IS NOT NULL",
    )
    .await
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay never claimed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.shutdown().await;
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM outbox_events WHERE lease_expires_at IS NOT NULL"
        )
        .await,
        0
    );
    let left = count(&db.pool, "SELECT count(*) FROM outbox_events").await;
    assert!(left > 0 && left < 500, "stopped mid-way: {left} left");
    assert_eq!(
        testkit::kafka::read_all(&topic).await.len() as i64,
        500 - left,
        "what was published was marked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_unavailable_for_a_while_then_everything_is_published() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;

    let db = outbox_db().await;
    let cluster: MockCluster<'static, DefaultProducerContext> =
        MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("orders", 1, 1).expect("topic");
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("message.timeout.ms", "500");
    let publisher = KafkaPublisher::from_config(&config).expect("publisher");
    let mut tx = db.pool.begin().await.expect("begin");
    let events: Vec<NewEvent> = (0..100)
        .map(|i| NewEvent::bytes("orders", "order", format!("{i}"), "OrderPlaced", vec![1]))
        .collect();
    outbox::enqueue_many(&mut tx, &events)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");

    cluster.broker_down(1).expect("broker down");
    let relay = Relay::new(
        db.pool.clone(),
        publisher,
        RelayConfig::default()
            .backoff(fast_backoff(1000))
            .poll_interval(Duration::from_millis(50)),
    )
    .expect("relay");
    // While the broker is down every attempt fails and is scheduled again; nothing is lost.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while count(
        &db.pool,
        "SELECT count(*) FROM outbox_events WHERE attempts >= 2 AND last_error IS NOT NULL",
    )
    .await
        < 100
    {
        relay.run_once().await.expect("batch");
        assert!(tokio::time::Instant::now() < deadline, "no retries seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox_events").await,
        100
    );
    cluster.broker_up(1).expect("broker up");
    drain(&relay, &db.pool).await;
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox_dead_letters").await,
        0
    );
    let published: HashSet<Uuid> =
        testkit::kafka::read_all_from(&cluster.bootstrap_servers(), "orders")
            .await
            .iter()
            .map(event_id)
            .collect();
    assert_eq!(
        published,
        events.iter().map(|e| e.id).collect(),
        "every event published once the broker is back"
    );
}

#[tokio::test]
async fn keep_retention_marks_published_rows_and_purge_deletes_them_in_chunks() {
    let db = outbox_db().await;
    let topic = testkit::kafka::topic(1).await;
    let mut tx = db.pool.begin().await.expect("begin");
    let events: Vec<NewEvent> = (0..25)
        .map(|i| NewEvent::bytes(&topic, "order", format!("{i}"), "OrderPlaced", vec![1]))
        .collect();
    outbox::enqueue_many(&mut tx, &events)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    let relay = Relay::new(
        db.pool.clone(),
        kafka().await,
        RelayConfig::default().retention(outbox::Retention::Keep),
    )
    .expect("relay");
    assert_eq!(relay.run_once().await.expect("batch").published, 25);
    assert_eq!(
        relay.run_once().await.expect("batch").claimed,
        0,
        "published rows are never claimed again"
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox_events WHERE published_at IS NOT NULL AND next_attempt_at IS NULL").await,
        25
    );
    assert!(
        matches!(
            outbox::purge_published(&db.pool, Duration::ZERO, 0).await,
            Err(outbox::Error::InvalidConfig(_))
        ),
        "a zero batch size is refused, not looped on"
    );
    assert_eq!(
        outbox::purge_published(&db.pool, Duration::from_secs(3600), 10)
            .await
            .expect("purge"),
        0,
        "too recent"
    );
    assert_eq!(
        outbox::purge_published(&db.pool, Duration::ZERO, 10)
            .await
            .expect("purge"),
        25
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox_events").await,
        0
    );
    assert_eq!(testkit::kafka::read_all(&topic).await.len(), 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_slower_than_the_lease_keeps_its_lease() {
    let db = outbox_db().await;
    let topic = testkit::kafka::topic(1).await;
    let mut tx = db.pool.begin().await.expect("begin");
    outbox::enqueue(
        &mut tx,
        &NewEvent::bytes(&topic, "order", "slow", "OrderPlaced", vec![1]),
    )
    .await
    .expect("enqueue");
    tx.commit().await.expect("commit");
    let ttl = Duration::from_millis(300);
    let slow = Relay::new(
        db.pool.clone(),
        Slow(kafka().await, Duration::from_millis(1500)),
        RelayConfig::default().lease_ttl(ttl),
    )
    .expect("relay");
    let other = Relay::new(
        db.pool.clone(),
        kafka().await,
        RelayConfig::default().lease_ttl(ttl),
    )
    .expect("relay");
    let first = tokio::spawn(async move { slow.run_once().await });
    // The slow delivery outlasts its lease five times over; the heartbeat keeps it.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(other.run_once().await.expect("batch").claimed, 0);
    }
    let outcome = first.await.expect("task").expect("batch");
    assert_eq!(
        (outcome.claimed, outcome.published, outcome.lost),
        (1, 1, 0)
    );
    assert_eq!(
        testkit::kafka::read_all(&topic).await.len(),
        1,
        "published once"
    );
}

#[tokio::test]
async fn a_relay_keeps_at_least_one_batch_in_flight() {
    let db = outbox_db().await;
    let publisher = || {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:9");
        KafkaPublisher::from_config(&config).expect("publisher")
    };
    let err = Relay::new(
        db.pool.clone(),
        publisher(),
        RelayConfig::default().pipeline_depth(0),
    )
    .expect_err("a relay keeps at least one batch in flight");
    assert!(matches!(err, outbox::Error::InvalidConfig(_)), "{err}");
}
