//! The wire format: every event type round-trips, what is refused is refused, and a newer
//! producer's envelope reads.

use commerce_events::{DecodeError, Event, Line, Topics, decode};
use strum::VariantNames;
use uuid::Uuid;

#[test]
fn round_trips_every_event_type() {
    let order_id = Uuid::now_v7();
    let events = [
        Event::OrderPlaced {
            order_id,
            customer_id: "alice".into(),
            lines: vec![Line {
                product_id: Uuid::now_v7(),
                quantity: 2,
                unit_price_cents: 500,
            }],
            total_cents: 1000,
        },
        Event::OrderConfirmed {
            order_id,
            customer_id: "alice".into(),
        },
        Event::OrderCompleted {
            order_id,
            customer_id: "alice".into(),
        },
        Event::OrderCancelled {
            order_id,
            customer_id: "alice".into(),
            reason: "r".into(),
        },
        Event::StockReserved {
            order_id,
            total_cents: 1,
            customer_id: "c".into(),
        },
        Event::StockReservationFailed {
            order_id,
            reason: "r".into(),
        },
        Event::StockConfirmed { order_id },
        Event::StockReleased {
            order_id,
            reason: "r".into(),
        },
        Event::StockRestocked {
            order_id,
            reason: "r".into(),
        },
        Event::ProductChanged {
            product_id: order_id,
            sku: "s".into(),
            name: "n".into(),
            price_cents: 1,
            active: true,
            version: 1,
        },
        Event::StockLevelChanged {
            product_id: order_id,
            total: 3,
            reserved: 1,
            available: 2,
            version: 7,
        },
        Event::PaymentApproved {
            order_id,
            payment_id: order_id,
            amount_cents: 1,
        },
        Event::PaymentDeclined {
            order_id,
            reason: "r".into(),
        },
        Event::PaymentRefunded {
            order_id,
            payment_id: order_id,
            customer_id: "alice".into(),
            amount_cents: 1,
        },
        Event::ShipmentCreated {
            order_id,
            shipment_id: order_id,
            customer_id: "alice".into(),
            carrier: "c".into(),
            tracking_number: "t".into(),
        },
        Event::ShipmentDelivered {
            order_id,
            shipment_id: order_id,
            customer_id: "alice".into(),
        },
    ];
    assert_eq!(events.len(), Event::VARIANTS.len());
    for event in events {
        assert!(Event::VARIANTS.contains(&event.event_type()));
        assert!(Topics::new("t").of(&event).starts_with("t."));
        let envelope = event.into_envelope();
        let json: serde_json::Value = serde_json::from_slice(&envelope.to_json()).expect("json");
        assert_eq!(json["event_type"], envelope.event.event_type());
        assert_eq!(json["event_id"], envelope.event_id.to_string());
        let decoded = decode(&envelope.to_json()).expect("decodes");
        assert_eq!(decoded, envelope);
    }
}

#[test]
fn rejects_unknown_types_missing_fields_and_garbage() {
    let id = Uuid::now_v7();
    let unknown = format!(
        r#"{{"event_id":"{id}","event_type":"Evil","aggregate_id":"x","occurred_at":"2026-01-01T00:00:00Z","payload":{{}}}}"#
    );
    assert!(matches!(decode(unknown.as_bytes()), Err(DecodeError::UnknownType(t)) if t == "Evil"));
    let missing = format!(
        r#"{{"event_id":"{id}","event_type":"StockConfirmed","aggregate_id":"x","occurred_at":"2026-01-01T00:00:00Z","payload":{{}}}}"#
    );
    assert!(matches!(
        decode(missing.as_bytes()),
        Err(DecodeError::Payload { .. })
    ));
    assert!(matches!(decode(b"not json"), Err(DecodeError::Envelope(_))));
}

#[test]
fn reads_a_newer_producers_fields_past_and_an_older_envelope_as_version_one() {
    let id = Uuid::now_v7();
    let newer = format!(
        r#"{{"event_id":"{id}","schema_version":1,"tenant":"eu","event_type":"StockConfirmed","aggregate_id":"x","occurred_at":"2026-01-01T00:00:00Z","payload":{{"order_id":"{id}","warehouse":"north"}}}}"#
    );
    let envelope = decode(newer.as_bytes()).expect("a newer producer's event decodes");
    assert_eq!(envelope.event, Event::StockConfirmed { order_id: id });
    let older = format!(
        r#"{{"event_id":"{id}","event_type":"StockConfirmed","aggregate_id":"x","occurred_at":"2026-01-01T00:00:00Z","payload":{{"order_id":"{id}"}}}}"#
    );
    let envelope = decode(older.as_bytes()).expect("an envelope without a version decodes");
    assert_eq!(envelope.schema_version, 1);
    assert_eq!(
        envelope.correlation_id, id,
        "an older envelope starts its own chain"
    );
    assert_eq!(envelope.causation_id, None);
}

#[test]
fn a_caused_event_joins_its_causes_chain_and_keeps_it_on_the_wire() {
    let order_id = Uuid::now_v7();
    let placed = Event::OrderConfirmed {
        order_id,
        customer_id: "alice".into(),
    }
    .into_envelope();
    assert_eq!(
        placed.correlation_id, placed.event_id,
        "a chain's first event"
    );
    assert_eq!(placed.causation_id, None);
    let confirmed = Event::StockConfirmed { order_id }.caused_by(placed.cause());
    let shipped = Event::StockConfirmed { order_id }.caused_by(confirmed.cause());
    assert_eq!(confirmed.correlation_id, placed.event_id);
    assert_eq!(confirmed.causation_id, Some(placed.event_id));
    assert_eq!(shipped.correlation_id, placed.event_id);
    assert_eq!(shipped.causation_id, Some(confirmed.event_id));
    assert_eq!(decode(&shipped.to_json()).expect("decodes"), shipped);
}
