//! The saga consumer (`shipping.saga`, on the orders topic): one shipment per confirmed order,
//! cancelled if the order is cancelled before delivery.

use commerce_events::{Cause, Envelope, Event, Topics};
use commerce_platform::events::{self, EventHandler};
use inbox::HandlerError;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{self, OnCancelled, OnConfirmed};
use crate::repo::{self, NewShipment};

/// The consumer's name: its consumer group (`<prefix>.shipping.saga`) and its inbox records.
pub const CONSUMER: &str = "shipping.saga";

/// The saga handler. Every effect (the shipment row and the event it publishes through the
/// outbox) is written in the consumer's transaction, together with the inbox record.
///
/// - `OrderConfirmed`: unless the order already has a shipment row (a second confirmation, or a
///   cancellation seen first), inserts a `CREATED` shipment handed to the fake carrier
///   ([`domain::CARRIER`], [`domain::tracking_number`]) and publishes `ShipmentCreated`.
/// - `OrderCancelled`: a `CREATED` shipment becomes `CANCELLED` with the reason; with no
///   shipment yet, a `CANCELLED` row (no carrier) is recorded so the order is never shipped
///   afterwards; a `DELIVERED` one is left as it is (logged). Nothing is published: the order
///   is already cancelled.
/// - Anything else: ignored.
///
/// Both handlers take a per-order advisory lock first, so a confirmation and a cancellation of
/// the same order handled at the same time are serialized, and read the shipment `FOR UPDATE`,
/// so a cancellation and an admin's delivery are too.
#[derive(Debug, Clone)]
pub struct Saga {
    topics: Topics,
}

impl Saga {
    /// A handler publishing on `topics`.
    pub fn new(topics: Topics) -> Self {
        Self { topics }
    }

    async fn confirmed(
        &self,
        conn: &mut PgConnection,
        cause: Cause,
        order_id: Uuid,
        customer_id: &str,
    ) -> Result<(), HandlerError> {
        let event_id = cause.event_id;
        repo::lock_order(conn, order_id).await?;
        let existing = repo::lock_shipment(conn, order_id)
            .await?
            .map(|shipment| shipment.state);
        if let OnConfirmed::Exists(state) = domain::on_order_confirmed(existing) {
            tracing::info!(%order_id, %event_id, %state, "shipping: order already has a shipment row; not shipping (again)");
            return Ok(());
        }
        let new = NewShipment {
            order_id,
            shipment_id: Uuid::now_v7(),
            customer_id,
        };
        let tracking_number = domain::tracking_number(order_id);
        let Some(shipment) =
            repo::insert_created(conn, new, domain::CARRIER, &tracking_number).await?
        else {
            tracing::info!(%order_id, %event_id, "shipping: order already has a shipment row; not shipping (again)");
            return Ok(());
        };
        tracing::info!(%order_id, %event_id, shipment_id = %shipment.shipment_id, %tracking_number, "shipping: shipment created");
        events::publish_caused(
            conn,
            &self.topics,
            cause,
            [Event::ShipmentCreated {
                order_id,
                shipment_id: shipment.shipment_id,
                customer_id: shipment.customer_id,
                carrier: domain::CARRIER.to_owned(),
                tracking_number,
            }],
        )
        .await
    }

    async fn cancelled(
        &self,
        conn: &mut PgConnection,
        cause: Cause,
        order_id: Uuid,
        customer_id: &str,
        reason: &str,
    ) -> Result<(), HandlerError> {
        let event_id = cause.event_id;
        repo::lock_order(conn, order_id).await?;
        let existing = repo::lock_shipment(conn, order_id).await?;
        match domain::on_order_cancelled(existing.as_ref().map(|shipment| shipment.state)) {
            OnCancelled::Record => {
                let new = NewShipment {
                    order_id,
                    shipment_id: Uuid::now_v7(),
                    customer_id,
                };
                repo::insert_cancelled(conn, new, reason).await?;
                tracing::info!(%order_id, %event_id, "shipping: order cancelled before any shipment; it will not be shipped");
            }
            OnCancelled::Cancel => {
                repo::cancel(conn, order_id, reason).await?;
                tracing::info!(%order_id, %event_id, reason, "shipping: shipment cancelled");
            }
            OnCancelled::AlreadyDelivered => {
                tracing::warn!(%order_id, %event_id, reason, "shipping: order cancelled after its shipment was delivered; leaving it DELIVERED");
            }
            OnCancelled::AlreadyCancelled => {
                tracing::info!(%order_id, %event_id, "shipping: shipment already cancelled");
            }
        }
        Ok(())
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
            Event::OrderConfirmed {
                order_id,
                customer_id,
            } => self.confirmed(conn, cause, order_id, &customer_id).await,
            Event::OrderCancelled {
                order_id,
                customer_id,
                reason,
            } => {
                self.cancelled(conn, cause, order_id, &customer_id, &reason)
                    .await
            }
            _ => Ok(()),
        }
    }
}
