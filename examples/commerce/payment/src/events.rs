//! The saga consumer (`payment.saga`, on the inventory and orders topics): charges reserved
//! orders at most once, refunds cancelled ones.

use commerce_events::{Cause, Envelope, Event, Topics};
use commerce_platform::events::{self, EventHandler};
use inbox::HandlerError;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{self, OnCancelled, OnReserved, Status};
use crate::repo;

/// The consumer's name: its consumer group and its inbox records.
pub const CONSUMER: &str = "payment.saga";

/// The saga handler. Every effect (the payment row, the cancellation record, the events it
/// publishes through the outbox) is written in the consumer's transaction, together with the
/// inbox record.
///
/// - `StockReserved`: unless the order was cancelled or already has a payment, inserts a
///   `PENDING` payment, due for the [charger](crate::charger), which asks the provider outside
///   this transaction.
/// - `OrderCancelled`: records the cancellation (so the order is never charged afterwards); an
///   `APPROVED` payment becomes `REFUNDED` + `PaymentRefunded`, a `PENDING` one
///   `DECLINED("order cancelled")`.
/// - Anything else: ignored.
#[derive(Debug, Clone)]
pub struct Saga {
    topics: Topics,
}

impl Saga {
    /// A handler publishing on `topics`.
    pub fn new(topics: Topics) -> Self {
        Self { topics }
    }

    async fn reserved(
        &self,
        conn: &mut PgConnection,
        cause: Cause,
        order_id: Uuid,
        amount_cents: i64,
        customer_id: &str,
    ) -> Result<(), HandlerError> {
        let event_id = cause.event_id;
        repo::lock_order(conn, order_id).await?;
        let cancelled = repo::is_cancelled(conn, order_id).await?;
        let existing = repo::payment_of(conn, order_id)
            .await?
            .map(|payment| payment.status);
        match domain::on_stock_reserved(cancelled, existing) {
            OnReserved::Cancelled => {
                tracing::info!(%order_id, %event_id, "payment: order already cancelled; not charging");
                return Ok(());
            }
            OnReserved::AlreadyCharged(status) => {
                tracing::info!(%order_id, %event_id, %status, "payment: order already has a payment; not charging again");
                return Ok(());
            }
            OnReserved::Charge => {}
        }
        let payment_id = Uuid::now_v7();
        let traceparent = commerce_platform::telemetry::traceparent();
        if !repo::insert_pending(
            conn,
            order_id,
            payment_id,
            customer_id,
            amount_cents,
            cause,
            traceparent,
        )
        .await?
        {
            tracing::info!(%order_id, %event_id, "payment: order already has a payment; not charging again");
            return Ok(());
        }
        // The charger makes the charge, outside this transaction.
        tracing::info!(%order_id, %event_id, %payment_id, "payment: charge requested");
        Ok(())
    }

    async fn cancelled(
        &self,
        conn: &mut PgConnection,
        cause: Cause,
        order_id: Uuid,
        reason: &str,
    ) -> Result<(), HandlerError> {
        let event_id = cause.event_id;
        repo::lock_order(conn, order_id).await?;
        repo::record_cancellation(conn, order_id, reason).await?;
        let Some(payment) = repo::payment_of(conn, order_id).await? else {
            tracing::info!(%order_id, %event_id, "payment: order cancelled before any charge");
            return Ok(());
        };
        match domain::on_order_cancelled(Some(payment.status)) {
            OnCancelled::Refund => {
                repo::set_status(conn, order_id, Status::Refunded, Some(reason)).await?;
                tracing::info!(%order_id, %event_id, payment_id = %payment.payment_id, "payment: refunded");
                events::publish_caused(
                    conn,
                    &self.topics,
                    cause,
                    [Event::PaymentRefunded {
                        order_id,
                        payment_id: payment.payment_id,
                        customer_id: payment.customer_id.clone(),
                        amount_cents: payment.amount_cents,
                    }],
                )
                .await
            }
            OnCancelled::Abandon => {
                repo::set_status(
                    conn,
                    order_id,
                    Status::Declined,
                    Some(domain::ABANDONED_REASON),
                )
                .await?;
                tracing::info!(%order_id, %event_id, payment_id = %payment.payment_id, "payment: pending payment abandoned");
                Ok(())
            }
            OnCancelled::Nothing => Ok(()),
        }
    }
}

impl EventHandler for Saga {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: Envelope,
    ) -> Result<(), HandlerError> {
        let cause = envelope.cause();
        match envelope.event {
            Event::StockReserved {
                order_id,
                total_cents,
                customer_id,
            } => {
                self.reserved(conn, cause, order_id, total_cents, &customer_id)
                    .await
            }
            Event::OrderCancelled {
                order_id, reason, ..
            } => self.cancelled(conn, cause, order_id, &reason).await,
            _ => Ok(()),
        }
    }

    /// Takes the batch's order locks in one order: batches of the inventory and the orders
    /// partitions charge and refund the same orders, and would otherwise take them in different
    /// orders and deadlock.
    async fn lock_batch(
        &self,
        conn: &mut PgConnection,
        envelopes: Vec<&Envelope>,
    ) -> Result<(), HandlerError> {
        let orders: Vec<Uuid> = envelopes
            .iter()
            .filter_map(|envelope| match envelope.event {
                Event::StockReserved { order_id, .. } | Event::OrderCancelled { order_id, .. } => {
                    Some(order_id)
                }
                _ => None,
            })
            .collect();
        repo::lock_orders(conn, &orders).await?;
        Ok(())
    }
}
