//! Orders: their states, what moves them, and what a new order must satisfy. No I/O.
//!
//! ```text
//! PENDING --StockReserved--> RESERVED --PaymentApproved--> PAID --StockConfirmed--> CONFIRMED
//!         + OrderConfirmed --ShipmentCreated--> SHIPPED --ShipmentDelivered--> COMPLETED
//! PENDING --StockReservationFailed--> FAILED(reason)
//! PENDING | RESERVED --PaymentDeclined--> CANCELLED("payment declined: ...")
//! RESERVED --expiry job--> CANCELLED("payment timeout") + OrderCancelled
//! PENDING | RESERVED | PAID | CONFIRMED --customer--> CANCELLED("cancelled by customer") + OrderCancelled
//! ```
//!
//! Once `SHIPPED` an order can no longer be cancelled. A cancellation undoes everything the
//! saga did so far, whatever has happened elsewhere: inventory releases reserved units and
//! restocks sold ones, payment refunds a charge (even one approved after the cancellation), and
//! shipping cancels a shipment the order service has not yet heard of (its `ShipmentCreated` is
//! then ignored here).
//!
//! The order service reads the inventory and payments topics, and two topics are not ordered
//! with respect to each other: a payment outcome may arrive before the `StockReserved` that caused
//! it. So `PaymentApproved` and `PaymentDeclined` also apply to a `PENDING` order, `StockReserved`
//! leaves a `PAID` order paid, and `StockConfirmed` (which inventory only sends after the payment
//! was approved) confirms a `RESERVED` order too. An event that does not apply to the current
//! state (a late `PaymentApproved` for a cancelled order, a redelivery) changes nothing.

use std::collections::HashSet;
use std::fmt;

use chrono::{DateTime, Utc};
use commerce_events::Event;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// The most lines an order may have.
pub const MAX_LINES: usize = 50;
/// The most units of one product per order.
pub const MAX_QUANTITY: i32 = 100;
/// The reason recorded when the customer cancels.
pub const CANCELLED_BY_CUSTOMER: &str = "cancelled by customer";
/// The reason recorded when a reservation waited too long for its payment.
pub const PAYMENT_TIMEOUT: &str = "payment timeout";
/// The reason of an order cancelled because it made no progress in time (see
/// [`Input::Stuck`]).
pub const STUCK: &str = "stuck: no progress in time";

/// Where an order is in the saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderState {
    /// Placed; waiting for the stock reservation.
    Pending,
    /// Stock reserved; waiting for the payment.
    Reserved,
    /// Paid; waiting for the stock confirmation.
    Paid,
    /// Paid and the stock is sold; waiting for its shipment.
    Confirmed,
    /// Handed to the carrier; can no longer be cancelled.
    Shipped,
    /// Delivered (final).
    Completed,
    /// Cancelled by the customer, a declined payment or a payment timeout (final).
    Cancelled,
    /// The stock could not be reserved (final).
    Failed,
}

impl OrderState {
    /// Every state.
    pub const ALL: [OrderState; 8] = [
        OrderState::Pending,
        OrderState::Reserved,
        OrderState::Paid,
        OrderState::Confirmed,
        OrderState::Shipped,
        OrderState::Completed,
        OrderState::Cancelled,
        OrderState::Failed,
    ];

    /// The name stored in the database and sent in JSON (`PENDING`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::Pending => "PENDING",
            OrderState::Reserved => "RESERVED",
            OrderState::Paid => "PAID",
            OrderState::Confirmed => "CONFIRMED",
            OrderState::Shipped => "SHIPPED",
            OrderState::Completed => "COMPLETED",
            OrderState::Cancelled => "CANCELLED",
            OrderState::Failed => "FAILED",
        }
    }

    /// The state named `name` ([`as_str`](Self::as_str)'s inverse).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether nothing moves the order any more (`COMPLETED`, `CANCELLED`, `FAILED`).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            OrderState::Completed | OrderState::Cancelled | OrderState::Failed
        )
    }
}

impl fmt::Display for OrderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that happens to an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Inventory reserved every line.
    StockReserved,
    /// Inventory could not reserve the order.
    StockReservationFailed {
        /// Why.
        reason: String,
    },
    /// The payment went through.
    PaymentApproved,
    /// The payment was declined.
    PaymentDeclined {
        /// Why.
        reason: String,
    },
    /// The reservation became a sale.
    StockConfirmed,
    /// Inventory gave the reservation back (after a decline or a cancellation).
    StockReleased {
        /// Why.
        reason: String,
    },
    /// The parcel was handed to the carrier.
    ShipmentCreated,
    /// The parcel reached the customer.
    ShipmentDelivered,
    /// The customer cancelled.
    CustomerCancelled,
    /// The reservation waited longer than the timeout for its payment.
    ReservationExpired,
    /// The order waited longer than the stuck-order limit for its reservation (`PENDING`) or
    /// its confirmation (`PAID`): an event lost upstream, or a service down for that long.
    Stuck,
}

impl Input {
    /// The order an event is about and what it means for it; `None` for events the order service
    /// does not act on (its own, products, stock levels, refunds).
    pub fn from_event(event: &Event) -> Option<(Uuid, Input)> {
        match event {
            Event::StockReserved { order_id, .. } => Some((*order_id, Input::StockReserved)),
            Event::StockReservationFailed { order_id, reason } => Some((
                *order_id,
                Input::StockReservationFailed {
                    reason: reason.clone(),
                },
            )),
            Event::PaymentApproved { order_id, .. } => Some((*order_id, Input::PaymentApproved)),
            Event::PaymentDeclined { order_id, reason } => Some((
                *order_id,
                Input::PaymentDeclined {
                    reason: reason.clone(),
                },
            )),
            Event::StockConfirmed { order_id } => Some((*order_id, Input::StockConfirmed)),
            Event::StockReleased { order_id, reason } => Some((
                *order_id,
                Input::StockReleased {
                    reason: reason.clone(),
                },
            )),
            Event::ShipmentCreated { order_id, .. } => Some((*order_id, Input::ShipmentCreated)),
            Event::ShipmentDelivered { order_id, .. } => {
                Some((*order_id, Input::ShipmentDelivered))
            }
            Event::OrderPlaced { .. }
            | Event::OrderConfirmed { .. }
            | Event::OrderCompleted { .. }
            | Event::OrderCancelled { .. }
            | Event::StockRestocked { .. }
            | Event::StockLevelChanged { .. }
            | Event::ProductChanged { .. }
            | Event::PaymentRefunded { .. } => None,
        }
    }

    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Input::StockReserved => "StockReserved",
            Input::StockReservationFailed { .. } => "StockReservationFailed",
            Input::PaymentApproved => "PaymentApproved",
            Input::PaymentDeclined { .. } => "PaymentDeclined",
            Input::StockConfirmed => "StockConfirmed",
            Input::StockReleased { .. } => "StockReleased",
            Input::ShipmentCreated => "ShipmentCreated",
            Input::ShipmentDelivered => "ShipmentDelivered",
            Input::CustomerCancelled => "CustomerCancelled",
            Input::ReservationExpired => "ReservationExpired",
            Input::Stuck => "Stuck",
        }
    }
}

/// A change of state, to be written with the order's row locked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The new state.
    pub to: OrderState,
    /// The reason to record (`None` keeps the current one).
    pub reason: Option<String>,
    /// Whether the reservation clock starts now (`reserved_at`).
    pub reserved: bool,
}

impl Transition {
    fn to(to: OrderState) -> Self {
        Self {
            to,
            reason: None,
            reserved: false,
        }
    }

    fn cancelled(reason: &str) -> Self {
        Self {
            reason: Some(reason.to_owned()),
            ..Self::to(OrderState::Cancelled)
        }
    }

    /// The event the order service publishes for this transition of the order `order_id` placed by
    /// `customer_id`: `OrderConfirmed` (shipping starts a shipment, the customer is told),
    /// `OrderCompleted` (the shipment was delivered) and `OrderCancelled`, whatever the cause
    /// (inventory gives the units back, payment refunds a charge, shipping cancels a shipment, the
    /// customer is told why; after a declined payment inventory and payment have nothing left to
    /// do, which they find out themselves).
    pub fn announcement(&self, order_id: Uuid, customer_id: &str) -> Option<Event> {
        let customer_id = customer_id.to_owned();
        match self.to {
            OrderState::Confirmed => Some(Event::OrderConfirmed {
                order_id,
                customer_id,
            }),
            OrderState::Completed => Some(Event::OrderCompleted {
                order_id,
                customer_id,
            }),
            OrderState::Cancelled => Some(Event::OrderCancelled {
                order_id,
                customer_id,
                reason: self.reason.clone().unwrap_or_default(),
            }),
            _ => None,
        }
    }
}

/// What `input` does to an order in `state`: a [`Transition`], or `None` when it does not apply
/// (the order stays as it is).
pub fn apply(state: OrderState, input: &Input) -> Option<Transition> {
    use OrderState::{Confirmed, Paid, Pending, Reserved, Shipped};
    match (state, input) {
        (Pending, Input::StockReserved) => Some(Transition {
            reserved: true,
            ..Transition::to(Reserved)
        }),
        (Pending, Input::StockReservationFailed { reason }) => Some(Transition {
            reason: Some(reason.clone()),
            ..Transition::to(OrderState::Failed)
        }),
        (Pending | Reserved, Input::PaymentApproved) => Some(Transition::to(Paid)),
        (Pending | Reserved, Input::PaymentDeclined { reason }) => Some(Transition::cancelled(
            &format!("payment declined: {reason}"),
        )),
        (Reserved | Paid, Input::StockConfirmed) => Some(Transition::to(Confirmed)),
        (Confirmed, Input::ShipmentCreated) => Some(Transition::to(Shipped)),
        (Shipped, Input::ShipmentDelivered) => Some(Transition::to(OrderState::Completed)),
        (Pending | Reserved | Paid | Confirmed, Input::CustomerCancelled) => {
            Some(Transition::cancelled(CANCELLED_BY_CUSTOMER))
        }
        (Reserved, Input::ReservationExpired) => Some(Transition::cancelled(PAYMENT_TIMEOUT)),
        (Pending | Paid, Input::Stuck) => Some(Transition::cancelled(STUCK)),
        // A release follows a decline or a cancellation, which moves the order itself.
        (_, Input::StockReleased { .. }) => None,
        _ => None,
    }
}

/// One line of an order, with the unit price snapshotted when it was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderLine {
    /// The product.
    pub product_id: Uuid,
    /// How many units (1 to 100).
    pub quantity: i32,
    /// The product's price when the order was placed, in cents.
    pub unit_price_cents: i64,
}

/// An order, as stored and as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Order {
    /// The order's id (UUIDv7).
    pub id: Uuid,
    /// Who placed it (the token's `sub`).
    pub customer_id: String,
    /// Where it is in the saga.
    pub state: OrderState,
    /// Why it was cancelled or failed.
    pub reason: Option<String>,
    /// What was ordered.
    pub lines: Vec<OrderLine>,
    /// The sum of the lines, in cents.
    pub total_cents: i64,
    /// When it was placed.
    pub created_at: DateTime<Utc>,
    /// When its state last changed.
    pub updated_at: DateTime<Utc>,
}

impl Order {
    /// The `OrderPlaced` event for this order.
    pub fn placed_event(&self) -> Event {
        Event::OrderPlaced {
            order_id: self.id,
            customer_id: self.customer_id.clone(),
            lines: self
                .lines
                .iter()
                .map(|line| commerce_events::Line {
                    product_id: line.product_id,
                    quantity: line.quantity,
                    unit_price_cents: line.unit_price_cents,
                })
                .collect(),
            total_cents: self.total_cents,
        }
    }
}

/// Why the lines of a new order are not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidOrder {
    /// No lines, or more than [`MAX_LINES`].
    #[error("an order has 1 to {MAX_LINES} lines, not {0}")]
    LineCount(usize),
    /// A quantity outside `1..=`[`MAX_QUANTITY`].
    #[error("line {line}: the quantity must be 1 to {MAX_QUANTITY}, not {quantity}")]
    Quantity {
        /// The line's position (from 1).
        line: usize,
        /// The quantity asked for.
        quantity: i32,
    },
    /// The same product on two lines.
    #[error("product {0} appears on more than one line")]
    DuplicateProduct(Uuid),
}

/// Checks the requested `(product, quantity)` lines of a new order.
///
/// # Errors
///
/// The first [`InvalidOrder`] found.
pub fn validate_lines(lines: &[(Uuid, i32)]) -> Result<(), InvalidOrder> {
    if lines.is_empty() || lines.len() > MAX_LINES {
        return Err(InvalidOrder::LineCount(lines.len()));
    }
    let mut seen = HashSet::with_capacity(lines.len());
    for (index, &(product_id, quantity)) in lines.iter().enumerate() {
        if !(1..=MAX_QUANTITY).contains(&quantity) {
            return Err(InvalidOrder::Quantity {
                line: index + 1,
                quantity,
            });
        }
        if !seen.insert(product_id) {
            return Err(InvalidOrder::DuplicateProduct(product_id));
        }
    }
    Ok(())
}

/// The order's total in cents, or `None` if it overflows (or a price is negative).
pub fn total_cents(lines: &[OrderLine]) -> Option<i64> {
    lines.iter().try_fold(0_i64, |total, line| {
        if line.unit_price_cents < 0 {
            return None;
        }
        line.unit_price_cents
            .checked_mul(i64::from(line.quantity))
            .and_then(|amount| total.checked_add(amount))
    })
}

#[cfg(test)]
mod tests;
