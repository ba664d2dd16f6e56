//! Payment states and the saga's decisions, without I/O.
//!
//! ```text
//! StockReserved   (no payment, not cancelled) -> PENDING (due for the charger)
//! charger         PENDING -> APPROVED | DECLINED | asked again later (no answer);
//!                 approved after the order was cancelled -> REFUNDED
//! OrderCancelled  APPROVED -> REFUNDED;  PENDING -> DECLINED("order cancelled");  else nothing
//! ```

use serde::Serialize;
use utoipa::ToSchema;

use crate::provider::Outcome;

/// A payment's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Asked for, no answer yet.
    Pending,
    /// Charged.
    Approved,
    /// Refused, or abandoned because the order was cancelled while pending.
    Declined,
    /// Charged, then given back because the order was cancelled.
    Refunded,
}

impl Status {
    /// The name stored in the database and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Approved => "APPROVED",
            Status::Declined => "DECLINED",
            Status::Refunded => "REFUNDED",
        }
    }

    /// The status named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Status::Pending,
            Status::Approved,
            Status::Declined,
            Status::Refunded,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do when an order's stock is reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReserved {
    /// Charge it.
    Charge,
    /// The order was cancelled first: never charge it.
    Cancelled,
    /// The order already has a payment (a second reservation event): never charge twice.
    AlreadyCharged(Status),
}

/// Whether an order whose stock was reserved gets charged: only if it was not cancelled and has
/// no payment yet.
pub fn on_stock_reserved(cancelled: bool, existing: Option<Status>) -> OnReserved {
    match (cancelled, existing) {
        (_, Some(status)) => OnReserved::AlreadyCharged(status),
        (true, None) => OnReserved::Cancelled,
        (false, None) => OnReserved::Charge,
    }
}

/// What a charge comes to, decided under the order's lock once the provider answered (or was
/// not asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charged {
    /// `APPROVED`, `PaymentApproved`; the provider's id of the charge.
    Approved(String),
    /// `DECLINED` with the provider's reason, `PaymentDeclined`.
    Declined(String),
    /// The money was taken after the order was cancelled: `REFUNDED`, `PaymentApproved` then
    /// `PaymentRefunded`; the provider's id of the charge.
    Refunded(String),
    /// No answer: asked again later.
    NoAnswer,
    /// Nothing to do: the payment was abandoned before it was asked for, or the provider took
    /// nothing from an abandoned one.
    Settled,
}

/// What a charge comes to: `status` is the payment's now, `cancelled` whether its order was
/// cancelled, `outcome` the provider's answer (`None`: it was not asked, the payment was no
/// longer pending when claimed).
pub fn on_charged(status: Status, cancelled: bool, outcome: Option<&Outcome>) -> Charged {
    let live = status == Status::Pending && !cancelled;
    match outcome {
        None => Charged::Settled,
        Some(Outcome::Approved(charge)) if live => Charged::Approved(charge.clone()),
        Some(Outcome::Approved(charge)) => Charged::Refunded(charge.clone()),
        Some(Outcome::Declined(reason)) if live => Charged::Declined(reason.clone()),
        Some(Outcome::NoAnswer) if live => Charged::NoAnswer,
        Some(Outcome::Declined(_) | Outcome::NoAnswer) => Charged::Settled,
    }
}

/// What to do with an order's payment when the order is cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCancelled {
    /// It was charged: refund it (`REFUNDED`, `PaymentRefunded`).
    Refund,
    /// It never got an answer: give up on it (`DECLINED`, "order cancelled"; no event, the
    /// order is already cancelled).
    Abandon,
    /// Nothing was taken (no payment, declined, or already refunded).
    Nothing,
}

/// The reason recorded on a pending payment abandoned because its order was cancelled.
pub const ABANDONED_REASON: &str = "order cancelled";

/// What a cancellation does to the order's payment.
pub fn on_order_cancelled(existing: Option<Status>) -> OnCancelled {
    match existing {
        Some(Status::Approved) => OnCancelled::Refund,
        Some(Status::Pending) => OnCancelled::Abandon,
        Some(Status::Declined | Status::Refunded) | None => OnCancelled::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Status; 4] = [
        Status::Pending,
        Status::Approved,
        Status::Declined,
        Status::Refunded,
    ];

    #[test]
    fn statuses_round_trip() {
        for status in ALL {
            assert_eq!(Status::parse(status.as_str()), Some(status));
            assert_eq!(
                serde_json::to_value(status).expect("serializes"),
                status.as_str()
            );
        }
        assert_eq!(Status::parse("approved"), None);
    }

    #[test]
    fn charges_only_fresh_orders_that_are_not_cancelled() {
        assert_eq!(on_stock_reserved(false, None), OnReserved::Charge);
        assert_eq!(on_stock_reserved(true, None), OnReserved::Cancelled);
        for status in ALL {
            assert_eq!(
                on_stock_reserved(false, Some(status)),
                OnReserved::AlreadyCharged(status)
            );
            assert_eq!(
                on_stock_reserved(true, Some(status)),
                OnReserved::AlreadyCharged(status)
            );
        }
    }

    #[test]
    fn a_charge_settles_by_the_answer_and_by_whether_the_order_was_cancelled_meanwhile() {
        let declined = Outcome::Declined("card declined".into());
        let approved = Outcome::Approved("ch_1".into());
        let live = |outcome| on_charged(Status::Pending, false, Some(outcome));
        assert_eq!(live(&approved), Charged::Approved("ch_1".into()));
        assert_eq!(live(&declined), Charged::Declined("card declined".into()));
        assert_eq!(live(&Outcome::NoAnswer), Charged::NoAnswer);
        // Cancelled while the charge was made: the payment was abandoned.
        for (status, cancelled) in [(Status::Declined, true), (Status::Pending, true)] {
            let charged = |outcome| on_charged(status, cancelled, Some(outcome));
            assert_eq!(charged(&approved), Charged::Refunded("ch_1".into()));
            assert_eq!(charged(&declined), Charged::Settled);
            assert_eq!(charged(&Outcome::NoAnswer), Charged::Settled);
        }
        // Not asked: abandoned before its turn.
        assert_eq!(on_charged(Status::Declined, true, None), Charged::Settled);
    }

    #[test]
    fn cancellation_refunds_charges_and_abandons_pending_payments() {
        assert_eq!(
            on_order_cancelled(Some(Status::Approved)),
            OnCancelled::Refund
        );
        assert_eq!(
            on_order_cancelled(Some(Status::Pending)),
            OnCancelled::Abandon
        );
        assert_eq!(
            on_order_cancelled(Some(Status::Declined)),
            OnCancelled::Nothing
        );
        assert_eq!(
            on_order_cancelled(Some(Status::Refunded)),
            OnCancelled::Nothing
        );
        assert_eq!(on_order_cancelled(None), OnCancelled::Nothing);
    }
}
