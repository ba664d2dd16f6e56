//! The saga consumer against a real PostgreSQL database: each event is delivered as the consumer
//! runner delivers it (inbox record and handler in one transaction).

use axum::http::{Method, StatusCode};
use commerce_events::{Envelope, Event, Topics};
use commerce_platform::Authenticator;
use commerce_platform::testing::{self, published, published_types};
use commerce_shipping::{AppState, CONSUMER, Saga, app};
use inbox::Delivery;
use sqlx::PgPool;
use uuid::Uuid;

fn saga() -> Saga {
    Saga::new(Topics::new("test"))
}

/// [`testing::deliver`] to the saga, as its consumer.
async fn deliver(pool: &PgPool, envelope: &Envelope) -> Delivery {
    testing::deliver(pool, CONSUMER, &saga(), envelope).await
}

/// [`testing::apply`] to the saga, as its consumer: the event must be fresh.
async fn apply(pool: &PgPool, envelope: &Envelope) {
    testing::apply(pool, CONSUMER, &saga(), envelope).await;
}

fn confirmed(order_id: Uuid) -> Envelope {
    Event::OrderConfirmed {
        order_id,
        customer_id: "alice".into(),
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
    shipment_id: Uuid,
    customer_id: String,
    state: String,
    carrier: Option<String>,
    tracking_number: Option<String>,
    reason: Option<String>,
}

async fn shipments(pool: &PgPool, order_id: Uuid) -> Vec<Row> {
    sqlx::query_as::<
        _,
        (
            Uuid,
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
        ),
    >(
        "SELECT shipment_id, customer_id, state, carrier, tracking_number, reason
         FROM shipments WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await
    .expect("shipments")
    .into_iter()
    .map(
        |(shipment_id, customer_id, state, carrier, tracking_number, reason)| Row {
            shipment_id,
            customer_id,
            state,
            carrier,
            tracking_number,
            reason,
        },
    )
    .collect()
}

async fn database() -> testkit::TestDb {
    testing::database(&commerce_shipping::MIGRATOR).await
}

/// The expected tracking number, spelled out independently of the crate.
fn tracking(order_id: Uuid) -> String {
    format!("AP{}", order_id.simple().to_string().to_uppercase())
}

/// An admin marks the order's shipment delivered through the API.
async fn deliver_by_admin(pool: &PgPool, order_id: Uuid) -> StatusCode {
    let auth = Authenticator::new(b"test-secret", "test-key");
    let token = testing::token(&auth, "ops", &["admin"]);
    let state = AppState {
        pool: pool.clone(),
        auth,
        topics: Topics::new("test"),
    };
    let uri = format!("/api/v1/shipments/{order_id}/deliver");
    testing::call(app(state), Method::POST, &uri, Some(&token))
        .await
        .status
}

#[tokio::test]
async fn a_confirmed_order_gets_one_shipment_and_one_shipment_created() {
    let db = database().await;
    let order_id = Uuid::now_v7();
    apply(&db.pool, &confirmed(order_id)).await;

    let rows = shipments(&db.pool, order_id).await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.state, "CREATED");
    assert_eq!(row.customer_id, "alice");
    assert_eq!(row.carrier.as_deref(), Some("Acme Parcel"));
    assert_eq!(row.tracking_number, Some(tracking(order_id)));
    assert_eq!(row.reason, None);
    assert_eq!(row.shipment_id.get_version_num(), 7);
    assert_eq!(
        published(&db.pool, order_id).await,
        [(
            "test.shipments".to_owned(),
            Event::ShipmentCreated {
                order_id,
                shipment_id: row.shipment_id,
                customer_id: "alice".into(),
                carrier: "Acme Parcel".into(),
                tracking_number: tracking(order_id),
            }
        )]
    );
}

#[tokio::test]
async fn redeliveries_and_second_confirmations_ship_nothing_more() {
    let db = database().await;
    let order_id = Uuid::now_v7();
    let event = confirmed(order_id);
    assert_eq!(deliver(&db.pool, &event).await, Delivery::Fresh);
    let first = shipments(&db.pool, order_id).await;

    // The same event again: the inbox skips it.
    assert_eq!(deliver(&db.pool, &event).await, Delivery::Duplicate);
    // Another event (another id) confirming the same order: the shipment row refuses it.
    assert_eq!(
        deliver(&db.pool, &confirmed(order_id)).await,
        Delivery::Fresh
    );

    assert_eq!(shipments(&db.pool, order_id).await, first);
    let events = published(&db.pool, order_id).await;
    assert!(
        matches!(events.as_slice(), [(_, Event::ShipmentCreated { .. })]),
        "{events:?}"
    );
}

#[tokio::test]
async fn concurrent_confirmations_of_one_order_ship_once() {
    let db = database().await;
    let orders: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    let mut tasks = Vec::new();
    for &order_id in &orders {
        for _ in 0..2 {
            let pool = db.pool.clone();
            tasks.push(tokio::spawn(async move {
                deliver(&pool, &confirmed(order_id)).await
            }));
        }
    }
    for task in tasks {
        assert_eq!(task.await.expect("task"), Delivery::Fresh);
    }
    for order_id in orders {
        assert_eq!(shipments(&db.pool, order_id).await.len(), 1);
        assert_eq!(published(&db.pool, order_id).await.len(), 1);
    }
}

#[tokio::test]
async fn a_cancellation_after_the_confirmation_cancels_the_shipment() {
    let db = database().await;
    let order_id = Uuid::now_v7();
    apply(&db.pool, &confirmed(order_id)).await;
    apply(&db.pool, &cancelled(order_id)).await;
    // A second cancellation event changes nothing more.
    apply(&db.pool, &cancelled(order_id)).await;

    let rows = shipments(&db.pool, order_id).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state, "CANCELLED");
    assert_eq!(rows[0].reason.as_deref(), Some("cancelled by customer"));
    // The parcel had been handed over: its carrier and tracking number stay on record.
    assert_eq!(rows[0].tracking_number, Some(tracking(order_id)));
    // Only the creation was published: the order is already cancelled.
    let events = published(&db.pool, order_id).await;
    assert!(
        matches!(events.as_slice(), [(_, Event::ShipmentCreated { .. })]),
        "{events:?}"
    );
}

#[tokio::test]
async fn an_order_cancelled_first_is_never_shipped() {
    let db = database().await;
    let order_id = Uuid::now_v7();
    apply(&db.pool, &cancelled(order_id)).await;
    apply(&db.pool, &confirmed(order_id)).await;

    let rows = shipments(&db.pool, order_id).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state, "CANCELLED");
    assert_eq!(rows[0].customer_id, "alice");
    assert_eq!(rows[0].carrier, None);
    assert_eq!(rows[0].tracking_number, None);
    assert_eq!(rows[0].reason.as_deref(), Some("cancelled by customer"));
    assert_eq!(published(&db.pool, order_id).await, []);
    // Nor can it be delivered.
    assert_eq!(
        deliver_by_admin(&db.pool, order_id).await,
        StatusCode::CONFLICT
    );
}

#[tokio::test]
async fn a_concurrent_confirmation_and_cancellation_never_leave_a_live_shipment() {
    let db = database().await;
    let orders: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
    let mut tasks = Vec::new();
    for &order_id in &orders {
        let (a, b) = (db.pool.clone(), db.pool.clone());
        tasks.push(tokio::spawn(async move {
            deliver(&a, &confirmed(order_id)).await
        }));
        tasks.push(tokio::spawn(async move {
            deliver(&b, &cancelled(order_id)).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task"), Delivery::Fresh);
    }
    for order_id in orders {
        let rows = shipments(&db.pool, order_id).await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].state, "CANCELLED");
        let events = published_types(&db.pool, order_id).await;
        match rows[0].carrier {
            // The cancellation came first: never shipped.
            None => assert_eq!(events, Vec::<&str>::new()),
            // The shipment came first: created, then cancelled.
            Some(_) => assert_eq!(events, ["ShipmentCreated"]),
        }
    }
}

#[tokio::test]
async fn a_cancellation_after_delivery_leaves_it_delivered() {
    let db = database().await;
    let order_id = Uuid::now_v7();
    apply(&db.pool, &confirmed(order_id)).await;
    assert_eq!(deliver_by_admin(&db.pool, order_id).await, StatusCode::OK);
    apply(&db.pool, &cancelled(order_id)).await;

    let rows = shipments(&db.pool, order_id).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state, "DELIVERED");
    assert_eq!(rows[0].reason, None);
    let events = published_types(&db.pool, order_id).await;
    assert_eq!(events, ["ShipmentCreated", "ShipmentDelivered"]);
}

#[tokio::test]
async fn a_concurrent_delivery_and_cancellation_see_each_other() {
    let db = database().await;
    let orders: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
    for &order_id in &orders {
        apply(&db.pool, &confirmed(order_id)).await;
    }
    let mut deliveries = Vec::new();
    let mut cancellations = Vec::new();
    for &order_id in &orders {
        let (a, b) = (db.pool.clone(), db.pool.clone());
        deliveries.push(tokio::spawn(
            async move { deliver_by_admin(&a, order_id).await },
        ));
        cancellations.push(tokio::spawn(async move {
            deliver(&b, &cancelled(order_id)).await
        }));
    }
    for (order_id, (delivery, cancellation)) in orders
        .into_iter()
        .zip(deliveries.into_iter().zip(cancellations))
    {
        let status = delivery.await.expect("task");
        assert_eq!(cancellation.await.expect("task"), Delivery::Fresh);
        let rows = shipments(&db.pool, order_id).await;
        let events = published_types(&db.pool, order_id).await;
        match status {
            // Delivered first: the cancellation left it delivered.
            StatusCode::OK => {
                assert_eq!(rows[0].state, "DELIVERED");
                assert_eq!(events, ["ShipmentCreated", "ShipmentDelivered"]);
            }
            // Cancelled first: the delivery was refused.
            StatusCode::CONFLICT => {
                assert_eq!(rows[0].state, "CANCELLED");
                assert_eq!(events, ["ShipmentCreated"]);
            }
            other => panic!("unexpected delivery status {other}"),
        }
    }
}

#[tokio::test]
async fn ignores_other_events() {
    let db = database().await;
    let order_id = Uuid::now_v7();
    for event in [
        Event::OrderPlaced {
            order_id,
            customer_id: "alice".into(),
            lines: Vec::new(),
            total_cents: 0,
        },
        Event::StockConfirmed { order_id },
        Event::PaymentApproved {
            order_id,
            payment_id: Uuid::now_v7(),
            amount_cents: 100,
        },
        Event::ShipmentDelivered {
            order_id,
            shipment_id: Uuid::now_v7(),
            customer_id: "alice".into(),
        },
    ] {
        apply(&db.pool, &event.into_envelope()).await;
    }
    assert_eq!(shipments(&db.pool, order_id).await, []);
    assert_eq!(published(&db.pool, order_id).await, []);
}
