//! Shipment states, the fake carrier and the saga's and API's decisions, without I/O.
//!
//! ```text
//! OrderConfirmed  (no shipment) -> CREATED + ShipmentCreated;  a shipment exists -> nothing
//! OrderCancelled  (no shipment) -> CANCELLED (no carrier, so it is never shipped afterwards)
//!                 CREATED -> CANCELLED(reason);  DELIVERED | CANCELLED -> nothing
//! deliver (admin) CREATED -> DELIVERED + ShipmentDelivered;  DELIVERED -> nothing (200);
//!                 CANCELLED -> refused (409)
//! ```

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// A shipment's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ShipmentState {
    /// Handed to the carrier, on its way.
    Created,
    /// Reached its customer.
    Delivered,
    /// The order was cancelled before delivery: the parcel is not (or no longer) shipped.
    Cancelled,
}

impl ShipmentState {
    /// Every state, in lifecycle order.
    pub const ALL: [ShipmentState; 3] = [
        ShipmentState::Created,
        ShipmentState::Delivered,
        ShipmentState::Cancelled,
    ];

    /// The name stored in the database and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ShipmentState::Created => "CREATED",
            ShipmentState::Delivered => "DELIVERED",
            ShipmentState::Cancelled => "CANCELLED",
        }
    }

    /// The state named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for ShipmentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fake carrier every parcel is handed to.
pub const CARRIER: &str = "Acme Parcel";

/// The fake carrier's tracking number for `order_id`: `AP` and the order id's 32 hex digits,
/// upper-case. It depends on the order id only, so a retried handler computes the same one, and
/// it is distinct for distinct orders (a prefix of a UUIDv7 would not be: its first 12 hex
/// digits are the creation millisecond).
pub fn tracking_number(order_id: Uuid) -> String {
    format!("AP{:X}", order_id.simple())
}

/// What to do when an order is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnConfirmed {
    /// Hand it to the carrier: a `CREATED` shipment and `ShipmentCreated`.
    Ship,
    /// The order already has a shipment (a second confirmation event) or was cancelled first
    /// (a `CANCELLED` row): never ship it (again).
    Exists(ShipmentState),
}

/// Whether a confirmed order gets shipped: only if it has no shipment row yet (a cancellation
/// seen first leaves a `CANCELLED` row).
pub fn on_order_confirmed(existing: Option<ShipmentState>) -> OnConfirmed {
    match existing {
        None => OnConfirmed::Ship,
        Some(state) => OnConfirmed::Exists(state),
    }
}

/// What a cancellation does to the order's shipment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCancelled {
    /// No shipment yet: record a `CANCELLED` one (no carrier), so a later confirmation of the
    /// order ships nothing.
    Record,
    /// A `CREATED` shipment: the parcel is not handed over (`CANCELLED` with the reason; no
    /// event, the order is already cancelled).
    Cancel,
    /// Already delivered: nothing can be undone (logged; the order service refuses cancels of
    /// shipped orders, so this only follows an admin's delivery it had not heard of yet).
    AlreadyDelivered,
    /// Already cancelled (a second cancellation event): nothing more.
    AlreadyCancelled,
}

/// What to do with an order's shipment when the order is cancelled.
pub fn on_order_cancelled(existing: Option<ShipmentState>) -> OnCancelled {
    match existing {
        None => OnCancelled::Record,
        Some(ShipmentState::Created) => OnCancelled::Cancel,
        Some(ShipmentState::Delivered) => OnCancelled::AlreadyDelivered,
        Some(ShipmentState::Cancelled) => OnCancelled::AlreadyCancelled,
    }
}

/// What an admin's "delivered" does to a shipment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDeliver {
    /// `CREATED` -> `DELIVERED` and `ShipmentDelivered`.
    Deliver,
    /// Already `DELIVERED`: answered as it is, nothing published again (the route is naturally
    /// idempotent).
    AlreadyDelivered,
    /// `CANCELLED`: refused (409), a cancelled order's parcel is never delivered.
    Refuse,
}

/// Whether a shipment in `state` can be marked delivered.
pub fn on_deliver(state: ShipmentState) -> OnDeliver {
    match state {
        ShipmentState::Created => OnDeliver::Deliver,
        ShipmentState::Delivered => OnDeliver::AlreadyDelivered,
        ShipmentState::Cancelled => OnDeliver::Refuse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for state in ShipmentState::ALL {
            assert_eq!(ShipmentState::parse(state.as_str()), Some(state));
            assert_eq!(state.to_string(), state.as_str());
            assert_eq!(
                serde_json::to_value(state).expect("serializes"),
                state.as_str()
            );
        }
        assert_eq!(ShipmentState::parse("created"), None);
        assert_eq!(ShipmentState::parse(""), None);
    }

    #[test]
    fn tracking_numbers_depend_only_on_the_order() {
        let order_id: Uuid = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
            .parse()
            .expect("a uuid");
        assert_eq!(
            tracking_number(order_id),
            "AP0193A1B2C3D47E5F8A9B0C1D2E3F4A5B"
        );
        assert_eq!(tracking_number(order_id), tracking_number(order_id));
        // Two orders of the same millisecond still get different numbers.
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_ne!(tracking_number(a), tracking_number(b));
    }

    #[test]
    fn ships_only_orders_without_a_shipment_row() {
        assert_eq!(on_order_confirmed(None), OnConfirmed::Ship);
        for state in ShipmentState::ALL {
            assert_eq!(on_order_confirmed(Some(state)), OnConfirmed::Exists(state));
        }
    }

    #[test]
    fn cancellation_records_or_cancels_but_never_undoes_a_delivery() {
        assert_eq!(on_order_cancelled(None), OnCancelled::Record);
        assert_eq!(
            on_order_cancelled(Some(ShipmentState::Created)),
            OnCancelled::Cancel
        );
        assert_eq!(
            on_order_cancelled(Some(ShipmentState::Delivered)),
            OnCancelled::AlreadyDelivered
        );
        assert_eq!(
            on_order_cancelled(Some(ShipmentState::Cancelled)),
            OnCancelled::AlreadyCancelled
        );
    }

    #[test]
    fn delivers_created_shipments_once_and_never_cancelled_ones() {
        assert_eq!(on_deliver(ShipmentState::Created), OnDeliver::Deliver);
        assert_eq!(
            on_deliver(ShipmentState::Delivered),
            OnDeliver::AlreadyDelivered
        );
        assert_eq!(on_deliver(ShipmentState::Cancelled), OnDeliver::Refuse);
    }
}
