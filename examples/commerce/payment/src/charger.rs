//! The charger: makes the charges of `PENDING` payments, outside any database transaction.
//!
//! The saga consumer only records a `PENDING` payment, due at once, in the transaction that
//! applies `StockReserved`. The charger claims a batch of due payments with row leases
//! ([`leases()`], over `payments`), asks the provider for all of them at once with no
//! transaction open and no connection held, then settles the batch in one transaction, under
//! the orders' locks and fenced by the leases: the payments' new statuses and the events they
//! publish commit together, or not at all. So a partition of the saga never waits on the
//! provider, and a slow provider holds no connection.
//!
//! What a charge comes to ([`domain::on_charged`]): approved, `APPROVED` and `PaymentApproved`;
//! declined, `DECLINED` and `PaymentDeclined`; no answer, asked again after [`RETRY_AFTER`].
//! An order cancelled while its charge was being made (the saga abandoned the payment) and
//! approved anyway is refunded: `REFUNDED`, `PaymentApproved` then `PaymentRefunded`. A charger
//! that dies mid-charge loses its lease; another asks again with the same payment id, which a
//! real provider takes as the request's idempotency key, even when the payment was abandoned
//! meanwhile (a charge found then is refunded). The fake provider's "no answer" means nothing
//! was taken; a real provider's timeout may hide a charge, so a port to one would have to ask
//! for the charge's status before giving an abandoned payment up.

use std::collections::HashSet;
use std::time::Duration;

use commerce_events::{Event, Topics};
use commerce_platform::events::{enqueue, to_outbox};
use leases::task::Background;
use leases::{Completion, Lease, RowLeases, TableSpec};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{self, Charged, Status};
use crate::provider::{self, Charge, Outcome};
use crate::repo;

/// Payments claimed at once.
pub const BATCH: u32 = 32;
/// How long a claimed payment is the charger's: longer than any provider answer.
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// When a charge the provider did not answer is asked again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);
/// How often the charger looks for due payments when the last look found none.
pub const POLL: Duration = Duration::from_millis(50);

/// A payment to charge, as claimed.
#[derive(Debug, sqlx::FromRow)]
struct Due {
    payment_id: Uuid,
    customer_id: String,
    amount_cents: i64,
    currency: String,
    status: String,
}

/// The row leases over `payments` the charger claims with, for the instance `owner`.
///
/// # Errors
///
/// Never for this table's names; the type says it could.
pub fn leases(owner: impl Into<String>) -> leases::Result<RowLeases> {
    let spec = TableSpec::builder("payments")
        .id_column("order_id")
        .completion(Completion::Keep)
        .build()?;
    Ok(RowLeases::new(&spec, owner.into()))
}

/// Runs the charger until stopped: [`charge_due`] again at once while it finds payments, every
/// [`POLL`] otherwise.
pub fn spawn(pool: PgPool, topics: Topics, leases: RowLeases) -> Background {
    Background::spawn(move |stop| async move {
        loop {
            let charged = match charge_due(&pool, &topics, &leases).await {
                Ok(charged) => charged,
                Err(error) => {
                    tracing::warn!(%error, "payment: charger run failed; trying again");
                    0
                }
            };
            if charged == 0 {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(POLL) => {}
                }
            } else if stop.is_cancelled() {
                return;
            }
        }
    })
}

/// Claims up to [`BATCH`] due payments, asks the provider for all of them at once (no
/// transaction open), then settles the batch in one transaction. Returns how many it claimed.
///
/// # Errors
///
/// When the claim or the settlement fails; the batch's payments are then charged again once
/// their leases expire (the provider takes the payment id as its idempotency key).
pub async fn charge_due(
    pool: &PgPool,
    topics: &Topics,
    leases: &RowLeases,
) -> anyhow::Result<usize> {
    let claimed: Vec<(Lease<Uuid>, Due)> = leases.claim_rows(pool, BATCH, LEASE_TTL).await?;
    let claimed_count = claimed.len();
    if claimed_count == 0 {
        return Ok(0);
    }
    let answers =
        futures::future::join_all(claimed.iter().map(|(lease, due)| ask(lease, due))).await;
    if let Err(error) = settle(pool, topics, leases, &claimed, answers).await {
        // Give the batch back at once rather than when its leases expire: the sooner a charge
        // the provider made is settled (or refunded), the better.
        let held: Vec<Lease<Uuid>> = claimed.into_iter().map(|(lease, _)| lease).collect();
        if let Err(release) = leases.release_many(pool, &held, Duration::ZERO).await {
            tracing::warn!(%release, "payment: a failed batch's leases are left to expire");
        }
        return Err(error);
    }
    Ok(claimed_count)
}

/// The provider's answer for `due`, or `None` when it need not be asked: the payment was
/// abandoned before any attempt to charge it. A payment claimed again (an earlier attempt may
/// have been charged and not settled) is always asked: the provider answers the same payment
/// id with the same charge, which is then refunded if the order was cancelled meanwhile.
async fn ask(lease: &Lease<Uuid>, due: &Due) -> Option<Outcome> {
    if due.status != Status::Pending.as_str() && lease.attempts <= 1 {
        return None;
    }
    Some(
        provider::charge(&Charge {
            payment_id: due.payment_id,
            customer_id: &due.customer_id,
            amount_cents: due.amount_cents,
            currency: &due.currency,
        })
        .await,
    )
}

/// Settles a charged batch in one transaction, under its orders' locks: each payment's status
/// and events by [`domain::on_charged`], finished (or released for another try) through its
/// lease, so a payment whose lease was lost meanwhile is left to its new holder.
async fn settle(
    pool: &PgPool,
    topics: &Topics,
    leases: &RowLeases,
    claimed: &[(Lease<Uuid>, Due)],
    answers: Vec<Option<Outcome>>,
) -> anyhow::Result<()> {
    let ids: Vec<Uuid> = claimed.iter().map(|(lease, _)| lease.id).collect();
    let mut tx = pool.begin().await?;
    repo::lock_orders(&mut tx, &ids).await?;
    let payments = repo::settling(&mut tx, &ids).await?;
    let (mut finished, mut again) = (Vec::new(), Vec::new());
    let mut settled: Vec<(Uuid, Charged)> = Vec::new();
    for ((lease, _), answer) in claimed.iter().zip(&answers) {
        let Some(payment) = payments.get(&lease.id) else {
            finished.push(lease.clone());
            continue;
        };
        match domain::on_charged(payment.status, payment.cancelled, answer.as_ref()) {
            Charged::NoAnswer => again.push(lease.clone()),
            charged => {
                finished.push(lease.clone());
                settled.push((lease.id, charged));
            }
        }
    }
    let held: HashSet<Uuid> = leases
        .complete_many(&mut *tx, &finished)
        .await?
        .into_iter()
        .collect();
    leases.release_many(&mut *tx, &again, RETRY_AFTER).await?;
    let mut outcomes = Vec::new();
    let mut rows = Vec::new();
    for (order_id, charged) in settled.into_iter().filter(|(id, _)| held.contains(id)) {
        let payment = &payments[&order_id];
        let Some(effects) = effects(payment, &charged) else {
            continue;
        };
        tracing::info!(%order_id, payment_id = %payment.payment_id, status = %effects.status, "payment: charge settled");
        outcomes.push((order_id, effects.status, effects.reason, effects.charge));
        rows.extend(effects.events.into_iter().map(|event| {
            let envelope = match payment.cause {
                Some(cause) => event.caused_by(cause),
                None => event.into_envelope(),
            };
            let row = to_outbox(&envelope, topics);
            match &payment.traceparent {
                Some(parent) => row.header("traceparent", parent.clone()),
                None => row,
            }
        }));
    }
    repo::set_outcomes(&mut tx, &outcomes).await?;
    enqueue(&mut tx, &rows).await?;
    tx.commit().await?;
    Ok(())
}

/// What a settled charge writes to its payment and publishes.
struct Effects {
    status: Status,
    reason: Option<String>,
    /// The provider's id of the charge.
    charge: Option<String>,
    events: Vec<Event>,
}

/// What `charged` writes to `payment` and publishes; `None` when nothing changes.
fn effects(payment: &repo::Settling, charged: &Charged) -> Option<Effects> {
    let approved = Event::PaymentApproved {
        order_id: payment.order_id,
        payment_id: payment.payment_id,
        amount_cents: payment.amount_cents,
    };
    Some(match charged {
        Charged::Approved(charge) => Effects {
            status: Status::Approved,
            reason: None,
            charge: Some(charge.clone()),
            events: vec![approved],
        },
        Charged::Declined(reason) => Effects {
            status: Status::Declined,
            reason: Some(reason.clone()),
            charge: None,
            events: vec![Event::PaymentDeclined {
                order_id: payment.order_id,
                reason: reason.clone(),
            }],
        },
        Charged::Refunded(charge) => Effects {
            status: Status::Refunded,
            reason: Some(domain::ABANDONED_REASON.to_owned()),
            charge: Some(charge.clone()),
            events: vec![
                approved,
                Event::PaymentRefunded {
                    order_id: payment.order_id,
                    payment_id: payment.payment_id,
                    customer_id: payment.customer_id.clone(),
                    amount_cents: payment.amount_cents,
                },
            ],
        },
        Charged::NoAnswer | Charged::Settled => return None,
    })
}
