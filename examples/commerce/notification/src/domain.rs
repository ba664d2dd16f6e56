//! Which events a customer is told about, and what they are told, without I/O.
//!
//! ```text
//! OrderPlaced        -> order_placed      "Order <id> placed: <n> items, <total>"
//! OrderConfirmed     -> order_confirmed   "Order <id> confirmed"
//! OrderCancelled     -> order_cancelled   "Order <id> cancelled: <reason>"
//! ShipmentCreated    -> order_shipped     "Order <id> shipped with <carrier>, tracking number <n>"
//! ShipmentDelivered  -> order_delivered   "Order <id> delivered"
//! PaymentRefunded    -> payment_refunded  "Payment for order <id> refunded: <amount>"
//! anything else      -> nothing
//! ```
//!
//! Amounts are cents written as units with two decimals (`1234` -> `12.34`).

use commerce_events::Event;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The customer placed an order.
    OrderPlaced,
    /// The order is paid and its stock sold.
    OrderConfirmed,
    /// The order was cancelled.
    OrderCancelled,
    /// The order's parcel was handed to the carrier.
    OrderShipped,
    /// The order's parcel reached the customer.
    OrderDelivered,
    /// The order's charge was refunded.
    PaymentRefunded,
}

impl Kind {
    /// Every kind, in the order of the saga.
    pub const ALL: [Kind; 6] = [
        Kind::OrderPlaced,
        Kind::OrderConfirmed,
        Kind::OrderCancelled,
        Kind::OrderShipped,
        Kind::OrderDelivered,
        Kind::PaymentRefunded,
    ];

    /// The name stored in the database and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OrderPlaced => "order_placed",
            Kind::OrderConfirmed => "order_confirmed",
            Kind::OrderCancelled => "order_cancelled",
            Kind::OrderShipped => "order_shipped",
            Kind::OrderDelivered => "order_delivered",
            Kind::PaymentRefunded => "payment_refunded",
        }
    }

    /// The kind named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The notification an event makes: for whom, about which order, what kind, what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The customer told.
    pub customer_id: String,
    /// The order it is about.
    pub order_id: Uuid,
    /// What it is about.
    pub kind: Kind,
    /// What the customer reads.
    pub message: String,
}

/// The notification `event` makes, or `None` for events customers are not told about (stock
/// movements, payment approvals and declines: a declined payment reaches the customer as the
/// order's cancellation; an order's completion: they were told of its delivery).
pub fn notification_for(event: &Event) -> Option<Notification> {
    let (order_id, customer_id, kind, message) = match event {
        Event::OrderPlaced {
            order_id,
            customer_id,
            lines,
            total_cents,
        } => {
            let units: i64 = lines.iter().map(|line| i64::from(line.quantity)).sum();
            let items = if units == 1 { "item" } else { "items" };
            (
                order_id,
                customer_id,
                Kind::OrderPlaced,
                format!(
                    "Order {order_id} placed: {units} {items}, {}",
                    format_cents(*total_cents)
                ),
            )
        }
        Event::OrderConfirmed {
            order_id,
            customer_id,
        } => (
            order_id,
            customer_id,
            Kind::OrderConfirmed,
            format!("Order {order_id} confirmed"),
        ),
        Event::OrderCancelled {
            order_id,
            customer_id,
            reason,
        } => (
            order_id,
            customer_id,
            Kind::OrderCancelled,
            format!("Order {order_id} cancelled: {reason}"),
        ),
        Event::ShipmentCreated {
            order_id,
            customer_id,
            carrier,
            tracking_number,
            ..
        } => (
            order_id,
            customer_id,
            Kind::OrderShipped,
            format!("Order {order_id} shipped with {carrier}, tracking number {tracking_number}"),
        ),
        Event::ShipmentDelivered {
            order_id,
            customer_id,
            ..
        } => (
            order_id,
            customer_id,
            Kind::OrderDelivered,
            format!("Order {order_id} delivered"),
        ),
        Event::PaymentRefunded {
            order_id,
            customer_id,
            amount_cents,
            ..
        } => (
            order_id,
            customer_id,
            Kind::PaymentRefunded,
            format!(
                "Payment for order {order_id} refunded: {}",
                format_cents(*amount_cents)
            ),
        ),
        Event::StockReserved { .. }
        | Event::StockReservationFailed { .. }
        | Event::StockConfirmed { .. }
        | Event::StockReleased { .. }
        | Event::StockRestocked { .. }
        | Event::StockLevelChanged { .. }
        | Event::ProductChanged { .. }
        | Event::PaymentApproved { .. }
        | Event::PaymentDeclined { .. }
        | Event::OrderCompleted { .. } => return None,
    };
    Some(Notification {
        customer_id: customer_id.clone(),
        order_id: *order_id,
        kind,
        message,
    })
}

/// Cents as units with two decimals: `1234` -> `"12.34"`, `5` -> `"0.05"`, `-150` -> `"-1.50"`.
pub fn format_cents(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

#[cfg(test)]
mod tests {
    use commerce_events::Line;

    use super::*;

    fn line(quantity: i32, unit_price_cents: i64) -> Line {
        Line {
            product_id: Uuid::now_v7(),
            quantity,
            unit_price_cents,
        }
    }

    fn expect(event: &Event, kind: Kind, message: &str) {
        let notification = notification_for(event).expect("a notification");
        assert_eq!(notification.customer_id, "alice");
        assert_eq!(notification.kind, kind);
        assert_eq!(notification.message, message);
        assert_eq!(
            notification.order_id.to_string(),
            event.aggregate().1,
            "the order's id"
        );
    }

    #[test]
    fn formats_cents_with_two_decimals() {
        assert_eq!(format_cents(1234), "12.34");
        assert_eq!(format_cents(5), "0.05");
        assert_eq!(format_cents(0), "0.00");
        assert_eq!(format_cents(100_000), "1000.00");
        assert_eq!(format_cents(-150), "-1.50");
        assert_eq!(format_cents(i64::MIN), "-92233720368547758.08");
    }

    #[test]
    fn order_placed_counts_units_and_formats_the_total() {
        let order_id = Uuid::now_v7();
        let event = Event::OrderPlaced {
            order_id,
            customer_id: "alice".into(),
            lines: vec![line(2, 500), line(1, 234)],
            total_cents: 1234,
        };
        expect(
            &event,
            Kind::OrderPlaced,
            &format!("Order {order_id} placed: 3 items, 12.34"),
        );
        let single = Event::OrderPlaced {
            order_id,
            customer_id: "alice".into(),
            lines: vec![line(1, 99)],
            total_cents: 99,
        };
        expect(
            &single,
            Kind::OrderPlaced,
            &format!("Order {order_id} placed: 1 item, 0.99"),
        );
    }

    #[test]
    fn order_confirmed_and_cancelled() {
        let order_id = Uuid::now_v7();
        expect(
            &Event::OrderConfirmed {
                order_id,
                customer_id: "alice".into(),
            },
            Kind::OrderConfirmed,
            &format!("Order {order_id} confirmed"),
        );
        expect(
            &Event::OrderCancelled {
                order_id,
                customer_id: "alice".into(),
                reason: "payment timeout".into(),
            },
            Kind::OrderCancelled,
            &format!("Order {order_id} cancelled: payment timeout"),
        );
    }

    #[test]
    fn shipment_created_and_delivered() {
        let order_id = Uuid::now_v7();
        let shipment_id = Uuid::now_v7();
        expect(
            &Event::ShipmentCreated {
                order_id,
                shipment_id,
                customer_id: "alice".into(),
                carrier: "ACME Post".into(),
                tracking_number: "TRK-42".into(),
            },
            Kind::OrderShipped,
            &format!("Order {order_id} shipped with ACME Post, tracking number TRK-42"),
        );
        expect(
            &Event::ShipmentDelivered {
                order_id,
                shipment_id,
                customer_id: "alice".into(),
            },
            Kind::OrderDelivered,
            &format!("Order {order_id} delivered"),
        );
    }

    #[test]
    fn payment_refunded_formats_the_amount() {
        let order_id = Uuid::now_v7();
        expect(
            &Event::PaymentRefunded {
                order_id,
                payment_id: Uuid::now_v7(),
                customer_id: "alice".into(),
                amount_cents: 1500,
            },
            Kind::PaymentRefunded,
            &format!("Payment for order {order_id} refunded: 15.00"),
        );
    }

    #[test]
    fn other_events_make_no_notification() {
        let order_id = Uuid::now_v7();
        let ignored = [
            Event::StockReserved {
                order_id,
                total_cents: 1,
                customer_id: "alice".into(),
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
            Event::StockLevelChanged {
                product_id: order_id,
                total: 3,
                reserved: 1,
                available: 2,
                version: 1,
            },
            Event::PaymentApproved {
                order_id,
                payment_id: order_id,
                amount_cents: 1,
            },
            Event::PaymentDeclined {
                order_id,
                reason: "card declined".into(),
            },
        ];
        for event in ignored {
            assert_eq!(notification_for(&event), None, "{}", event.event_type());
        }
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).expect("serializes"),
                kind.as_str()
            );
        }
        assert_eq!(Kind::parse("order_lost"), None);
    }
}
