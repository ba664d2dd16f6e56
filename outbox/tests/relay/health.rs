//! A relay's health: stalled while the broker cannot take its events, publishing again after.

use super::*;

/// Publishes through an unreachable broker (every event times out) while `down` is set, and
/// through the real one otherwise.
struct Outage {
    up: KafkaPublisher,
    unreachable: KafkaPublisher,
    down: Arc<AtomicBool>,
}

impl Publisher for Outage {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        if self.down.load(Ordering::SeqCst) {
            self.unreachable.publish(event).await
        } else {
            self.up.publish(event).await
        }
    }
}

#[tokio::test]
async fn a_relay_is_stalled_while_the_broker_times_out_and_publishing_once_it_answers() {
    let db = outbox_db().await;
    let topic = testkit::kafka::topic(1).await;
    let down = Arc::new(AtomicBool::new(true));
    let unreachable = KafkaPublisher::from_config(
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("message.timeout.ms", "500"),
    )
    .expect("publisher");
    let publisher = Outage {
        up: kafka().await,
        unreachable,
        down: Arc::clone(&down),
    };
    let relay = Relay::new(
        db.pool.clone(),
        publisher,
        RelayConfig::default().backoff(fast_backoff(u32::MAX)),
    )
    .expect("relay");
    let monitor = relay.monitor();
    assert_eq!(monitor.stalled(), None, "a new relay is not stalled");

    let event =
        NewEvent::json(&topic, "order", "1", "OrderPlaced", &serde_json::json!({})).expect("json");
    let mut conn = db.pool.acquire().await.expect("connection");
    outbox::enqueue(&mut conn, &event).await.expect("enqueue");
    let outcome = relay.run_once().await.expect("batch");
    assert_eq!((outcome.published, outcome.retried), (0, 1));
    let stalled = monitor
        .stalled()
        .expect("stalled after a batch that published nothing");
    assert!(!stalled.error.is_empty());

    // Nothing due while the event waits for its retry: still stalled, the broker was not tried.
    let outcome = relay.run_once().await.expect("batch");
    if outcome.claimed == 0 {
        assert!(
            monitor.stalled().is_some(),
            "an idle claim does not clear a broker stall"
        );
    }

    down.store(false, Ordering::SeqCst);
    drain(&relay, &db.pool).await;
    assert_eq!(monitor.stalled(), None, "publishing again");
    assert_eq!(testkit::kafka::read_all(&topic).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_waiting_on_an_absent_broker_is_stalled_after_a_while_and_publishes_when_it_returns()
 {
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;

    let db = outbox_db().await;
    let cluster: MockCluster<'static, DefaultProducerContext> =
        MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("orders", 1, 1).expect("topic");
    let bootstrap = cluster.bootstrap_servers();
    // No delivery timeout (the default): the event waits for the broker instead of failing.
    let publisher = KafkaPublisher::new(&bootstrap).expect("publisher");
    let event = NewEvent::bytes("orders", "order", "1", "OrderPlaced", vec![1]);
    let mut conn = db.pool.acquire().await.expect("connection");
    outbox::enqueue(&mut conn, &event).await.expect("enqueue");
    cluster.broker_down(1).expect("broker down");
    let stalled_after = Duration::from_secs(2);
    let config = RelayConfig::default().stalled_after(stalled_after);
    let relay = Relay::new(db.pool.clone(), publisher, config).expect("relay");
    let monitor = relay.monitor();
    let batch = tokio::spawn(async move { relay.run_once().await });

    tokio::time::sleep(stalled_after / 2).await;
    assert_eq!(monitor.stalled(), None, "a short wait is not a stall");
    tokio::time::sleep(stalled_after / 2 + Duration::from_secs(1)).await;
    let stalled = monitor.stalled().expect("stalled while the batch waits");
    assert!(stalled.error.contains("waited"), "{}", stalled.error);

    cluster.broker_up(1).expect("broker up");
    let outcome = batch.await.expect("task").expect("batch");
    assert_eq!((outcome.published, outcome.retried), (1, 0));
    assert_eq!(monitor.stalled(), None, "publishing again");
    assert_eq!(
        testkit::kafka::read_all_from(&bootstrap, "orders")
            .await
            .len(),
        1
    );
}
