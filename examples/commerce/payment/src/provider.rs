//! The fake payment provider: deterministic by customer id, no I/O.
//!
//! | customer id starts with | answer                                              |
//! |-------------------------|-----------------------------------------------------|
//! | `decline`               | [`Outcome::Declined`] (`card declined`)             |
//! | `timeout`               | [`Outcome::NoAnswer`]                               |
//! | `slow`                  | [`Outcome::Approved`], after [`SLOW_ANSWER`]        |
//! | anything else           | [`Outcome::Approved`]                               |
//!
//! An approval carries the provider's id of the charge, `ch_<payment id>`: the same for every
//! request with one payment id, as a real provider's idempotency key makes it.
//!
//! A slow answer lets a reservation expire, or a customer cancel, while the charge is being
//! made: the approval then arrives after the cancellation, which the saga must refund.
//!
//! An amount that is not positive is declined (`invalid amount`) whoever the customer is, as a
//! real provider would refuse it.

use std::time::Duration;

use uuid::Uuid;

/// How long the provider takes to approve a `slow` customer's charge.
pub const SLOW_ANSWER: Duration = Duration::from_secs(3);

/// A charge request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge<'a> {
    /// The payment's id. A real provider would receive it as the request's idempotency key, so
    /// that a charge retried after a crash is not made twice.
    pub payment_id: Uuid,
    /// Who pays.
    pub customer_id: &'a str,
    /// How much, in cents of `currency`.
    pub amount_cents: i64,
    /// The ISO 4217 code of the amount's currency.
    pub currency: &'a str,
}

/// What the provider answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The money was taken; the provider's id of the charge.
    Approved(String),
    /// The charge was refused, with the provider's reason.
    Declined(String),
    /// No answer: the payment stays pending (until the order is cancelled).
    NoAnswer,
}

/// Asks the fake provider to charge `request`: [`answer`], after [`SLOW_ANSWER`] for a `slow`
/// customer.
pub async fn charge(request: &Charge<'_>) -> Outcome {
    if request.customer_id.starts_with("slow") {
        tokio::time::sleep(SLOW_ANSWER).await;
    }
    answer(request)
}

/// The provider's answer to `request`, by the table above.
pub fn answer(request: &Charge<'_>) -> Outcome {
    if request.amount_cents <= 0 {
        Outcome::Declined("invalid amount".to_owned())
    } else if request.customer_id.starts_with("decline") {
        Outcome::Declined("card declined".to_owned())
    } else if request.customer_id.starts_with("timeout") {
        Outcome::NoAnswer
    } else {
        Outcome::Approved(format!("ch_{}", request.payment_id.simple()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAYMENT: Uuid = Uuid::from_u128(7);

    fn answer(customer_id: &str, amount_cents: i64) -> Outcome {
        super::answer(&Charge {
            payment_id: PAYMENT,
            customer_id,
            amount_cents,
            currency: "USD",
        })
    }

    fn approved() -> Outcome {
        Outcome::Approved(format!("ch_{}", PAYMENT.simple()))
    }

    #[test]
    fn answers_by_customer_id() {
        assert_eq!(answer("alice", 1000), approved());
        assert_eq!(
            answer("decline-bob", 1000),
            Outcome::Declined("card declined".into())
        );
        assert_eq!(
            answer("declined", 1),
            Outcome::Declined("card declined".into())
        );
        assert_eq!(answer("timeout-carol", 1000), Outcome::NoAnswer);
        assert_eq!(answer("slow-dora", 1000), approved());
        // Only a prefix counts.
        assert_eq!(answer("carol-timeout", 1000), approved());
        assert_eq!(answer("Decline", 1000), approved());
    }

    #[test]
    fn declines_amounts_that_are_not_positive() {
        assert_eq!(
            answer("alice", 0),
            Outcome::Declined("invalid amount".into())
        );
        assert_eq!(
            answer("timeout-x", -5),
            Outcome::Declined("invalid amount".into())
        );
    }

    #[test]
    fn is_deterministic() {
        for customer in ["alice", "decline-1", "timeout-1"] {
            assert_eq!(answer(customer, 10), answer(customer, 10));
        }
    }
}
