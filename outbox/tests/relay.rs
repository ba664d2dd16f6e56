//! The outbox against real PostgreSQL and the Kafka-protocol broker (and librdkafka's mock
//! cluster where a broker must fail on command).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use outbox::{
    Backoff, Event, KafkaPublisher, NewEvent, PublishError, Publisher, Relay, RelayConfig,
};
use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};
use sqlx::PgPool;
use testkit::TestDb;
use uuid::Uuid;

async fn outbox_db() -> TestDb {
    testkit::database(&outbox::MIGRATOR).await
}

async fn kafka() -> KafkaPublisher {
    KafkaPublisher::from_config(&testkit::kafka::producer_config().await).expect("publisher")
}

fn fast_backoff(max_attempts: u32) -> Backoff {
    Backoff::new(
        Duration::from_millis(10),
        Duration::from_millis(100),
        max_attempts,
    )
    .expect("backoff")
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// Runs `relay` batch after batch until a batch claims nothing and the outbox is empty.
async fn drain<P: Publisher>(relay: &Relay<P>, pool: &PgPool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let outcome = relay.run_once().await.expect("batch");
        if outcome.claimed == 0 {
            if count(pool, "SELECT count(*) FROM outbox_events").await == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "outbox did not drain"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn wait_until_empty(pool: &PgPool, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while count(pool, "SELECT count(*) FROM outbox_events").await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "outbox did not drain in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

fn event_id(message: &OwnedMessage) -> Uuid {
    header(message, "event-id")
        .and_then(|id| id.parse().ok())
        .expect("event-id header")
}

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
        let traceparent = header(message, "traceparent").expect("traceparent");
        assert_eq!(
            traceparent.split('-').map(str::len).collect::<Vec<_>>(),
            [2, 32, 16, 2],
            "{traceparent}"
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

/// Fails with a retriable error for one event while `failing` is set; publishes otherwise.
struct FailFor {
    inner: KafkaPublisher,
    event: Uuid,
    failing: Arc<AtomicBool>,
}

impl Publisher for FailFor {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        if event.id == self.event && self.failing.load(Ordering::SeqCst) {
            return Err(PublishError::retriable("injected: broker timed out"));
        }
        self.inner.publish(event).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_are_dead_lettered_with_reason_and_replayable_while_others_flow() {
    let db = outbox_db().await;
    let topic = testkit::kafka::topic(1).await;
    let mut tx = db.pool.begin().await.expect("begin");
    let too_large = NewEvent::bytes(
        &topic,
        "order",
        "big",
        "OrderPlaced",
        vec![0_u8; 2 * 1024 * 1024],
    );
    let stuck = NewEvent::bytes(&topic, "order", "stuck", "OrderPlaced", b"s1".to_vec());
    let stuck_next = NewEvent::bytes(&topic, "order", "stuck", "OrderPaid", b"s2".to_vec());
    let mut events = vec![too_large.clone(), stuck.clone(), stuck_next.clone()];
    events.extend(
        (0..50)
            .map(|i| NewEvent::bytes(&topic, "order", format!("ok-{i}"), "OrderPlaced", vec![2])),
    );
    outbox::enqueue_many(&mut tx, &events)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");

    let failing = Arc::new(AtomicBool::new(true));
    let publisher = FailFor {
        inner: kafka().await,
        event: stuck.id,
        failing: Arc::clone(&failing),
    };
    let relay = Relay::new(
        db.pool.clone(),
        publisher,
        RelayConfig::default().backoff(fast_backoff(3)),
    )
    .expect("relay");
    // Until the poison is dead-lettered, the healthy aggregates are all published anyway.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while count(&db.pool, "SELECT count(*) FROM outbox_dead_letters").await < 2 {
        relay.run_once().await.expect("batch");
        assert!(
            tokio::time::Instant::now() < deadline,
            "poison not dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM outbox_events WHERE aggregate_id LIKE 'ok-%'"
        )
        .await,
        0
    );

    let dead = outbox::dead_letters::list(&db.pool, 10)
        .await
        .expect("list");
    let by_id: BTreeMap<Uuid, &outbox::dead_letters::DeadLetter> =
        dead.iter().map(|d| (d.id, d)).collect();
    let big = by_id.get(&too_large.id).expect("too large is dead");
    assert_eq!(
        (big.reason.as_str(), big.attempts),
        ("permanent publish failure", 1)
    );
    assert!(
        big.last_error.to_lowercase().contains("size") || big.last_error.contains("large"),
        "{}",
        big.last_error
    );
    let s = by_id.get(&stuck.id).expect("stuck is dead");
    assert_eq!(
        (s.reason.as_str(), s.attempts),
        ("attempts exhausted (3)", 3)
    );
    assert!(s.last_error.contains("injected"));

    // With the poison gone, its aggregate's next event flows; the replayed one follows it.
    drain(&relay, &db.pool).await;
    failing.store(false, Ordering::SeqCst);
    assert!(
        outbox::dead_letters::replay(&db.pool, stuck.id)
            .await
            .expect("replay")
    );
    drain(&relay, &db.pool).await;
    assert!(
        outbox::dead_letters::discard(&db.pool, too_large.id)
            .await
            .expect("discard")
    );
    assert!(
        outbox::dead_letters::list(&db.pool, 10)
            .await
            .expect("list")
            .is_empty()
    );

    let messages = testkit::kafka::read_all(&topic).await;
    let stuck_order: Vec<Uuid> = messages
        .iter()
        .filter(|m| m.key() == Some(b"stuck"))
        .map(event_id)
        .collect();
    assert_eq!(
        stuck_order,
        [stuck_next.id, stuck.id],
        "replay publishes the dead letter after the events that flowed"
    );
    assert_eq!(messages.len(), 52);
}

/// Fails about one publish in `1/every` with a retriable error, before sending anything.
struct Flaky {
    inner: KafkaPublisher,
    calls: AtomicUsize,
    every: usize,
}

impl Publisher for Flaky {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) % self.every == 0 {
            return Err(PublishError::retriable("injected failure"));
        }
        self.inner.publish(event).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_relays_with_injected_failures_keep_per_aggregate_commit_order() {
    let db = outbox_db().await;
    let topic = testkit::kafka::topic(4).await;
    // 100 transactions; each appends event k to each of 100 aggregates, so per aggregate the
    // commit order is k = 0, 1, ..., 99.
    for k in 0..100_u8 {
        let mut tx = db.pool.begin().await.expect("begin");
        let events: Vec<NewEvent> = (0..100)
            .map(|a| NewEvent::bytes(&topic, "account", format!("acct-{a}"), "Moved", vec![k]))
            .collect();
        outbox::enqueue_many(&mut tx, &events)
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
    }
    let mut relays = Vec::new();
    for n in 0..4 {
        let publisher = Flaky {
            inner: kafka().await,
            calls: AtomicUsize::new(n),
            every: 7,
        };
        let config = RelayConfig::default()
            .batch_size(50)
            .backoff(fast_backoff(100))
            .poll_interval(Duration::from_millis(50));
        relays.push(
            Relay::new(db.pool.clone(), publisher, config)
                .expect("relay")
                .spawn(),
        );
    }
    wait_until_empty(&db.pool, Duration::from_secs(240)).await;
    for relay in relays {
        relay.shutdown().await;
    }
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox_dead_letters").await,
        0
    );

    let messages = testkit::kafka::read_all(&topic).await;
    let mut first_seen: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    // Within a partition, offsets are the order of appearance.
    let mut sorted: Vec<&OwnedMessage> = messages.iter().collect();
    sorted.sort_by_key(|m| (m.partition(), m.offset()));
    for m in sorted {
        let k = m.payload().expect("payload")[0];
        let seen = first_seen
            .entry(m.key().expect("key").to_vec())
            .or_default();
        if !seen.contains(&k) {
            seen.push(k);
        }
    }
    assert_eq!(first_seen.len(), 100);
    let expected: Vec<u8> = (0..100).collect();
    for (aggregate, order) in &first_seen {
        assert_eq!(
            order,
            &expected,
            "aggregate {}",
            String::from_utf8_lossy(aggregate)
        );
    }
}

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

/// Publishes slowly, so a shutdown lands in the middle of the work.
struct Slow(KafkaPublisher);

impl Publisher for Slow {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.0.publish(event).await
    }
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
        Slow(kafka().await),
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
