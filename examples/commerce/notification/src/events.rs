//! The consumer (`notification.events`, on the orders, payments and shipments topics): one
//! notification per customer-visible event.

use commerce_events::Envelope;
use commerce_platform::events::EventHandler;
use inbox::HandlerError;
use sqlx::PgConnection;

use crate::domain;
use crate::repo;

/// The consumer's name: its consumer group and its inbox records.
pub const CONSUMER: &str = "notification.events";

/// The handler: writes the notification an event makes (see [`domain::notification_for`]) in the
/// consumer's transaction, together with the inbox record, keyed by the event's id so that the
/// same event never makes two (`ON CONFLICT (event_id) DO NOTHING`). Events customers are not
/// told about are ignored. It publishes nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Notifier;

impl EventHandler for Notifier {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: Envelope,
    ) -> Result<(), HandlerError> {
        let Some(notification) = domain::notification_for(&envelope.event) else {
            return Ok(());
        };
        let event_id = envelope.event_id;
        let order_id = notification.order_id;
        let kind = notification.kind;
        if repo::insert(conn, event_id, envelope.occurred_at, &notification).await? {
            tracing::info!(%event_id, %order_id, %kind, customer_id = %notification.customer_id, "notification: created");
        } else {
            tracing::info!(%event_id, %order_id, %kind, "notification: this event already made one");
        }
        Ok(())
    }
}
