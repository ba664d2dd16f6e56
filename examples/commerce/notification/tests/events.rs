//! The consumer against a real PostgreSQL database: each event is delivered as the consumer
//! runner delivers it (inbox record and handler in one transaction), plus deliveries that get
//! past the inbox.

use chrono::{DateTime, Utc};
use commerce_events::{Envelope, Event, Line};
use commerce_notification::{CONSUMER, Notifier};
use commerce_platform::events::EventHandler;
use commerce_platform::testing;
use inbox::Delivery;
use sqlx::PgPool;
use uuid::Uuid;

/// [`testing::deliver`] to the notifier, as consumer `consumer`.
async fn deliver_as(pool: &PgPool, consumer: &str, envelope: &Envelope) -> Delivery {
    testing::deliver(pool, consumer, &Notifier, envelope).await
}

/// [`testing::apply`] to the notifier, as the service's consumer: the event must be fresh.
async fn apply(pool: &PgPool, envelope: &Envelope) {
    testing::apply(pool, CONSUMER, &Notifier, envelope).await;
}

/// The handler alone, in its own transaction, with no inbox record at all.
async fn handle_without_inbox(pool: &PgPool, envelope: &Envelope) {
    let mut tx = pool.begin().await.expect("begin");
    Notifier
        .handle(&mut tx, envelope.clone())
        .await
        .expect("handled");
    tx.commit().await.expect("commit");
}

#[derive(Debug, PartialEq, Eq)]
struct Row {
    event_id: Uuid,
    customer_id: String,
    order_id: Uuid,
    kind: String,
    message: String,
    occurred_at: DateTime<Utc>,
}

async fn notifications(pool: &PgPool) -> Vec<Row> {
    sqlx::query_as::<_, (Uuid, String, Uuid, String, String, DateTime<Utc>)>(
        "SELECT event_id, customer_id, order_id, kind, message, occurred_at
         FROM notifications ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .expect("notifications")
    .into_iter()
    .map(
        |(event_id, customer_id, order_id, kind, message, occurred_at)| Row {
            event_id,
            customer_id,
            order_id,
            kind,
            message,
            occurred_at,
        },
    )
    .collect()
}

async fn database() -> testkit::TestDb {
    testing::database(&commerce_notification::MIGRATOR).await
}

fn placed(order_id: Uuid, customer_id: &str) -> Envelope {
    Event::OrderPlaced {
        order_id,
        customer_id: customer_id.into(),
        lines: vec![
            Line {
                product_id: Uuid::now_v7(),
                quantity: 2,
                unit_price_cents: 500,
            },
            Line {
                product_id: Uuid::now_v7(),
                quantity: 1,
                unit_price_cents: 234,
            },
        ],
        total_cents: 1234,
    }
    .into_envelope()
}

/// PostgreSQL keeps microseconds.
fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

#[tokio::test]
async fn every_customer_visible_event_makes_one_notification() {
    let db = database().await;
    let order_id = Uuid::now_v7();
    let shipment_id = Uuid::now_v7();
    let cases = [
        (
            placed(order_id, "alice"),
            "order_placed",
            format!("Order {order_id} placed: 3 items, 12.34"),
        ),
        (
            Event::OrderConfirmed {
                order_id,
                customer_id: "alice".into(),
            }
            .into_envelope(),
            "order_confirmed",
            format!("Order {order_id} confirmed"),
        ),
        (
            Event::ShipmentCreated {
                order_id,
                shipment_id,
                customer_id: "alice".into(),
                carrier: "ACME Post".into(),
                tracking_number: "TRK-0001".into(),
            }
            .into_envelope(),
            "order_shipped",
            format!("Order {order_id} shipped with ACME Post, tracking number TRK-0001"),
        ),
        (
            Event::ShipmentDelivered {
                order_id,
                shipment_id,
                customer_id: "alice".into(),
            }
            .into_envelope(),
            "order_delivered",
            format!("Order {order_id} delivered"),
        ),
        (
            Event::OrderCancelled {
                order_id,
                customer_id: "alice".into(),
                reason: "cancelled by customer".into(),
            }
            .into_envelope(),
            "order_cancelled",
            format!("Order {order_id} cancelled: cancelled by customer"),
        ),
        (
            Event::PaymentRefunded {
                order_id,
                payment_id: Uuid::now_v7(),
                customer_id: "alice".into(),
                amount_cents: 1234,
            }
            .into_envelope(),
            "payment_refunded",
            format!("Payment for order {order_id} refunded: 12.34"),
        ),
    ];
    for (i, (envelope, kind, message)) in cases.iter().enumerate() {
        apply(&db.pool, envelope).await;
        let rows = notifications(&db.pool).await;
        assert_eq!(rows.len(), i + 1, "{kind}: one more row");
        let row = &rows[i];
        assert_eq!(row.event_id, envelope.event_id);
        assert_eq!(row.customer_id, "alice");
        assert_eq!(row.order_id, order_id);
        assert_eq!(row.kind, *kind);
        assert_eq!(row.message, *message);
        assert_eq!(micros(row.occurred_at), micros(envelope.occurred_at));
    }
}

#[tokio::test]
async fn the_same_event_delivered_twice_makes_one_notification() {
    let db = database().await;
    let event = placed(Uuid::now_v7(), "alice");
    assert_eq!(
        deliver_as(&db.pool, CONSUMER, &event).await,
        Delivery::Fresh
    );
    assert_eq!(
        deliver_as(&db.pool, CONSUMER, &event).await,
        Delivery::Duplicate
    );
    let rows = notifications(&db.pool).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].event_id, event.event_id);
}

#[tokio::test]
async fn the_unique_event_id_stops_a_second_notification_past_the_inbox() {
    let db = database().await;
    let order_id = Uuid::now_v7();
    let event = Event::OrderCancelled {
        order_id,
        customer_id: "alice".into(),
        reason: "payment timeout".into(),
    }
    .into_envelope();

    // No inbox at all: the handler twice, in two transactions.
    handle_without_inbox(&db.pool, &event).await;
    handle_without_inbox(&db.pool, &event).await;
    assert_eq!(notifications(&db.pool).await.len(), 1);

    // Two consumer names: both inbox records are fresh, still one notification.
    assert_eq!(
        deliver_as(&db.pool, CONSUMER, &event).await,
        Delivery::Fresh
    );
    assert_eq!(
        deliver_as(&db.pool, "notification.other", &event).await,
        Delivery::Fresh
    );
    let rows = notifications(&db.pool).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].event_id, event.event_id);
    assert_eq!(rows[0].kind, "order_cancelled");
}

#[tokio::test]
async fn other_events_make_no_notification() {
    let db = database().await;
    let order_id = Uuid::now_v7();
    let ignored = [
        Event::StockReserved {
            order_id,
            total_cents: 1234,
            customer_id: "alice".into(),
        },
        Event::StockReservationFailed {
            order_id,
            reason: "out of stock".into(),
        },
        Event::StockConfirmed { order_id },
        Event::StockReleased {
            order_id,
            reason: "payment declined".into(),
        },
        Event::StockRestocked {
            order_id,
            reason: "order cancelled".into(),
        },
        Event::StockLevelChanged {
            product_id: Uuid::now_v7(),
            total: 10,
            reserved: 2,
            available: 8,
            version: 3,
        },
        Event::PaymentApproved {
            order_id,
            payment_id: Uuid::now_v7(),
            amount_cents: 1234,
        },
        Event::PaymentDeclined {
            order_id,
            reason: "card declined".into(),
        },
    ];
    for event in ignored {
        apply(&db.pool, &event.into_envelope()).await;
    }
    assert_eq!(notifications(&db.pool).await, []);
}
