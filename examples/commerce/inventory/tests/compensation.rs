//! A cancelled order gives every unit back, in whatever order the events arrive: reserved units
//! are released, sold units restocked, and a late approval sells nothing. Each sequence is
//! delivered through the inbox as the consumer does, on a fresh database.

mod common;

use commerce_events::{Envelope, Event};
use commerce_inventory::Saga;
use common::*;
use testkit::TestDb;
use uuid::Uuid;

/// One order of 3 units of a product with 10, then `events` (built from the order id).
async fn run(events: impl Fn(Uuid) -> Vec<Envelope>) -> (TestDb, Uuid, Uuid) {
    let db = db().await;
    let saga = Saga::new(topics());
    let product = Uuid::now_v7();
    seed(&db.pool, product, 10).await;
    let order = Uuid::now_v7();
    apply(&db.pool, &saga, &placed(order, vec![line(product, 3)])).await;
    for event in events(order) {
        apply(&db.pool, &saga, &event).await;
    }
    (db, product, order)
}

fn states(reservations: &[(Uuid, i32, String)]) -> Vec<&str> {
    reservations.iter().map(|(_, _, s)| s.as_str()).collect()
}

#[tokio::test]
async fn approval_then_cancellation_restocks_the_sold_units() {
    let (db, product, order) =
        run(|order| vec![approved(order), cancelled(order, "cancelled by customer")]).await;
    // Back to the figures before the order: total 10, nothing reserved.
    let (total, reserved, _) = level(&db.pool, product).await;
    assert_eq!((total, reserved), (10, 0));
    assert_eq!(states(&reservations(&db.pool, order).await), ["RESTOCKED"]);
    assert_eq!(
        movements(&db.pool, product).await,
        vec![
            ("reserve".into(), Some(order), 0, 3),
            ("confirm".into(), Some(order), -3, -3),
            ("restock".into(), Some(order), 3, 0),
        ]
    );
    assert_eq!(
        outbox_of(&db.pool, "StockRestocked").await,
        vec![Event::StockRestocked {
            order_id: order,
            reason: "cancelled by customer".into()
        }]
    );
    assert!(outbox_of(&db.pool, "StockReleased").await.is_empty());
}

#[tokio::test]
async fn cancellation_then_late_approval_releases_and_never_sells() {
    let (db, product, order) =
        run(|order| vec![cancelled(order, "payment timeout"), approved(order)]).await;
    let (total, reserved, _) = level(&db.pool, product).await;
    assert_eq!((total, reserved), (10, 0));
    assert_eq!(states(&reservations(&db.pool, order).await), ["RELEASED"]);
    assert_eq!(
        movements(&db.pool, product).await,
        vec![
            ("reserve".into(), Some(order), 0, 3),
            ("release".into(), Some(order), 0, -3),
        ]
    );
    assert!(outbox_of(&db.pool, "StockConfirmed").await.is_empty());
}

#[tokio::test]
async fn repeated_and_reordered_settlements_change_nothing_more() {
    // Two cancellations (different event ids), a second approval, a decline after the sale.
    let (db, product, order) = run(|order| {
        vec![
            approved(order),
            approved(order),
            cancelled(order, "cancelled by customer"),
            cancelled(order, "cancelled by customer"),
            declined(order),
            approved(order),
        ]
    })
    .await;
    let (total, reserved, _) = level(&db.pool, product).await;
    assert_eq!((total, reserved), (10, 0));
    assert_eq!(states(&reservations(&db.pool, order).await), ["RESTOCKED"]);
    let kinds: Vec<String> = movements(&db.pool, product)
        .await
        .into_iter()
        .map(|(kind, ..)| kind)
        .collect();
    assert_eq!(kinds, ["reserve", "confirm", "restock"]);
    assert_eq!(outbox_of(&db.pool, "StockRestocked").await.len(), 1);
}

#[tokio::test]
async fn a_cancellation_of_a_never_reserved_order_changes_nothing() {
    let db = db().await;
    let saga = Saga::new(topics());
    let product = Uuid::now_v7();
    seed(&db.pool, product, 2).await;
    let order = Uuid::now_v7();
    // Short of stock: StockReservationFailed, nothing held; then the order is cancelled.
    apply(&db.pool, &saga, &placed(order, vec![line(product, 5)])).await;
    apply(&db.pool, &saga, &cancelled(order, "cancelled by customer")).await;
    let (total, reserved, _) = level(&db.pool, product).await;
    assert_eq!((total, reserved), (2, 0));
    assert!(reservations(&db.pool, order).await.is_empty());
    assert!(outbox_of(&db.pool, "StockReleased").await.is_empty());
    assert!(outbox_of(&db.pool, "StockRestocked").await.is_empty());
}
