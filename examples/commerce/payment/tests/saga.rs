//! The saga consumer and the charger against a real PostgreSQL database: each event is delivered
//! as the consumer runner delivers it (inbox record and handler in one transaction), then the
//! charger makes what charges are due; plus one run of a real `inbox::Consumer` over a test
//! topic.

use std::time::Duration;

use commerce_events::{Envelope, Event, Topics};
use commerce_payment::{CONSUMER, Saga, charger};
use commerce_platform::events::{Events, decode};
use commerce_platform::testing::{self, published, published_types};
use inbox::{DeadLetterReason, Delivery, Message};
use sqlx::PgPool;
use uuid::Uuid;

fn saga() -> Saga {
    Saga::new(Topics::new("test"))
}

/// [`testing::deliver`] to `saga`, as the service's consumer.
async fn deliver(pool: &PgPool, saga: &Saga, envelope: &Envelope) -> Delivery {
    testing::deliver(pool, CONSUMER, saga, envelope).await
}

/// [`testing::apply`] to the saga, as the service's consumer: the event must be fresh.
async fn apply(pool: &PgPool, envelope: &Envelope) {
    testing::apply(pool, CONSUMER, &saga(), envelope).await;
}

/// Runs the charger until no payment is due.
async fn charge(pool: &PgPool) {
    let leases = charger::leases("test-charger").expect("leases");
    while charger::charge_due(pool, &Topics::new("test"), &leases)
        .await
        .expect("charges")
        > 0
    {}
}

fn reserved(order_id: Uuid, customer_id: &str, total_cents: i64) -> Envelope {
    Event::StockReserved {
        order_id,
        total_cents,
        customer_id: customer_id.into(),
    }
    .into_envelope()
}

fn cancelled(order_id: Uuid) -> Envelope {
    Event::OrderCancelled {
        order_id,
        customer_id: "alice".into(),
        reason: "cancelled by customer".into(),
    }
    .into_envelope()
}

#[derive(Debug, PartialEq, Eq)]
struct Row {
    payment_id: Uuid,
    amount_cents: i64,
    status: String,
    reason: Option<String>,
}

async fn payments(pool: &PgPool, order_id: Uuid) -> Vec<Row> {
    sqlx::query_as::<_, (Uuid, i64, String, Option<String>)>(
        "SELECT payment_id, amount_cents, status, reason FROM payments WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await
    .expect("payments")
    .into_iter()
    .map(|(payment_id, amount_cents, status, reason)| Row {
        payment_id,
        amount_cents,
        status,
        reason,
    })
    .collect()
}

async fn database() -> testkit::TestDb {
    testing::database(&commerce_payment::MIGRATOR).await
}

#[tokio::test]
async fn approves_and_publishes_payment_approved() {
    let db = database().await;
    let order_id = Uuid::now_v7();
    apply(&db.pool, &reserved(order_id, "alice", 1500)).await;
    charge(&db.pool).await;

    let rows = payments(&db.pool, order_id).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "APPROVED");
    assert_eq!(rows[0].amount_cents, 1500);
    assert_eq!(
        published(&db.pool, order_id).await,
        [(
            "test.payments".to_owned(),
            Event::PaymentApproved {
                order_id,
                payment_id: rows[0].payment_id,
                amount_cents: 1500,
            }
        )]
    );
}

#[tokio::test]
async fn declines_and_publishes_payment_declined() {
    let db = database().await;
    let order_id = Uuid::now_v7();
    apply(&db.pool, &reserved(order_id, "decline-bob", 900)).await;
    charge(&db.pool).await;

    let rows = payments(&db.pool, order_id).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "DECLINED");
    assert_eq!(rows[0].reason.as_deref(), Some("card declined"));
    assert_eq!(
        published(&db.pool, order_id).await,
        [(
            "test.payments".to_owned(),
            Event::PaymentDeclined {
                order_id,
                reason: "card declined".into(),
            }
        )]
    );
}

#[tokio::test]
async fn a_provider_timeout_leaves_the_payment_pending_until_the_order_is_cancelled() {
    let db = database().await;
    let order_id = Uuid::now_v7();
    apply(&db.pool, &reserved(order_id, "timeout-carol", 700)).await;
    charge(&db.pool).await;

    let rows = payments(&db.pool, order_id).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "PENDING");
    assert_eq!(published(&db.pool, order_id).await, []);

    // The order's reservation expires: the pending payment is abandoned, nothing is published,
    // and when its next turn comes it is not charged.
    apply(&db.pool, &cancelled(order_id)).await;
    sqlx::query("UPDATE payments SET next_attempt_at = now() WHERE order_id = $1")
        .bind(order_id)
        .execute(&db.pool)
        .await
        .expect("due again");
    charge(&db.pool).await;
    let rows = payments(&db.pool, order_id).await;
    assert_eq!(rows[0].status, "DECLINED");
    assert_eq!(rows[0].reason.as_deref(), Some("order cancelled"));
    assert_eq!(published(&db.pool, order_id).await, []);
}

#[tokio::test]
async fn the_same_event_twice_charges_once() {
    let db = database().await;
    let order_id = Uuid::now_v7();
    let event = reserved(order_id, "alice", 1000);
    assert_eq!(deliver(&db.pool, &saga(), &event).await, Delivery::Fresh);
    assert_eq!(
        deliver(&db.pool, &saga(), &event).await,
        Delivery::Duplicate
    );
    charge(&db.pool).await;

    assert_eq!(payments(&db.pool, order_id).await.len(), 1);
    assert_eq!(published(&db.pool, order_id).await.len(), 1);
}

#[tokio::test]
async fn two_different_events_for_one_order_charge_once() {
    let db = database().await;
    let order_id = Uuid::now_v7();
    assert_eq!(
        deliver(&db.pool, &saga(), &reserved(order_id, "alice", 1000)).await,
        Delivery::Fresh
    );
    assert_eq!(
        deliver(&db.pool, &saga(), &reserved(order_id, "alice", 1000)).await,
        Delivery::Fresh
    );
    charge(&db.pool).await;

    let rows = payments(&db.pool, order_id).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "APPROVED");
    let events = published(&db.pool, order_id).await;
    assert_eq!(events.len(), 1, "{events:?}");
}

#[tokio::test]
async fn concurrent_events_for_one_order_charge_once() {
    let db = database().await;
    let orders: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    let deliveries = orders.iter().flat_map(|&order_id| {
        let pool = db.pool.clone();
        [0, 1].map(move |_| {
            let pool = pool.clone();
            tokio::spawn(
                async move { deliver(&pool, &saga(), &reserved(order_id, "alice", 100)).await },
            )
        })
    });
    for delivery in futures_join(deliveries.collect()).await {
        assert_eq!(delivery, Delivery::Fresh);
    }
    charge(&db.pool).await;
    for order_id in orders {
        assert_eq!(payments(&db.pool, order_id).await.len(), 1);
        let events = published(&db.pool, order_id).await;
        assert!(
            matches!(events.as_slice(), [(_, Event::PaymentApproved { .. })]),
            "{events:?}"
        );
    }
}

async fn futures_join<T: Send + 'static>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut results = Vec::with_capacity(handles.len());
    for handle in handles {
        results.push(handle.await.expect("task"));
    }
    results
}

#[tokio::test]
async fn a_cancellation_after_the_charge_refunds_it_once() {
    let db = database().await;
    let order_id = Uuid::now_v7();
    apply(&db.pool, &reserved(order_id, "alice", 2500)).await;
    charge(&db.pool).await;
    apply(&db.pool, &cancelled(order_id)).await;
    // A second cancellation event (another event id) refunds nothing more.
    apply(&db.pool, &cancelled(order_id)).await;

    let rows = payments(&db.pool, order_id).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "REFUNDED");
    assert_eq!(rows[0].reason.as_deref(), Some("cancelled by customer"));
    let payment_id = rows[0].payment_id;
    assert_eq!(
        published(&db.pool, order_id).await,
        [
            (
                "test.payments".to_owned(),
                Event::PaymentApproved {
                    order_id,
                    payment_id,
                    amount_cents: 2500,
                }
            ),
            (
                "test.payments".to_owned(),
                Event::PaymentRefunded {
                    order_id,
                    payment_id,
                    customer_id: "alice".into(),
                    amount_cents: 2500,
                }
            ),
        ]
    );
}

#[tokio::test]
async fn a_declined_payment_is_not_refunded() {
    let db = database().await;
    let order_id = Uuid::now_v7();
    apply(&db.pool, &reserved(order_id, "decline-x", 100)).await;
    charge(&db.pool).await;
    apply(&db.pool, &cancelled(order_id)).await;

    assert_eq!(payments(&db.pool, order_id).await[0].status, "DECLINED");
    let events = published(&db.pool, order_id).await;
    assert!(
        matches!(events.as_slice(), [(_, Event::PaymentDeclined { .. })]),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_cancelled_order_is_never_charged() {
    let db = database().await;
    let order_id = Uuid::now_v7();
    apply(&db.pool, &cancelled(order_id)).await;
    apply(&db.pool, &reserved(order_id, "alice", 1000)).await;

    assert_eq!(payments(&db.pool, order_id).await, []);
    assert_eq!(published(&db.pool, order_id).await, []);
    let reason: String =
        sqlx::query_scalar("SELECT reason FROM cancelled_orders WHERE order_id = $1")
            .bind(order_id)
            .fetch_one(&db.pool)
            .await
            .expect("recorded");
    assert_eq!(reason, "cancelled by customer");
}

#[tokio::test]
async fn a_concurrent_reservation_and_cancellation_never_leave_a_charge() {
    let db = database().await;
    let orders: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
    let mut tasks = Vec::new();
    for &order_id in &orders {
        let (a, b) = (db.pool.clone(), db.pool.clone());
        tasks.push(tokio::spawn(async move {
            deliver(&a, &saga(), &reserved(order_id, "alice", 100)).await
        }));
        tasks.push(tokio::spawn(async move {
            deliver(&b, &saga(), &cancelled(order_id)).await
        }));
    }
    for delivery in futures_join(tasks).await {
        assert_eq!(delivery, Delivery::Fresh);
    }
    charge(&db.pool).await;
    for order_id in orders {
        let rows = payments(&db.pool, order_id).await;
        let events = published_types(&db.pool, order_id).await;
        match rows.as_slice() {
            // The cancellation came first: no payment at all.
            [] => assert_eq!(events, Vec::<&str>::new()),
            // The reservation came first: its payment was abandoned before its charge.
            [row] => {
                assert_eq!(row.status, "DECLINED");
                assert_eq!(row.reason.as_deref(), Some("order cancelled"));
                assert_eq!(events, Vec::<&str>::new());
            }
            more => panic!("more than one payment: {more:?}"),
        }
    }
}

#[tokio::test]
async fn a_charge_approved_while_its_order_was_cancelled_is_refunded() {
    let db = database().await;
    let order_id = Uuid::now_v7();
    // The provider takes a few seconds to approve `slow` customers.
    apply(&db.pool, &reserved(order_id, "slow-sam", 800)).await;
    let charging = tokio::spawn({
        let pool = db.pool.clone();
        async move { charge(&pool).await }
    });
    // Once the charger has claimed the payment, the provider is thinking for seconds; the charge
    // holds no transaction and no lock meanwhile.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, Option<String>>(
        "SELECT lease_owner FROM payments WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_one(&db.pool)
    .await
    .expect("payment")
    .is_none()
    {
        assert!(tokio::time::Instant::now() < deadline, "never claimed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    apply(&db.pool, &cancelled(order_id)).await;
    assert_eq!(payments(&db.pool, order_id).await[0].status, "DECLINED");
    charging.await.expect("the charger ran");

    let rows = payments(&db.pool, order_id).await;
    assert_eq!(rows[0].status, "REFUNDED");
    assert_eq!(
        published_types(&db.pool, order_id).await,
        ["PaymentApproved", "PaymentRefunded"]
    );
}

#[tokio::test]
async fn a_charge_made_but_not_settled_before_its_order_was_cancelled_is_refunded_on_the_next_try()
{
    let db = database().await;
    let order_id = Uuid::now_v7();
    apply(&db.pool, &reserved(order_id, "alice", 600)).await;
    // A charger claims the payment and asks the provider, then dies before settling it.
    let lost = charger::leases("dead-charger").expect("leases");
    let claimed: Vec<(leases::Lease<Uuid>, (Uuid,))> = lost
        .claim_rows(&db.pool, 1, Duration::from_secs(30))
        .await
        .expect("claimed");
    assert_eq!(claimed.len(), 1);
    // The order is cancelled meanwhile: the payment is abandoned.
    apply(&db.pool, &cancelled(order_id)).await;
    assert_eq!(payments(&db.pool, order_id).await[0].status, "DECLINED");
    // Its lease expires; the next charger asks again, finds the charge, and refunds it.
    sqlx::query(
        "UPDATE payments SET lease_expires_at = now() - interval '1 second' WHERE order_id = $1",
    )
    .bind(order_id)
    .execute(&db.pool)
    .await
    .expect("expire the lease");
    charge(&db.pool).await;
    assert_eq!(payments(&db.pool, order_id).await[0].status, "REFUNDED");
    assert_eq!(
        published_types(&db.pool, order_id).await,
        ["PaymentApproved", "PaymentRefunded"]
    );
}

#[tokio::test]
async fn ignores_other_events_and_refuses_unknown_ones() {
    let db = database().await;
    let order_id = Uuid::now_v7();
    apply(
        &db.pool,
        &Event::StockConfirmed { order_id }.into_envelope(),
    )
    .await;
    assert_eq!(payments(&db.pool, order_id).await, []);
    assert_eq!(published(&db.pool, order_id).await, []);

    let mut json: serde_json::Value =
        serde_json::from_slice(&reserved(order_id, "alice", 1).to_json()).expect("json");
    json["event_type"] = "ChargeTwice".into();
    let unknown = Message::new("t", 0, 0, None, Some(json.to_string().into_bytes()), vec![]);
    let error = decode(&unknown).expect_err("refused");
    assert_eq!(
        error.dead_letter_reason(),
        Some(DeadLetterReason::UnknownEventType)
    );
    let garbage = Message::new("t", 0, 0, None, Some(b"{".to_vec()), vec![]);
    assert_eq!(
        decode(&garbage).expect_err("refused").dead_letter_reason(),
        Some(DeadLetterReason::DecodeFailed)
    );
}

#[tokio::test]
async fn a_real_consumer_charges_once_and_dead_letters_poison() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let db = database().await;
    let topic = testkit::kafka::topic(1).await;
    let dead_letters = testkit::kafka::topic(1).await;
    let producer: FutureProducer = testkit::kafka::producer_config()
        .await
        .create()
        .expect("producer");
    let order_id = Uuid::now_v7();
    let event = reserved(order_id, "alice", 4200);
    let event_id = event.event_id.to_string();
    let payloads = [
        event.to_json(),
        event.to_json(),
        b"not an envelope".to_vec(),
    ];
    for payload in &payloads {
        let headers = OwnedHeaders::new().insert(Header {
            key: "event-id",
            value: Some(event_id.as_str()),
        });
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(&event.aggregate_id)
                    .payload(payload)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .expect("produced");
    }

    let mut kafka = rdkafka::ClientConfig::new();
    kafka.set(
        "bootstrap.servers",
        testkit::kafka::bootstrap_servers().await,
    );
    let config = inbox::ConsumerConfig::new(format!("payment-test-{}", Uuid::now_v7()), kafka)
        .topic(&topic)
        .dead_letter_topic(&dead_letters)
        .dead_letter_producer(testkit::kafka::producer_config().await);
    let consumer = inbox::Consumer::new(db.pool.clone(), config, Events(saga()))
        .expect("consumer")
        .spawn();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stats = consumer.stats();
        if stats.processed + stats.duplicates + stats.dead_lettered == 3 {
            assert_eq!(
                (stats.processed, stats.duplicates, stats.dead_lettered),
                (1, 1, 1)
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the consumer did not finish: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consumer.shutdown().await;
    charge(&db.pool).await;

    let rows = payments(&db.pool, order_id).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "APPROVED");
    assert_eq!(published(&db.pool, order_id).await.len(), 1);
    let dead = testkit::kafka::read_all(&dead_letters).await;
    assert_eq!(dead.len(), 1);
}
