use super::*;
use OrderState::*;

fn declined() -> Input {
    Input::PaymentDeclined {
        reason: "card declined".into(),
    }
}

fn inputs() -> Vec<Input> {
    vec![
        Input::StockReserved,
        Input::StockReservationFailed {
            reason: "out of beans".into(),
        },
        Input::PaymentApproved,
        declined(),
        Input::StockConfirmed,
        Input::StockReleased {
            reason: "released".into(),
        },
        Input::CustomerCancelled,
        Input::ReservationExpired,
        Input::Stuck,
        Input::ShipmentCreated,
        Input::ShipmentDelivered,
    ]
}

#[test]
fn the_happy_path_confirms_ships_and_completes() {
    let mut state = Pending;
    for input in [
        Input::StockReserved,
        Input::PaymentApproved,
        Input::StockConfirmed,
    ] {
        state = apply(state, &input).expect("applies").to;
    }
    assert_eq!(state, Confirmed);
    let confirmed = apply(Paid, &Input::StockConfirmed).expect("confirms");
    let order_id = Uuid::now_v7();
    assert_eq!(
        confirmed.announcement(order_id, "alice"),
        Some(Event::OrderConfirmed {
            order_id,
            customer_id: "alice".into()
        })
    );
    let shipped = apply(state, &Input::ShipmentCreated).expect("ships");
    assert_eq!(shipped.to, Shipped);
    assert_eq!(shipped.announcement(order_id, "alice"), None);
    let completed = apply(Shipped, &Input::ShipmentDelivered).expect("completes");
    assert_eq!(completed.to, Completed);
    assert_eq!(
        completed.announcement(order_id, "alice"),
        Some(Event::OrderCompleted {
            order_id,
            customer_id: "alice".into()
        })
    );
    assert_eq!(apply(Confirmed, &Input::ShipmentDelivered), None);
    assert!(
        apply(Pending, &Input::StockReserved)
            .expect("reserves")
            .reserved
    );
}

#[test]
fn payment_outcomes_may_overtake_the_reservation() {
    let paid = apply(Pending, &Input::PaymentApproved).expect("applies");
    assert_eq!(paid.to, Paid);
    assert_eq!(apply(Paid, &Input::StockReserved), None, "stays paid");
    assert_eq!(
        apply(Paid, &Input::StockConfirmed).map(|t| t.to),
        Some(Confirmed)
    );
    let cancelled = apply(Pending, &declined()).expect("applies");
    assert_eq!(cancelled.to, Cancelled);
    assert_eq!(apply(Cancelled, &Input::StockReserved), None);
    assert_eq!(
        apply(Reserved, &Input::StockConfirmed).map(|t| t.to),
        Some(Confirmed)
    );
}

#[test]
fn failures_and_declines_record_their_reason() {
    let failed = apply(
        Pending,
        &Input::StockReservationFailed {
            reason: "out of beans".into(),
        },
    )
    .expect("applies");
    assert_eq!(failed.to, Failed);
    assert_eq!(failed.reason.as_deref(), Some("out of beans"));
    assert_eq!(failed.announcement(Uuid::now_v7(), "alice"), None);

    let declined = apply(Reserved, &declined()).expect("applies");
    assert_eq!(declined.to, Cancelled);
    assert_eq!(
        declined.reason.as_deref(),
        Some("payment declined: card declined")
    );
    let order_id = Uuid::now_v7();
    assert_eq!(
        declined.announcement(order_id, "alice"),
        Some(Event::OrderCancelled {
            order_id,
            customer_id: "alice".into(),
            reason: "payment declined: card declined".into()
        }),
        "every cancellation is announced, so the customer is told"
    );
}

#[test]
fn customers_cancel_until_the_order_ships() {
    let order_id = Uuid::now_v7();
    for state in [Pending, Reserved, Paid, Confirmed] {
        let t = apply(state, &Input::CustomerCancelled).expect("cancellable");
        assert_eq!(t.to, Cancelled);
        assert_eq!(t.reason.as_deref(), Some(CANCELLED_BY_CUSTOMER));
        assert_eq!(
            t.announcement(order_id, "bob"),
            Some(Event::OrderCancelled {
                order_id,
                customer_id: "bob".into(),
                reason: CANCELLED_BY_CUSTOMER.into()
            })
        );
    }
    // A shipment the order service learns of after the cancellation changes nothing (shipping
    // cancels it on OrderCancelled).
    assert_eq!(apply(Cancelled, &Input::ShipmentCreated), None);
    for state in [Shipped, Completed, Cancelled, Failed] {
        assert_eq!(apply(state, &Input::CustomerCancelled), None, "{state}");
    }
}

#[test]
fn only_reservations_expire() {
    let t = apply(Reserved, &Input::ReservationExpired).expect("expires");
    assert_eq!(t.to, Cancelled);
    assert_eq!(t.reason.as_deref(), Some(PAYMENT_TIMEOUT));
    assert!(t.announcement(Uuid::now_v7(), "alice").is_some());
    for state in [
        Pending, Paid, Confirmed, Shipped, Completed, Cancelled, Failed,
    ] {
        assert_eq!(apply(state, &Input::ReservationExpired), None, "{state}");
    }
}

#[test]
fn only_orders_waiting_for_a_reservation_or_a_confirmation_get_stuck() {
    for state in [Pending, Paid] {
        let t = apply(state, &Input::Stuck).expect("cancels");
        assert_eq!((t.to, t.reason.as_deref()), (Cancelled, Some(STUCK)));
        assert!(t.announcement(Uuid::now_v7(), "alice").is_some());
    }
    for state in [Reserved, Confirmed, Shipped, Completed, Cancelled, Failed] {
        assert_eq!(apply(state, &Input::Stuck), None, "{state}");
    }
}

#[test]
fn final_states_never_move() {
    for state in OrderState::ALL.into_iter().filter(|s| s.is_final()) {
        for input in inputs() {
            assert_eq!(apply(state, &input), None, "{state} on {input:?}");
        }
    }
}

#[test]
fn no_transition_is_to_the_same_state_and_redeliveries_change_nothing() {
    for state in OrderState::ALL {
        for input in inputs() {
            if let Some(t) = apply(state, &input) {
                assert_ne!(t.to, state, "{state} on {input:?}");
                // Applying the same input again to the new state changes nothing.
                assert_eq!(apply(t.to, &input), None, "{state} on {input:?} twice");
            }
        }
    }
}

#[test]
fn releases_never_move_an_order() {
    let input = Input::StockReleased { reason: "x".into() };
    for state in OrderState::ALL {
        assert_eq!(apply(state, &input), None);
    }
}

#[test]
fn state_names_round_trip() {
    for state in OrderState::ALL {
        assert_eq!(OrderState::parse(state.as_str()), Some(state));
        assert_eq!(
            serde_json::to_value(state).expect("serializes"),
            serde_json::json!(state.as_str())
        );
    }
    assert_eq!(OrderState::parse("pending"), None);
}

#[test]
fn maps_events_to_inputs() {
    let order_id = Uuid::now_v7();
    let (id, input) = Input::from_event(&Event::PaymentDeclined {
        order_id,
        reason: "card declined".into(),
    })
    .expect("relevant");
    assert_eq!(id, order_id);
    assert_eq!(input, declined());
    assert_eq!(
        Input::from_event(&Event::OrderCancelled {
            order_id,
            customer_id: "c".into(),
            reason: "r".into()
        }),
        None
    );
    assert_eq!(
        Input::from_event(&Event::StockLevelChanged {
            product_id: order_id,
            total: 1,
            reserved: 0,
            available: 1,
            version: 1
        }),
        None
    );
}

#[test]
fn validates_lines() {
    let a = Uuid::now_v7();
    let b = Uuid::now_v7();
    assert_eq!(validate_lines(&[(a, 1), (b, 100)]), Ok(()));
    assert_eq!(validate_lines(&[]), Err(InvalidOrder::LineCount(0)));
    let many: Vec<_> = (0..51).map(|_| (Uuid::now_v7(), 1)).collect();
    assert_eq!(validate_lines(&many), Err(InvalidOrder::LineCount(51)));
    assert_eq!(validate_lines(&many[..50]), Ok(()));
    for quantity in [0, -1, 101] {
        assert_eq!(
            validate_lines(&[(a, 1), (b, quantity)]),
            Err(InvalidOrder::Quantity { line: 2, quantity })
        );
    }
    assert_eq!(
        validate_lines(&[(a, 1), (b, 1), (a, 2)]),
        Err(InvalidOrder::DuplicateProduct(a))
    );
}

#[test]
fn totals_with_overflow_checks() {
    let line = |quantity, unit_price_cents| OrderLine {
        product_id: Uuid::now_v7(),
        quantity,
        unit_price_cents,
    };
    assert_eq!(total_cents(&[line(2, 450), line(1, 1299)]), Some(2199));
    assert_eq!(total_cents(&[line(100, i64::MAX / 10)]), None);
    assert_eq!(total_cents(&[line(1, i64::MAX), line(1, 1)]), None);
    assert_eq!(total_cents(&[line(1, -5)]), None);
}

#[test]
fn the_placed_event_carries_the_snapshot() {
    let order = Order {
        id: Uuid::now_v7(),
        customer_id: "alice".into(),
        state: Pending,
        reason: None,
        lines: vec![OrderLine {
            product_id: Uuid::now_v7(),
            quantity: 2,
            unit_price_cents: 450,
        }],
        total_cents: 900,
        created_at: Utc::now(),
        updated_at: Utc::now(),
    };
    let Event::OrderPlaced {
        order_id,
        customer_id,
        lines,
        total_cents,
    } = order.placed_event()
    else {
        panic!("not OrderPlaced");
    };
    assert_eq!(order_id, order.id);
    assert_eq!(customer_id, "alice");
    assert_eq!(total_cents, 900);
    assert_eq!(lines[0].unit_price_cents, 450);
    assert_eq!(lines[0].quantity, 2);
}
