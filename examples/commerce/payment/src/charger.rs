//! The charger: makes the charges of `PENDING` payments, outside any database transaction.
//!
//! The saga consumer only records a `PENDING` payment, due at once, in the transaction that
//! applies `StockReserved`. The charger claims due payments with row leases ([`leases`], over
//! `payments`), asks the provider with no transaction open and no connection held, then
//! settles each in one transaction, under the order's lock and fenced by its lease: the
//! payment's new status and the events it publishes commit together, or not at all. So a
//! partition of the saga never waits on the provider, and a slow provider holds no connection.
//!
//! What a charge comes to ([`domain::on_charged`]): approved, `APPROVED` and `PaymentApproved`;
//! declined, `DECLINED` and `PaymentDeclined`; no answer, asked again after [`RETRY_AFTER`].
//! An order cancelled while its charge was being made (the saga abandoned the payment) and
//! approved anyway is refunded: `REFUNDED`, `PaymentApproved` then `PaymentRefunded`. A charger
//! that dies mid-charge loses its lease; another asks again with the same payment id, which a
//! real provider takes as the request's idempotency key.

use std::time::Duration;

use commerce_events::{Event, Topics};
use commerce_platform::events::{enqueue, to_outbox};
use leases::task::Background;
use leases::{Completion, Lease, RowLeases, Sql, TableSpec};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{self, Charged, Status};
use crate::provider::{self, Charge};
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

/// Claims up to [`BATCH`] due payments, charges them at once and settles each. Returns how many
/// it claimed.
///
/// # Errors
///
/// When the claim fails; a payment whose settlement fails is logged and charged again once its
/// lease expires.
pub async fn charge_due(
    pool: &PgPool,
    topics: &Topics,
    leases: &RowLeases,
) -> anyhow::Result<usize> {
    let claimed: Vec<(Lease<Uuid>, Due)> = leases.claim_rows(pool, BATCH, LEASE_TTL).await?;
    let count = claimed.len();
    let charges = claimed.into_iter().map(|(lease, due)| async move {
        let order_id = lease.id;
        if let Err(error) = charge(pool, topics, leases, lease, due).await {
            tracing::warn!(%order_id, %error, "payment: charge not settled; it is made again later");
        }
    });
    futures::future::join_all(charges).await;
    Ok(count)
}

/// Asks the provider, then settles what it answered.
async fn charge(
    pool: &PgPool,
    topics: &Topics,
    leases: &RowLeases,
    lease: Lease<Uuid>,
    due: Due,
) -> anyhow::Result<()> {
    let order_id = lease.id;
    // A payment abandoned since it became due is not charged.
    let outcome = if due.status == Status::Pending.as_str() {
        Some(
            provider::charge(&Charge {
                payment_id: due.payment_id,
                customer_id: &due.customer_id,
                amount_cents: due.amount_cents,
                currency: &due.currency,
            })
            .await,
        )
    } else {
        None
    };
    let mut tx = pool.begin().await?;
    repo::lock_order(&mut tx, order_id).await?;
    let Some(payment) = repo::payment_of(&mut tx, order_id).await? else {
        return Ok(());
    };
    let cancelled = repo::is_cancelled(&mut tx, order_id).await?;
    let charged = domain::on_charged(payment.status, cancelled, outcome.as_ref());
    let (status, reason, charge, events) = match &charged {
        Charged::Approved(charge) => (
            Status::Approved,
            None,
            Some(charge.clone()),
            vec![approved(&payment)],
        ),
        Charged::Declined(reason) => (
            Status::Declined,
            Some(reason.clone()),
            None,
            vec![Event::PaymentDeclined {
                order_id,
                reason: reason.clone(),
            }],
        ),
        Charged::Refunded(charge) => (
            Status::Refunded,
            Some(domain::ABANDONED_REASON.to_owned()),
            Some(charge.clone()),
            vec![
                approved(&payment),
                Event::PaymentRefunded {
                    order_id,
                    payment_id: payment.payment_id,
                    customer_id: payment.customer_id.clone(),
                    amount_cents: payment.amount_cents,
                },
            ],
        ),
        Charged::NoAnswer => {
            let held = leases.release(&mut *tx, &lease, RETRY_AFTER).await?;
            tx.commit().await?;
            tracing::info!(%order_id, held, "payment: the provider did not answer; asking again later");
            return Ok(());
        }
        Charged::Settled => (payment.status, None, None, Vec::new()),
    };
    let set = Sql::new(
        "status = $1, reason = coalesce($2, reason),
         provider_payment_id = coalesce($3, provider_payment_id), updated_at = now()",
    )
    .bind(status.as_str())
    .bind(reason.clone())
    .bind(charge);
    let held = leases
        .complete_query(&lease, set)?
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if !held {
        tracing::warn!(%order_id, "payment: lease lost while charging; another charger settles it");
        return Ok(());
    }
    let (cause, traceparent) = repo::asked_by(&mut tx, order_id).await?;
    let rows: Vec<outbox::NewEvent> = events
        .into_iter()
        .map(|event| {
            let envelope = match cause {
                Some(cause) => event.caused_by(cause),
                None => event.into_envelope(),
            };
            let row = to_outbox(&envelope, topics);
            match &traceparent {
                Some(parent) => row.header("traceparent", parent.clone()),
                None => row,
            }
        })
        .collect();
    enqueue(&mut tx, &rows).await?;
    tx.commit().await?;
    tracing::info!(%order_id, payment_id = %payment.payment_id, ?charged, %status, "payment: charge settled");
    Ok(())
}

fn approved(payment: &repo::Payment) -> Event {
    Event::PaymentApproved {
        order_id: payment.order_id,
        payment_id: payment.payment_id,
        amount_cents: payment.amount_cents,
    }
}
