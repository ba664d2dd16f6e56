//! The saga's order side: an [`inbox::Handler`] for the inventory and payments topics.

use commerce_events::{Envelope, Topics};
use commerce_platform::events::EventHandler;
use inbox::HandlerError;
use sqlx::PgConnection;

use crate::domain::Input;
use crate::repo::{self, Outcome};

/// Applies inventory and payment events to orders (`order.saga`): `StockReserved` -> `RESERVED`,
/// `StockReservationFailed` -> `FAILED`, `PaymentApproved` -> `PAID`, `PaymentDeclined` ->
/// `CANCELLED`, `StockConfirmed` -> `CONFIRMED` (announced as `OrderConfirmed`),
/// `ShipmentCreated` -> `SHIPPED`, `ShipmentDelivered` -> `COMPLETED` (see
/// [`domain::apply`](crate::domain::apply));
/// other event types are ignored. Run it on an [`inbox::Consumer`], which applies each
/// event once.
///
/// An event for an order this service does not have (another stack's, or one long archived) is
/// logged and skipped: retrying cannot make the order appear.
#[derive(Debug, Clone)]
pub struct OrderSaga {
    topics: Topics,
}

impl OrderSaga {
    /// A handler publishing on `topics`.
    pub fn new(topics: Topics) -> Self {
        Self { topics }
    }
}

impl EventHandler for OrderSaga {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: Envelope,
    ) -> Result<(), HandlerError> {
        let Some((order_id, input)) = Input::from_event(&envelope.event) else {
            return Ok(());
        };
        let (cause, event_type) = (envelope.cause(), input.name());
        let event_id = cause.event_id;
        match repo::transition(conn, &self.topics, cause, order_id, &input).await? {
            Outcome::Applied(transition) => {
                tracing::info!(%order_id, %event_id, event_type, state = %transition.to, "saga: order moved");
            }
            Outcome::Unchanged(state) => {
                tracing::info!(%order_id, %event_id, event_type, %state, "saga: event does not apply to the order's state; ignored");
            }
            Outcome::Missing => {
                tracing::warn!(%order_id, %event_id, event_type, "saga: no such order; event ignored");
            }
        }
        Ok(())
    }

    /// Locks the batch's orders in id order: batches of the inventory, payments and shipments
    /// partitions move the same orders, and would otherwise lock them in different orders and
    /// deadlock.
    async fn lock_batch(
        &self,
        conn: &mut PgConnection,
        envelopes: Vec<&Envelope>,
    ) -> Result<(), HandlerError> {
        let mut orders: Vec<_> = envelopes
            .iter()
            .filter_map(|envelope| Input::from_event(&envelope.event).map(|(id, _)| id))
            .collect();
        orders.sort_unstable();
        orders.dedup();
        repo::lock_all(conn, &orders).await?;
        Ok(())
    }
}
