//! Where the relay sends events: a [`Publisher`] per broker.

pub(crate) mod kafka;

use std::future::Future;

/// An event as the relay hands it to a publisher.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Event {
    /// Position in the outbox; increases in insert order.
    pub seq: i64,
    /// The event's id.
    pub id: uuid::Uuid,
    /// The destination topic.
    pub topic: String,
    /// The kind of aggregate.
    pub aggregate_type: String,
    /// The aggregate's id (the message key).
    pub aggregate_id: String,
    /// The event's type.
    pub event_type: String,
    /// The message value.
    pub payload: Vec<u8>,
    /// Extra headers, as a JSON object of strings.
    pub headers: sqlx::types::Json<std::collections::BTreeMap<String, String>>,
    /// When the event was enqueued.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// How many times the event has been claimed, this attempt included.
    pub attempts: i32,
}

/// Sends one event to a broker and resolves when the broker has acknowledged it.
///
/// Implementations classify failures: [`PublishError::retriable`] for outcomes that may succeed
/// later (broker unavailable, timeout, unknown outcome), [`PublishError::permanent`] for ones that
/// never will (too large, rejected by the broker as invalid).
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `event`; `Ok` only once the broker acknowledged it.
    fn publish(&self, event: &Event) -> impl Future<Output = Result<(), PublishError>> + Send;

    /// The longest one publish can take before it resolves, when the implementation bounds it:
    /// [`Relay::new`](crate::Relay::new) refuses a lease ttl that does not exceed it, since a lease
    /// that expires while its event is in flight lets another relay publish the event again.
    /// Default: `None` (not known; nothing is checked).
    fn delivery_timeout(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Why a publish failed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PublishError {
    retriable: bool,
    message: String,
}

impl PublishError {
    /// A failure that may not happen again: the relay retries with backoff.
    pub fn retriable(message: impl Into<String>) -> Self {
        Self {
            retriable: true,
            message: message.into(),
        }
    }

    /// A failure that will happen every time: the relay dead-letters the event at once.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            retriable: false,
            message: message.into(),
        }
    }

    /// Whether a retry may succeed.
    pub fn is_retriable(&self) -> bool {
        self.retriable
    }
}
