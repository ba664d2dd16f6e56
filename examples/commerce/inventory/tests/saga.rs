//! The saga handler against PostgreSQL, delivered through the inbox as the consumer does:
//! concurrent reservations, all or nothing, confirm and release, duplicates, snapshots.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use commerce_events::{Envelope, Event};
use commerce_inventory::{Saga, publish_snapshot};
use common::*;
use idempotency::inbox::Delivery;
use idempotency::{DeadLetterReason, Handler, Message};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_orders_for_one_hundred_units_reserve_exactly_one_hundred() {
    let db = db().await;
    let topics = topics();
    let saga = Arc::new(Saga::new(topics.clone()));
    let product = Uuid::now_v7();
    seed(&db.pool, product, 100).await;

    let orders: Vec<Envelope> = (0..200)
        .map(|_| placed(Uuid::now_v7(), vec![line(product, 1)]))
        .collect();
    let barrier = Arc::new(tokio::sync::Barrier::new(orders.len()));
    let tasks: Vec<_> = orders
        .iter()
        .cloned()
        .map(|envelope| {
            let (pool, saga, barrier) = (db.pool.clone(), Arc::clone(&saga), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                deliver(&pool, &saga, &envelope).await
            })
        })
        .collect();
    for result in futures::future::join_all(tasks).await {
        assert_eq!(result.expect("task").expect("applied"), Delivery::Fresh);
    }

    let reserved: Vec<Uuid> = outbox_of(&db.pool, "StockReserved")
        .await
        .into_iter()
        .map(|e| match e {
            Event::StockReserved { order_id, .. } => order_id,
            other => panic!("{other:?}"),
        })
        .collect();
    let failed = outbox_of(&db.pool, "StockReservationFailed").await;
    assert_eq!(reserved.len(), 100);
    assert_eq!(failed.len(), 100);
    for event in &failed {
        let Event::StockReservationFailed { reason, .. } = event else {
            panic!("{event:?}")
        };
        assert!(reason.contains(&product.to_string()), "{reason}");
    }
    let (total, reserved_units, version) = level(&db.pool, product).await;
    assert_eq!((total, reserved_units, version), (100, 100, 100));
    assert!(
        reserved_units >= 0 && reserved_units <= total,
        "never negative, never oversold"
    );

    // One movement and one reservation per success, for exactly the orders that got StockReserved.
    let moves = movements(&db.pool, product).await;
    assert_eq!(moves.len(), 100);
    assert!(
        moves
            .iter()
            .all(|(kind, _, dt, dr)| kind == "reserve" && *dt == 0 && *dr == 1)
    );
    let moved: HashSet<Uuid> = moves.iter().filter_map(|m| m.1).collect();
    assert_eq!(moved, reserved.iter().copied().collect::<HashSet<_>>());
    assert_eq!(count(&db.pool, "reservations").await, 100);

    // One StockLevelChanged per success, versions 1..=100, available counting down.
    let mut versions: Vec<(i64, i32)> = outbox_of(&db.pool, "StockLevelChanged")
        .await
        .into_iter()
        .map(|e| match e {
            Event::StockLevelChanged {
                version, available, ..
            } => (version, available),
            other => panic!("{other:?}"),
        })
        .collect();
    versions.sort_unstable();
    let expected: Vec<(i64, i32)> = (1..=100).map(|v| (v, 100 - v as i32)).collect();
    assert_eq!(versions, expected);

    // The database refuses an oversold or negative row whatever the code does.
    for sql in [
        "UPDATE stock SET reserved = total + 1 WHERE product_id = $1",
        "UPDATE stock SET reserved = -1 WHERE product_id = $1",
        "UPDATE stock SET total = -1, reserved = 0 WHERE product_id = $1",
    ] {
        let error = sqlx::query(sql)
            .bind(product)
            .execute(&db.pool)
            .await
            .expect_err("the CHECK constraint refuses it");
        let code = error.as_database_error().and_then(|d| d.code());
        assert_eq!(code.as_deref(), Some("23514"), "{sql}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_orders_naming_products_in_opposite_orders_do_not_deadlock() {
    let db = db().await;
    let saga = Arc::new(Saga::new(topics()));
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    seed(&db.pool, a, 1000).await;
    seed(&db.pool, b, 1000).await;
    // Half the orders list A then B, half B then A: locking in line order would deadlock.
    let orders: Vec<Envelope> = (0..100)
        .map(|i| {
            let lines = if i % 2 == 0 {
                vec![line(a, 1), line(b, 1)]
            } else {
                vec![line(b, 1), line(a, 1)]
            };
            placed(Uuid::now_v7(), lines)
        })
        .collect();
    let barrier = Arc::new(tokio::sync::Barrier::new(orders.len()));
    let tasks: Vec<_> = orders
        .into_iter()
        .map(|envelope| {
            let (pool, saga, barrier) = (db.pool.clone(), Arc::clone(&saga), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                deliver(&pool, &saga, &envelope).await
            })
        })
        .collect();
    for result in futures::future::join_all(tasks).await {
        // A deadlock would be a (retriable) error here.
        assert_eq!(result.expect("task"), Ok(Delivery::Fresh));
    }
    assert_eq!(level(&db.pool, a).await, (1000, 100, 100));
    assert_eq!(level(&db.pool, b).await, (1000, 100, 100));
    assert_eq!(outbox_of(&db.pool, "StockReserved").await.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_order_placed_events_for_one_order_reserve_once() {
    let db = db().await;
    let saga = Arc::new(Saga::new(topics()));
    let product = Uuid::now_v7();
    seed(&db.pool, product, 10).await;
    let order = Uuid::now_v7();
    // The same order published twice under two event ids, delivered at the same time; a
    // retriable failure is retried, as the consumer does.
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let (pool, saga) = (db.pool.clone(), Arc::clone(&saga));
            let envelope = placed(order, vec![line(product, 3)]);
            tokio::spawn(async move {
                loop {
                    match deliver(&pool, &saga, &envelope).await {
                        Err(e) if e.is_retriable() => continue,
                        other => return other,
                    }
                }
            })
        })
        .collect();
    for result in futures::future::join_all(tasks).await {
        assert_eq!(result.expect("task"), Ok(Delivery::Fresh));
    }
    assert_eq!(level(&db.pool, product).await, (10, 3, 1));
    assert_eq!(outbox_of(&db.pool, "StockReserved").await.len(), 1);
    assert_eq!(count(&db.pool, "movements").await, 1);
}

#[tokio::test]
async fn a_multi_line_order_with_one_short_line_reserves_nothing() {
    let db = db().await;
    let saga = Saga::new(topics());
    let (plenty, scarce, unknown) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    seed(&db.pool, plenty, 10).await;
    seed(&db.pool, scarce, 1).await;

    let short = Uuid::now_v7();
    let envelope = placed(short, vec![line(plenty, 3), line(scarce, 2)]);
    assert_eq!(
        deliver(&db.pool, &saga, &envelope).await,
        Ok(Delivery::Fresh)
    );
    let missing = Uuid::now_v7();
    let envelope = placed(missing, vec![line(plenty, 1), line(unknown, 1)]);
    assert_eq!(
        deliver(&db.pool, &saga, &envelope).await,
        Ok(Delivery::Fresh)
    );

    let events: Vec<Event> = outbox(&db.pool)
        .await
        .into_iter()
        .map(|(_, e)| e.event)
        .collect();
    let [
        Event::StockReservationFailed {
            order_id: first,
            reason: short_reason,
        },
        Event::StockReservationFailed {
            order_id: second,
            reason: missing_reason,
        },
    ] = events.as_slice()
    else {
        panic!("only two failures expected: {events:?}")
    };
    assert_eq!((*first, *second), (short, missing));
    assert!(short_reason.contains(&scarce.to_string()), "{short_reason}");
    assert!(
        missing_reason.contains(&unknown.to_string()),
        "{missing_reason}"
    );
    // Nothing else changed: figures, versions, reservations, movements.
    assert_eq!(level(&db.pool, plenty).await, (10, 0, 0));
    assert_eq!(level(&db.pool, scarce).await, (1, 0, 0));
    assert_eq!(count(&db.pool, "reservations").await, 0);
    assert_eq!(count(&db.pool, "movements").await, 0);
    assert_eq!(
        count(&db.pool, "stock").await,
        2,
        "no row created for the unknown product"
    );
}

#[tokio::test]
async fn a_multi_line_order_reserves_every_line_in_one_go() {
    let db = db().await;
    let topics = topics();
    let saga = Saga::new(topics.clone());
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    seed(&db.pool, a, 5).await;
    seed(&db.pool, b, 2).await;
    let order = Uuid::now_v7();
    // Two lines of the same product count together.
    let envelope = placed(order, vec![line(a, 2), line(b, 2), line(a, 3)]);
    apply(&db.pool, &saga, &envelope).await;

    assert_eq!(level(&db.pool, a).await, (5, 5, 1));
    assert_eq!(level(&db.pool, b).await, (2, 2, 1));
    let mut expected = vec![(a, 5, "RESERVED".to_owned()), (b, 2, "RESERVED".to_owned())];
    expected.sort();
    assert_eq!(reservations(&db.pool, order).await, expected);
    assert_eq!(
        movements(&db.pool, a).await,
        vec![("reserve".into(), Some(order), 0, 5)]
    );

    let events = outbox(&db.pool).await;
    assert_eq!(events.len(), 3);
    assert_eq!(
        events[0],
        (
            topics.inventory.clone(),
            Envelope {
                event: Event::StockReserved {
                    order_id: order,
                    total_cents: 7 * 250,
                    customer_id: "alice".into()
                },
                ..events[0].1.clone()
            }
        )
    );
    assert_eq!(events[0].1.aggregate_id, order.to_string());
    let levels: HashSet<(Uuid, i32, i32, i32, i64)> = events[1..]
        .iter()
        .map(|(topic, e)| {
            assert_eq!(topic, &topics.inventory);
            match &e.event {
                Event::StockLevelChanged {
                    product_id,
                    total,
                    reserved,
                    available,
                    version,
                } => {
                    assert_eq!(e.aggregate_id, product_id.to_string());
                    (*product_id, *total, *reserved, *available, *version)
                }
                other => panic!("{other:?}"),
            }
        })
        .collect();
    assert_eq!(levels, HashSet::from([(a, 5, 5, 0, 1), (b, 2, 2, 0, 1)]));

    // A second OrderPlaced for the same order (another event id) changes nothing.
    let again = placed(order, vec![line(a, 1)]);
    assert_eq!(deliver(&db.pool, &saga, &again).await, Ok(Delivery::Fresh));
    assert_eq!(level(&db.pool, a).await, (5, 5, 1));
    assert_eq!(count(&db.pool, "outbox_events").await, 3);
}

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

    // Nothing is RESERVED any more: a second approval (another event id), a late decline or
    // a cancellation change nothing.
    let after = count(&db.pool, "outbox_events").await;
    for late in [
        approved(order),
        declined(order),
        cancelled(order, "cancelled by customer"),
    ] {
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
        let error = saga.decode(&message).expect_err("refused");
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
