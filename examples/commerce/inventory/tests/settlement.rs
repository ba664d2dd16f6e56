//! The saga handler settling reservations, delivered through the inbox as the consumer does:
//! confirm and release, duplicates, other event types and poison, snapshots.

mod common;

use std::sync::Arc;

use commerce_events::Event;
use commerce_inventory::{Saga, publish_snapshot};
use commerce_platform::events::decode;
use common::*;
use inbox::{DeadLetterReason, Delivery, Message};
use uuid::Uuid;

#[tokio::test]
async fn payment_approved_confirms_the_reservation_once() {
    let db = db().await;
    let saga = Saga::new(topics());
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    seed(&db.pool, a, 10).await;
    seed(&db.pool, b, 4).await;
    let order = Uuid::now_v7();
    apply(
        &db.pool,
        &saga,
        &placed(order, vec![line(a, 3), line(b, 4)]),
    )
    .await;
    let before = count(&db.pool, "outbox_events").await;

    apply(&db.pool, &saga, &approved(order)).await;
    assert_eq!(level(&db.pool, a).await, (7, 0, 2));
    assert_eq!(level(&db.pool, b).await, (0, 0, 2));
    assert!(
        reservations(&db.pool, order)
            .await
            .iter()
            .all(|(_, _, state)| state == "CONFIRMED")
    );
    assert_eq!(
        movements(&db.pool, a).await,
        vec![
            ("reserve".into(), Some(order), 0, 3),
            ("confirm".into(), Some(order), -3, -3)
        ]
    );
    let confirmed = outbox_of(&db.pool, "StockConfirmed").await;
    assert_eq!(confirmed, vec![Event::StockConfirmed { order_id: order }]);
    assert!(
        outbox_of(&db.pool, "StockLevelChanged")
            .await
            .contains(&Event::StockLevelChanged {
                product_id: a,
                total: 7,
                reserved: 0,
                available: 7,
                version: 2
            })
    );
    assert_eq!(count(&db.pool, "outbox_events").await, before + 3);

    // Nothing is RESERVED any more: a second approval (another event id) or a late decline
    // change nothing. (A cancellation now restocks the sold units: see compensation.rs.)
    let after = count(&db.pool, "outbox_events").await;
    for late in [approved(order), declined(order)] {
        assert_eq!(deliver(&db.pool, &saga, &late).await, Ok(Delivery::Fresh));
    }
    assert_eq!(level(&db.pool, a).await, (7, 0, 2));
    assert_eq!(count(&db.pool, "outbox_events").await, after);
    assert_eq!(count(&db.pool, "movements").await, 4);
}

#[tokio::test]
async fn payment_declined_and_order_cancelled_release_the_reservation() {
    let db = db().await;
    let saga = Saga::new(topics());
    let product = Uuid::now_v7();
    seed(&db.pool, product, 10).await;
    let (declined_order, cancelled_order) = (Uuid::now_v7(), Uuid::now_v7());
    for order in [declined_order, cancelled_order] {
        apply(&db.pool, &saga, &placed(order, vec![line(product, 4)])).await;
    }
    assert_eq!(level(&db.pool, product).await, (10, 8, 2));

    apply(&db.pool, &saga, &declined(declined_order)).await;
    assert_eq!(level(&db.pool, product).await, (10, 4, 3));
    apply(
        &db.pool,
        &saga,
        &cancelled(cancelled_order, "payment timeout"),
    )
    .await;
    assert_eq!(level(&db.pool, product).await, (10, 0, 4));

    let released = outbox_of(&db.pool, "StockReleased").await;
    assert_eq!(
        released,
        vec![
            Event::StockReleased {
                order_id: declined_order,
                reason: "payment declined".into()
            },
            Event::StockReleased {
                order_id: cancelled_order,
                reason: "payment timeout".into()
            },
        ]
    );
    for order in [declined_order, cancelled_order] {
        assert_eq!(
            reservations(&db.pool, order).await,
            vec![(product, 4, "RELEASED".to_owned())]
        );
    }
    let moves = movements(&db.pool, product).await;
    assert_eq!(
        moves[2..],
        [
            ("release".to_owned(), Some(declined_order), 0, -4),
            ("release".to_owned(), Some(cancelled_order), 0, -4)
        ]
    );

    // Released stays released: a late approval does not confirm, a second cancel does nothing.
    let before = count(&db.pool, "outbox_events").await;
    for late in [
        approved(declined_order),
        cancelled(cancelled_order, "again"),
    ] {
        assert_eq!(deliver(&db.pool, &saga, &late).await, Ok(Delivery::Fresh));
    }
    assert_eq!(level(&db.pool, product).await, (10, 0, 4));
    assert_eq!(count(&db.pool, "outbox_events").await, before);
    // Settling an order that was never reserved is a no-op too.
    apply(&db.pool, &saga, &approved(Uuid::now_v7())).await;
    assert_eq!(count(&db.pool, "outbox_events").await, before);
}

#[tokio::test]
async fn the_same_event_delivered_twice_has_one_effect() {
    let db = db().await;
    let saga = Arc::new(Saga::new(topics()));
    let product = Uuid::now_v7();
    seed(&db.pool, product, 10).await;
    let order = Uuid::now_v7();
    let envelope = placed(order, vec![line(product, 2)]);

    assert_eq!(
        deliver(&db.pool, &saga, &envelope).await,
        Ok(Delivery::Fresh)
    );
    assert_eq!(
        deliver(&db.pool, &saga, &envelope).await,
        Ok(Delivery::Duplicate)
    );
    assert_eq!(level(&db.pool, product).await, (10, 2, 1));
    assert_eq!(outbox_of(&db.pool, "StockReserved").await.len(), 1);

    // Two deliveries at the same time: one applies, the other waits and finds a duplicate.
    let approval = approved(order);
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let (pool, saga, approval) = (db.pool.clone(), Arc::clone(&saga), approval.clone());
            tokio::spawn(async move { deliver(&pool, &saga, &approval).await })
        })
        .collect();
    let mut outcomes: Vec<Delivery> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task").expect("applied"))
        .collect();
    outcomes.sort_by_key(|d| *d == Delivery::Duplicate);
    assert_eq!(outcomes, [Delivery::Fresh, Delivery::Duplicate]);
    assert_eq!(level(&db.pool, product).await, (8, 0, 2));
    assert_eq!(outbox_of(&db.pool, "StockConfirmed").await.len(), 1);
    assert_eq!(movements(&db.pool, product).await.len(), 2);
}

#[tokio::test]
async fn other_event_types_are_ignored_and_poison_is_refused() {
    let db = db().await;
    let saga = Saga::new(topics());
    let product = Uuid::now_v7();
    seed(&db.pool, product, 3).await;
    let order = Uuid::now_v7();
    for envelope in [
        Event::StockReserved {
            order_id: order,
            total_cents: 1,
            customer_id: "x".into(),
        }
        .into_envelope(),
        Event::PaymentRefunded {
            order_id: order,
            payment_id: order,
            customer_id: "x".into(),
            amount_cents: 1,
        }
        .into_envelope(),
        Event::StockLevelChanged {
            product_id: product,
            total: 0,
            reserved: 0,
            available: 0,
            version: 99,
        }
        .into_envelope(),
    ] {
        assert_eq!(
            deliver(&db.pool, &saga, &envelope).await,
            Ok(Delivery::Fresh)
        );
    }
    assert_eq!(level(&db.pool, product).await, (3, 0, 0));
    assert_eq!(count(&db.pool, "outbox_events").await, 0);

    let unknown = format!(
        r#"{{"event_id":"{order}","event_type":"StockStolen","aggregate_id":"x","occurred_at":"2026-01-01T00:00:00Z","payload":{{}}}}"#
    );
    for (payload, reason) in [
        (
            Some(unknown.into_bytes()),
            DeadLetterReason::UnknownEventType,
        ),
        (Some(b"not json".to_vec()), DeadLetterReason::DecodeFailed),
        (None, DeadLetterReason::DecodeFailed),
    ] {
        let message = Message::new("t", 0, 0, None, payload, vec![]);
        let error = decode(&message).expect_err("refused");
        assert_eq!(error.dead_letter_reason(), Some(reason));
    }
}

#[tokio::test]
async fn the_snapshot_publishes_one_level_per_product() {
    let db = db().await;
    let topics = topics();
    let saga = Saga::new(topics.clone());
    let products: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    for (i, &product) in products.iter().enumerate() {
        seed(&db.pool, product, 10 * (i as i32 + 1)).await;
    }
    apply(
        &db.pool,
        &saga,
        &placed(Uuid::now_v7(), vec![line(products[1], 5)]),
    )
    .await;
    sqlx::query("DELETE FROM outbox_events")
        .execute(&db.pool)
        .await
        .expect("clear the outbox");

    assert_eq!(
        publish_snapshot(&db.pool, &topics).await.expect("snapshot"),
        3
    );
    let events = outbox(&db.pool).await;
    assert_eq!(events.len(), 3);
    let mut levels = Vec::new();
    for (topic, envelope) in events {
        assert_eq!(topic, topics.inventory);
        let Event::StockLevelChanged {
            product_id,
            total,
            reserved,
            available,
            version,
        } = envelope.event
        else {
            panic!("{envelope:?}")
        };
        assert_eq!(envelope.aggregate_id, product_id.to_string());
        levels.push((product_id, total, reserved, available, version));
    }
    levels.sort();
    let mut expected = vec![
        (products[0], 10, 0, 10, 0),
        (products[1], 20, 5, 15, 1),
        (products[2], 30, 0, 30, 0),
    ];
    expected.sort();
    assert_eq!(levels, expected);
    // A snapshot changes no figure and no version.
    assert_eq!(level(&db.pool, products[1]).await, (20, 5, 1));

    // An empty inventory publishes nothing.
    let empty = common::db().await;
    assert_eq!(
        publish_snapshot(&empty.pool, &topics)
            .await
            .expect("snapshot"),
        0
    );
    assert_eq!(count(&empty.pool, "outbox_events").await, 0);
}
