//! Failures: poison events dead-lettered, and four relays with injected failures keeping per-aggregate order.

use super::*;

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
    // The relays keep 1, 2, 3 and 4 batches in flight: claiming ahead never reorders.
    let mut relays = Vec::new();
    for n in 0..4 {
        let publisher = Flaky {
            inner: kafka().await,
            calls: AtomicUsize::new(n),
            every: 7,
        };
        let config = RelayConfig::default()
            .batch_size(50)
            .pipeline_depth(u32::try_from(n + 1).expect("small"))
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

/// Takes every event's lease away (as a relay that claimed it after this one's lease expired
/// would), then fails: permanently for `poison`, retriably for the rest.
struct StealThenFail {
    pool: PgPool,
    poison: Uuid,
}

impl Publisher for StealThenFail {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        sqlx::query(
            "UPDATE outbox_events SET lease_owner = 'thief', lease_token = lease_token + 1
             WHERE id = $1",
        )
        .bind(event.id)
        .execute(&self.pool)
        .await
        .expect("steal");
        if event.id == self.poison {
            Err(PublishError::permanent("injected: message too large"))
        } else {
            Err(PublishError::retriable("injected: broker timed out"))
        }
    }
}

#[tokio::test]
async fn a_relay_that_lost_its_leases_neither_retries_nor_dead_letters() {
    let db = outbox_db().await;
    let poison = NewEvent::bytes("t", "order", "a", "OrderPlaced", vec![1]);
    let retried = NewEvent::bytes("t", "order", "b", "OrderPlaced", vec![2]);
    let mut tx = db.pool.begin().await.expect("begin");
    outbox::enqueue_many(&mut tx, &[poison.clone(), retried])
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    let publisher = StealThenFail {
        pool: db.pool.clone(),
        poison: poison.id,
    };
    let relay = Relay::new(db.pool.clone(), publisher, RelayConfig::default()).expect("relay");

    let outcome = relay.run_once().await.expect("batch");
    assert_eq!(
        (
            outcome.claimed,
            outcome.lost,
            outcome.retried,
            outcome.dead_lettered
        ),
        (2, 2, 0, 0)
    );
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM outbox_events
             WHERE lease_owner = 'thief' AND last_error IS NULL AND lease_expires_at IS NOT NULL"
        )
        .await,
        2,
        "the new holder's rows are untouched: no error recorded, no release"
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox_dead_letters").await,
        0
    );
}
