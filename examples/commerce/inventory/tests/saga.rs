//! The saga handler against PostgreSQL, delivered through the inbox as the consumer does:
//! concurrent reservations, all or nothing, one reservation per order.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use commerce_events::{Envelope, Event};
use commerce_inventory::{SAGA_CONSUMER, Saga};
use commerce_platform::testing;
use common::*;
use inbox::Delivery;
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
async fn an_order_placed_by_a_newer_producer_with_fields_inventory_does_not_know_reserves() {
    let db = db().await;
    let saga = Saga::new(topics());
    let product = Uuid::now_v7();
    seed(&db.pool, product, 10).await;
    let order = Uuid::now_v7();
    let envelope = placed(order, vec![line(product, 3)]);
    // What a newer order service might write: a field more in the envelope, the payload and a line.
    let mut newer: serde_json::Value =
        serde_json::from_slice(&envelope.to_json()).expect("an envelope is JSON");
    newer["tenant"] = "eu".into();
    newer["payload"]["coupon"] = "SPRING".into();
    newer["payload"]["lines"][0]["gift_wrap"] = true.into();
    let message = testing::message_with(&envelope, newer.to_string().into_bytes());
    assert_eq!(
        testing::try_deliver_message(&db.pool, SAGA_CONSUMER, &saga, &message).await,
        Ok(Delivery::Fresh)
    );
    assert_eq!(level(&db.pool, product).await, (10, 3, 1));
    assert_eq!(outbox_of(&db.pool, "StockReserved").await.len(), 1);
}

#[tokio::test]
async fn what_a_reservation_publishes_joins_the_orders_chain() {
    let db = db().await;
    let saga = Saga::new(topics());
    let product = Uuid::now_v7();
    seed(&db.pool, product, 10).await;
    let envelope = placed(Uuid::now_v7(), vec![line(product, 3)]);
    apply(&db.pool, &saga, &envelope).await;
    let published = outbox(&db.pool).await;
    assert_eq!(published.len(), 2, "StockReserved and StockLevelChanged");
    for (_, caused) in published {
        assert_eq!(caused.correlation_id, envelope.correlation_id);
        assert_eq!(caused.causation_id, Some(envelope.event_id));
    }
}
