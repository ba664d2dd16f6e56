use super::*;

fn level(total: i32, reserved: i32) -> Level {
    Level { total, reserved }
}

fn line(product_id: Uuid, quantity: i32) -> Line {
    Line {
        product_id,
        quantity,
        unit_price_cents: 100,
    }
}

#[test]
fn reserve_takes_only_what_is_available() {
    assert_eq!(reserve(level(10, 3), 7), Ok(level(10, 10)));
    assert_eq!(
        reserve(level(10, 3), 8),
        Err(StockError::Insufficient {
            requested: 8,
            available: 7
        })
    );
    assert_eq!(
        reserve(level(10, 0), 0),
        Err(StockError::InvalidQuantity(0))
    );
    assert_eq!(
        reserve(level(10, 0), -1),
        Err(StockError::InvalidQuantity(-1))
    );
}

#[test]
fn confirm_sells_and_release_gives_back() {
    assert_eq!(confirm(level(10, 4), 3), Ok(level(7, 1)));
    assert_eq!(release(level(10, 4), 3), Ok(level(10, 1)));
    assert_eq!(Settlement::Confirm.apply(level(5, 5), 5), Ok(level(0, 0)));
    assert_eq!(Settlement::Release.apply(level(5, 5), 5), Ok(level(5, 0)));
}

#[test]
fn add_and_adjust() {
    assert_eq!(add(Level::EMPTY, 5), Ok(level(5, 0)));
    assert_eq!(add(level(1, 1), MAX_ADD), Ok(level(1 + MAX_ADD, 1)));
    assert_eq!(add(level(1, 0), 0), Err(StockError::InvalidQuantity(0)));
    assert_eq!(
        add(level(1, 0), MAX_ADD + 1),
        Err(StockError::InvalidQuantity((MAX_ADD + 1).into()))
    );
    assert_eq!(add(level(i32::MAX, 0), 1), Err(StockError::TooLarge));
    assert_eq!(adjust(level(10, 4), 4), Ok(level(4, 4)));
    assert_eq!(adjust(level(10, 4), 40), Ok(level(40, 4)));
    assert_eq!(
        adjust(level(10, 4), 3),
        Err(StockError::BelowReserved {
            total: 3,
            reserved: 4
        })
    );
    assert_eq!(
        adjust(level(10, 0), i64::from(i32::MAX) + 1),
        Err(StockError::TooLarge)
    );
}

#[test]
fn never_negative() {
    // Whatever sequence of operations is tried, an accepted result keeps the invariant,
    // and nothing takes a level below zero.
    let quantities = [-2, -1, 0, 1, 2, 3, 5, 8, i32::MAX];
    let mut levels = vec![Level::EMPTY, level(1, 0), level(1, 1), level(5, 2)];
    for _ in 0..3 {
        let mut next = Vec::new();
        for &l in &levels {
            for &q in &quantities {
                let results = [
                    add(l, q),
                    adjust(l, q.into()),
                    reserve(l, q),
                    confirm(l, q),
                    release(l, q),
                ];
                for after in results.into_iter().flatten() {
                    assert!(after.is_valid(), "{l:?} -> {after:?}");
                    assert!(after.total >= 0 && after.reserved >= 0 && after.available() >= 0);
                    next.push(after);
                }
            }
        }
        next.sort_by_key(|l| (l.total, l.reserved));
        next.dedup();
        next.truncate(64);
        levels = next;
    }
    assert_eq!(
        release(level(3, 0), 1),
        Err(StockError::NotReserved {
            requested: 1,
            reserved: 0
        })
    );
    assert_eq!(
        confirm(level(3, 1), 2),
        Err(StockError::NotReserved {
            requested: 2,
            reserved: 1
        })
    );
    assert!(matches!(
        adjust(level(3, 0), -1),
        Err(StockError::BelowReserved { .. })
    ));
}

#[test]
fn demand_merges_lines_and_sorts_by_product() {
    let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
    assert_eq!(
        demand(&[line(b, 1), line(a, 2), line(b, 3)]),
        Ok(vec![(a, 2), (b, 4)])
    );
    assert_eq!(demand(&[]), Err(Rejection::NoLines));
    assert_eq!(
        demand(&[line(a, 1), line(b, 0)]),
        Err(Rejection::InvalidQuantity {
            product_id: b,
            quantity: 0
        })
    );
    assert!(matches!(
        demand(&[line(a, i32::MAX), line(a, 1)]),
        Err(Rejection::InvalidQuantity { product_id, .. }) if product_id == a
    ));
}

#[test]
fn can_reserve_is_all_or_nothing() {
    let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
    let levels = HashMap::from([(a, level(5, 0)), (b, level(2, 1))]);
    let holds = can_reserve(&[(a, 5), (b, 1)], &levels).expect("enough of both");
    assert_eq!(
        holds,
        vec![
            Hold {
                product_id: a,
                quantity: 5,
                before: level(5, 0),
                after: level(5, 5)
            },
            Hold {
                product_id: b,
                quantity: 1,
                before: level(2, 1),
                after: level(2, 2)
            },
        ]
    );
    let short = can_reserve(&[(a, 1), (b, 2)], &levels);
    assert_eq!(
        short,
        Err(Rejection::Insufficient {
            product_id: b,
            requested: 2,
            available: 1
        })
    );
    let reason = short.expect_err("short").to_string();
    assert!(reason.contains(&b.to_string()), "{reason}");
    let unknown = can_reserve(&[(a, 1), (c, 1)], &levels);
    assert_eq!(unknown, Err(Rejection::UnknownProduct { product_id: c }));
    assert!(
        unknown
            .expect_err("unknown")
            .to_string()
            .contains(&c.to_string())
    );
}

#[test]
fn deltas_and_names() {
    assert_eq!(level(10, 2).delta_to(level(7, 0)), (-3, -2));
    assert_eq!(Settlement::Confirm.target(), ReservationState::Confirmed);
    assert_eq!(Settlement::Release.kind().as_str(), "release");
    assert_eq!(ReservationState::Reserved.as_str(), "RESERVED");
}

#[test]
fn restock_puts_sold_units_back_and_moves_only_confirmed_reservations() {
    assert_eq!(restock(level(3, 1), 2), Ok(level(5, 1)));
    assert_eq!(restock(level(3, 0), 0), Err(StockError::InvalidQuantity(0)));
    assert_eq!(restock(level(i32::MAX, 0), 1), Err(StockError::TooLarge));
    assert_eq!(Settlement::Restock.apply(level(0, 0), 5), Ok(level(5, 0)));
    assert_eq!(Settlement::Restock.from(), ReservationState::Confirmed);
    assert_eq!(Settlement::Restock.target(), ReservationState::Restocked);
    assert_eq!(Settlement::Restock.kind().as_str(), "restock");
    for settlement in [Settlement::Confirm, Settlement::Release] {
        assert_eq!(settlement.from(), ReservationState::Reserved);
    }
}
