//! Helpers shared by the inventory tests.

#![allow(dead_code)]

use commerce_events::{Envelope, Event, Line, Topics};
use commerce_inventory::{AppState, SAGA_CONSUMER, Saga};
use commerce_platform::Authenticator;
use commerce_platform::testing;
use inbox::{Delivery, HandlerError};
use sqlx::PgPool;
use testkit::TestDb;
use uuid::Uuid;

/// A fresh database with every migration the service runs.
pub(crate) async fn db() -> TestDb {
    testing::database(&commerce_inventory::MIGRATOR).await
}

/// The authenticator of the tests' API calls.
pub(crate) fn auth() -> Authenticator {
    Authenticator::new(b"inventory-test-secret", "service-key")
}

/// The API's state on `pool`, with [`auth`] and [`topics`].
pub(crate) fn state(pool: &PgPool) -> AppState {
    AppState {
        pool: pool.clone(),
        auth: auth(),
        topics: topics(),
    }
}

/// Topic names unique to one test (only created on the broker where a test needs them).
pub(crate) fn topics() -> Topics {
    Topics::new(&format!("test-{}", Uuid::new_v4().simple()))
}

/// Delivers `envelope` to `saga` as `inbox::Consumer` does ([`testing::try_deliver`]):
/// decode, then one transaction with the inbox record and the handler's effects.
pub(crate) async fn deliver(
    pool: &PgPool,
    saga: &Saga,
    envelope: &Envelope,
) -> Result<Delivery, HandlerError> {
    testing::try_deliver(pool, SAGA_CONSUMER, saga, envelope).await
}

/// [`deliver`]s a fresh event and asserts it applied.
pub(crate) async fn apply(pool: &PgPool, saga: &Saga, envelope: &Envelope) {
    assert_eq!(deliver(pool, saga, envelope).await, Ok(Delivery::Fresh));
}

/// One line of `quantity` units of `product_id` at 250 cents.
pub(crate) fn line(product_id: Uuid, quantity: i32) -> Line {
    Line {
        product_id,
        quantity,
        unit_price_cents: 250,
    }
}

/// An `OrderPlaced` envelope for `lines`, by `alice`.
pub(crate) fn placed(order_id: Uuid, lines: Vec<Line>) -> Envelope {
    let total_cents = lines
        .iter()
        .map(|l| i64::from(l.quantity) * l.unit_price_cents)
        .sum();
    Event::OrderPlaced {
        order_id,
        customer_id: "alice".into(),
        lines,
        total_cents,
    }
    .into_envelope()
}

/// A `PaymentApproved` envelope.
pub(crate) fn approved(order_id: Uuid) -> Envelope {
    Event::PaymentApproved {
        order_id,
        payment_id: Uuid::now_v7(),
        amount_cents: 1,
    }
    .into_envelope()
}

/// A `PaymentDeclined` envelope.
pub(crate) fn declined(order_id: Uuid) -> Envelope {
    Event::PaymentDeclined {
        order_id,
        reason: "card declined".into(),
    }
    .into_envelope()
}

/// An `OrderCancelled` envelope.
pub(crate) fn cancelled(order_id: Uuid, reason: &str) -> Envelope {
    Event::OrderCancelled {
        order_id,
        customer_id: "alice".into(),
        reason: reason.into(),
    }
    .into_envelope()
}

/// Creates a stock row with `total` units (version 0, nothing reserved).
pub(crate) async fn seed(pool: &PgPool, product_id: Uuid, total: i32) {
    sqlx::query("INSERT INTO stock (product_id, total) VALUES ($1, $2)")
        .bind(product_id)
        .bind(total)
        .execute(pool)
        .await
        .expect("seed stock");
}

/// `(total, reserved, version)` of a product.
pub(crate) async fn level(pool: &PgPool, product_id: Uuid) -> (i32, i32, i64) {
    sqlx::query_as("SELECT total, reserved, version FROM stock WHERE product_id = $1")
        .bind(product_id)
        .fetch_one(pool)
        .await
        .expect("stock row")
}

/// The outbox's events, decoded, in enqueue order, with their topic.
pub(crate) async fn outbox(pool: &PgPool) -> Vec<(String, Envelope)> {
    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT topic, payload FROM outbox_events ORDER BY seq")
            .fetch_all(pool)
            .await
            .expect("outbox rows");
    rows.into_iter()
        .map(|(topic, payload)| {
            (
                topic,
                commerce_events::decode(&payload).expect("outbox payload decodes"),
            )
        })
        .collect()
}

/// The outbox's events of `event_type`.
pub(crate) async fn outbox_of(pool: &PgPool, event_type: &str) -> Vec<Event> {
    outbox(pool)
        .await
        .into_iter()
        .map(|(_, envelope)| envelope.event)
        .filter(|event| event.event_type() == event_type)
        .collect()
}

/// `(kind, order_id, delta_total, delta_reserved)` of a product's movements, oldest first.
pub(crate) async fn movements(
    pool: &PgPool,
    product_id: Uuid,
) -> Vec<(String, Option<Uuid>, i32, i32)> {
    sqlx::query_as(
        "SELECT kind, order_id, delta_total, delta_reserved FROM movements
         WHERE product_id = $1 ORDER BY id",
    )
    .bind(product_id)
    .fetch_all(pool)
    .await
    .expect("movements")
}

/// `(product_id, quantity, state)` of an order's reservations, by product.
pub(crate) async fn reservations(pool: &PgPool, order_id: Uuid) -> Vec<(Uuid, i32, String)> {
    sqlx::query_as(
        "SELECT product_id, quantity, state FROM reservations WHERE order_id = $1
         ORDER BY product_id",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await
    .expect("reservations")
}

/// How many rows `table` has (a fixed table name from the tests).
pub(crate) async fn count(pool: &PgPool, table: &'static str) -> i64 {
    let sql = match table {
        "stock" => "SELECT count(*) FROM stock",
        "reservations" => "SELECT count(*) FROM reservations",
        "movements" => "SELECT count(*) FROM movements",
        "outbox_events" => "SELECT count(*) FROM outbox_events",
        other => panic!("no count for {other}"),
    };
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}
