//! A batch applied at once (set-based, as the consumer runner applies a partition's batch) ends
//! where the same events applied one by one end.

mod common;

use commerce_events::{Envelope, Event};
use commerce_inventory::{SAGA_CONSUMER, Saga};
use commerce_platform::testing;
use common::*;
use sqlx::PgPool;
use uuid::Uuid;

/// `(kind, order_id, delta_total, delta_reserved)`, as [`movements`] reads them.
type Movements = Vec<(String, Option<Uuid>, i32, i32)>;

/// Every figure the saga writes, for one set of products and orders.
#[derive(Debug, PartialEq, Eq)]
struct Books {
    levels: Vec<(i32, i32, i64)>,
    movements: Vec<Movements>,
    reservations: Vec<Vec<(Uuid, i32, String)>>,
    /// The saga's answers, in order (stock levels apart).
    answers: Vec<Event>,
}

async fn books(pool: &PgPool, products: &[Uuid], orders: &[Uuid]) -> Books {
    let mut books = Books {
        levels: Vec::new(),
        movements: Vec::new(),
        reservations: Vec::new(),
        answers: outbox(pool)
            .await
            .into_iter()
            .map(|(_, envelope)| envelope.event)
            .filter(|event| !matches!(event, Event::StockLevelChanged { .. }))
            .collect(),
    };
    for &product in products {
        books.levels.push(level(pool, product).await);
        books.movements.push(movements(pool, product).await);
    }
    for &order in orders {
        books.reservations.push(reservations(pool, order).await);
    }
    books
}

/// The newest `StockLevelChanged` of `product` in the outbox: `(total, reserved, version)`.
async fn last_level(pool: &PgPool, product: Uuid) -> Option<(i32, i32, i64)> {
    outbox_of(pool, "StockLevelChanged")
        .await
        .into_iter()
        .filter_map(|event| match event {
            Event::StockLevelChanged {
                product_id,
                total,
                reserved,
                version,
                ..
            } if product_id == product => Some((total, reserved, version)),
            _ => None,
        })
        .next_back()
}

#[tokio::test]
async fn a_batch_ends_where_the_same_events_one_by_one_end() {
    let (one_by_one, batched) = (db().await, db().await);
    let saga = Saga::new(topics());
    let (p, q, new) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let [a, b, c, d] = [(); 4].map(|()| Uuid::now_v7());
    for pool in [&one_by_one.pool, &batched.pool] {
        seed(pool, p, 10).await;
        seed(pool, q, 1).await;
    }
    let events: Vec<Envelope> = vec![
        placed(a, vec![line(p, 2), line(q, 1)]),
        // Q is short now: refused, nothing reserved.
        placed(b, vec![line(q, 1)]),
        approved(a),
        placed(c, vec![line(p, 3)]),
        cancelled(c, "changed my mind"),
        // A was sold: its units go back.
        cancelled(a, "too late"),
        // A second OrderPlaced of one order (another event id) does nothing.
        placed(a, vec![line(p, 1)]),
        Event::ProductChanged {
            product_id: new,
            sku: "NEW-1".into(),
            name: "new".into(),
            price_cents: 100,
            active: true,
            version: 1,
        }
        .into_envelope(),
        // Nothing reserved for D: nothing to release.
        declined(d),
    ];
    for event in &events {
        apply(&one_by_one.pool, &saga, event).await;
    }
    let applied = testing::try_deliver_batch(&batched.pool, SAGA_CONSUMER, &saga, &events)
        .await
        .expect("the batch applies");
    assert_eq!(applied, events.len());

    let (products, orders) = ([p, q, new], [a, b, c, d]);
    let expected = books(&one_by_one.pool, &products, &orders).await;
    assert_eq!(books(&batched.pool, &products, &orders).await, expected);
    assert_eq!(expected.levels, [(10, 0, 5), (1, 0, 3), (0, 0, 0)]);
    assert_eq!(expected.answers.len(), 6, "{:?}", expected.answers);
    // One level per product the batch changed, at its figures and version after the batch.
    for product in [p, q] {
        assert_eq!(
            last_level(&batched.pool, product).await,
            last_level(&one_by_one.pool, product).await
        );
    }
    assert_eq!(count(&batched.pool, "outbox_events").await, 6 + 2);

    // The batch again: every event is a duplicate, nothing is applied twice.
    let again = testing::try_deliver_batch(&batched.pool, SAGA_CONSUMER, &saga, &events)
        .await
        .expect("duplicates");
    assert_eq!(again, 0);
    assert_eq!(books(&batched.pool, &products, &orders).await, expected);
}
