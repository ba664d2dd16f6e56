//! The saga's order side: `OrderSaga` through the inbox, and through a real
//! `inbox::Consumer` on a test topic of the broker.

mod common;

use std::time::Duration;

use commerce_events::{Envelope, Event};
use commerce_order::OrderSaga;
use commerce_order::domain::OrderState;
use commerce_platform::events::{Events, decode};
use commerce_platform::testing;
use common::{Harness, count, eventually, insert_order};
use inbox::{Consumer, ConsumerConfig, DeadLetterReason, Delivery, Message};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use uuid::Uuid;

/// [`testing::deliver`] to `saga`, as the service's saga consumer.
async fn deliver(pool: &PgPool, saga: &OrderSaga, envelope: &Envelope) -> Delivery {
    testing::deliver(pool, "order.saga", saga, envelope).await
}

async fn state(pool: &PgPool, id: Uuid) -> (String, Option<String>, bool) {
    sqlx::query_as("SELECT state, reason, reserved_at IS NOT NULL FROM orders WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("order")
}

#[tokio::test]
async fn follows_the_happy_path_to_completed_and_announces_the_confirmation_and_completion() {
    let h = Harness::new().await;
    let saga = OrderSaga::new(h.config.topics.clone());
    let id = h.place_one("alice").await;
    let events = [
        Event::StockReserved {
            order_id: id,
            total_cents: 500,
            customer_id: "alice".into(),
        },
        Event::PaymentApproved {
            order_id: id,
            payment_id: Uuid::now_v7(),
            amount_cents: 500,
        },
        Event::StockConfirmed { order_id: id },
        Event::ShipmentCreated {
            order_id: id,
            shipment_id: Uuid::now_v7(),
            customer_id: "alice".into(),
            carrier: "Acme Parcel".into(),
            tracking_number: "AP1".into(),
        },
        Event::ShipmentDelivered {
            order_id: id,
            shipment_id: Uuid::now_v7(),
            customer_id: "alice".into(),
        },
    ];
    let mut seen = Vec::new();
    for event in events {
        assert_eq!(
            deliver(h.pool(), &saga, &event.into_envelope()).await,
            Delivery::Fresh
        );
        seen.push(state(h.pool(), id).await);
    }
    assert_eq!(
        seen,
        [
            ("RESERVED".into(), None, true),
            ("PAID".into(), None, true),
            ("CONFIRMED".into(), None, true),
            ("SHIPPED".into(), None, true),
            ("COMPLETED".into(), None, true),
        ]
    );
    // OrderPlaced, OrderConfirmed (for shipping) and OrderCompleted are in the outbox; the other
    // moves publish nothing.
    let types: Vec<String> =
        sqlx::query_scalar("SELECT event_type FROM outbox_events ORDER BY seq")
            .fetch_all(h.pool())
            .await
            .expect("outbox");
    assert_eq!(types, ["OrderPlaced", "OrderConfirmed", "OrderCompleted"]);
}

#[tokio::test]
async fn failures_and_declines_record_reasons_and_late_events_change_nothing() {
    let h = Harness::new().await;
    let saga = OrderSaga::new(h.config.topics.clone());

    let failed = h.place_one("alice").await;
    let delivery = deliver(
        h.pool(),
        &saga,
        &Event::StockReservationFailed {
            order_id: failed,
            reason: "not enough stock for product x".into(),
        }
        .into_envelope(),
    )
    .await;
    assert_eq!(delivery, Delivery::Fresh);
    assert_eq!(
        state(h.pool(), failed).await,
        (
            "FAILED".into(),
            Some("not enough stock for product x".into()),
            false
        )
    );

    let declined = h.place_one("decline-carol").await;
    for event in [
        Event::StockReserved {
            order_id: declined,
            total_cents: 500,
            customer_id: "decline-carol".into(),
        },
        Event::PaymentDeclined {
            order_id: declined,
            reason: "card declined".into(),
        },
        Event::StockReleased {
            order_id: declined,
            reason: "payment declined".into(),
        },
        // Late and out-of-place events: ignored.
        Event::PaymentApproved {
            order_id: declined,
            payment_id: Uuid::now_v7(),
            amount_cents: 500,
        },
        Event::StockConfirmed { order_id: declined },
    ] {
        assert_eq!(
            deliver(h.pool(), &saga, &event.into_envelope()).await,
            Delivery::Fresh
        );
    }
    assert_eq!(
        state(h.pool(), declined).await,
        (
            "CANCELLED".into(),
            Some("payment declined: card declined".into()),
            true
        )
    );
    // Two OrderPlaced, and the declined order's OrderCancelled (so the customer is told why;
    // inventory and payment find nothing left to do). A failed reservation is not a cancellation.
    let types: Vec<String> =
        sqlx::query_scalar("SELECT event_type FROM outbox_events ORDER BY seq")
            .fetch_all(h.pool())
            .await
            .expect("outbox");
    assert_eq!(types, ["OrderPlaced", "OrderPlaced", "OrderCancelled"]);

    // Events the order service does not act on, and events for orders it does not have.
    for event in [
        Event::PaymentRefunded {
            order_id: declined,
            payment_id: Uuid::now_v7(),
            customer_id: "x".into(),
            amount_cents: 1,
        },
        Event::StockLevelChanged {
            product_id: Uuid::now_v7(),
            total: 1,
            reserved: 0,
            available: 1,
            version: 1,
        },
        Event::StockReserved {
            order_id: Uuid::now_v7(),
            total_cents: 1,
            customer_id: "nobody".into(),
        },
    ] {
        assert_eq!(
            deliver(h.pool(), &saga, &event.into_envelope()).await,
            Delivery::Fresh
        );
    }
    assert_eq!(
        state(h.pool(), declined).await.0,
        "CANCELLED",
        "refund changes nothing"
    );
}

#[tokio::test]
async fn a_redelivered_event_has_one_effect() {
    let h = Harness::new().await;
    let saga = OrderSaga::new(h.config.topics.clone());
    let id = insert_order(h.pool(), "alice", OrderState::Pending, Duration::ZERO).await;
    let reserved = Event::StockReserved {
        order_id: id,
        total_cents: 500,
        customer_id: "alice".into(),
    }
    .into_envelope();
    assert_eq!(deliver(h.pool(), &saga, &reserved).await, Delivery::Fresh);
    let first: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT reserved_at FROM orders WHERE id = $1")
            .bind(id)
            .fetch_one(h.pool())
            .await
            .expect("reserved_at");
    assert_eq!(
        deliver(h.pool(), &saga, &reserved).await,
        Delivery::Duplicate
    );
    let second: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT reserved_at FROM orders WHERE id = $1")
            .bind(id)
            .fetch_one(h.pool())
            .await
            .expect("reserved_at");
    assert_eq!(first, second, "the reservation clock did not restart");
}

#[test]
fn refuses_unknown_types_incomplete_payloads_and_garbage() {
    let id = Uuid::now_v7();
    let unknown = format!(
        r#"{{"event_id":"{id}","event_type":"OrderShipped","aggregate_id":"x","occurred_at":"2026-01-01T00:00:00Z","payload":{{}}}}"#
    );
    let decode = |payload: Option<Vec<u8>>| {
        decode(&Message::new("t", 0, 0, None, payload, vec![]))
            .expect_err("refused")
            .dead_letter_reason()
    };
    assert_eq!(
        decode(Some(unknown.into_bytes())),
        Some(DeadLetterReason::UnknownEventType)
    );
    assert_eq!(
        decode(Some(b"not json".to_vec())),
        Some(DeadLetterReason::DecodeFailed)
    );
    assert_eq!(decode(None), Some(DeadLetterReason::DecodeFailed));
    // A payload without a field its type needs (fields it does not know are read past).
    let missing = format!(
        r#"{{"event_id":"{id}","event_type":"StockConfirmed","aggregate_id":"x","occurred_at":"2026-01-01T00:00:00Z","payload":{{"admin":true}}}}"#
    );
    assert_eq!(
        decode(Some(missing.into_bytes())),
        Some(DeadLetterReason::DecodeFailed)
    );
}

async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    event_id: &str,
) {
    let headers = OwnedHeaders::new().insert(Header {
        key: "event-id",
        value: Some(event_id),
    });
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produced");
}

#[tokio::test]
async fn through_a_consumer_a_duplicate_is_skipped_and_poison_dead_lettered() {
    let h = Harness::new().await;
    let topic = testkit::kafka::topic(1).await;
    let dead_letters = testkit::kafka::topic(1).await;
    let id = insert_order(h.pool(), "alice", OrderState::Reserved, Duration::ZERO).await;
    let declined = Event::PaymentDeclined {
        order_id: id,
        reason: "card declined".into(),
    }
    .into_envelope();

    let producer: FutureProducer = testkit::kafka::producer_config()
        .await
        .create()
        .expect("producer");
    let event_id = declined.event_id.to_string();
    produce(
        &producer,
        &topic,
        &declined.aggregate_id,
        &declined.to_json(),
        &event_id,
    )
    .await;
    produce(
        &producer,
        &topic,
        &declined.aggregate_id,
        &declined.to_json(),
        &event_id,
    )
    .await;
    produce(
        &producer,
        &topic,
        &declined.aggregate_id,
        b"{\"garbage\": true}",
        &Uuid::now_v7().to_string(),
    )
    .await;

    let mut kafka = rdkafka::ClientConfig::new();
    kafka.set(
        "bootstrap.servers",
        testkit::kafka::bootstrap_servers().await,
    );
    let config = ConsumerConfig::new(format!("order.saga-{}", Uuid::now_v7()), kafka)
        .topic(&topic)
        .dead_letter_topic(&dead_letters)
        .dead_letter_producer(testkit::kafka::producer_config().await)
        .backoff(
            leases::retry::Backoff::new(
                Duration::from_millis(50),
                Duration::from_millis(500),
                u32::MAX,
            )
            .expect("backoff"),
        );
    let consumer = Consumer::new(
        h.pool().clone(),
        config,
        Events(OrderSaga::new(h.config.topics.clone())),
    )
    .expect("consumer")
    .spawn();
    eventually(Duration::from_secs(60), "three messages handled", || {
        let stats = consumer.stats();
        async move { stats.processed + stats.duplicates + stats.dead_lettered >= 3 }
    })
    .await;
    let stats = consumer.shutdown().await;
    assert_eq!(
        (stats.processed, stats.duplicates, stats.dead_lettered),
        (1, 1, 1)
    );

    assert_eq!(
        state(h.pool(), id).await,
        (
            "CANCELLED".into(),
            Some("payment declined: card declined".into()),
            true
        )
    );
    assert_eq!(count(h.pool(), "inbox").await, 1);
    let dead = testkit::kafka::read_all(&dead_letters).await;
    assert_eq!(dead.len(), 1);
}
