//! [`Handler`]: what a service writes; [`HandlerError`] and [`DeadLetterReason`]: how a failure is
//! classified.

use std::fmt;
use std::future::Future;

use sqlx::PgConnection;
use tracing::Instrument as _;

use super::Message;
use crate::Error;

/// Why a message went to the dead-letter topic: the value of its `dlq-reason` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// `decode-failed`: the payload is not a valid event.
    DecodeFailed,
    /// `unknown-event-type`: the event type is not one the handler accepts.
    UnknownEventType,
    /// `missing-event-id`: no event id header, so the inbox cannot deduplicate it.
    MissingEventId,
    /// `rejected`: the handler said the event can never be applied.
    Rejected,
    /// `attempts-exhausted`: retriable failures used up the attempts of [`ConsumerConfig::backoff`](crate::ConsumerConfig::backoff).
    AttemptsExhausted,
}

impl DeadLetterReason {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DecodeFailed => "decode-failed",
            Self::UnknownEventType => "unknown-event-type",
            Self::MissingEventId => "missing-event-id",
            Self::Rejected => "rejected",
            Self::AttemptsExhausted => "attempts-exhausted",
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a [`Handler`] could not apply a message, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    /// `None`: retriable.
    pub(super) dead_letter: Option<DeadLetterReason>,
    pub(super) message: String,
}

impl HandlerError {
    /// A failure that may not happen again (a dependency down, a lock timeout): the runner
    /// rolls back and retries the same message after a backoff.
    pub fn retriable(error: impl fmt::Display) -> Self {
        Self {
            dead_letter: None,
            message: error.to_string(),
        }
    }

    /// A failure that will happen every time: the message is dead-lettered as `rejected`.
    pub fn permanent(error: impl fmt::Display) -> Self {
        Self::dead(DeadLetterReason::Rejected, error)
    }

    /// The payload is not a valid event: dead-lettered as `decode-failed`.
    pub fn decode(error: impl fmt::Display) -> Self {
        Self::dead(DeadLetterReason::DecodeFailed, error)
    }

    /// The event type is not accepted: dead-lettered as `unknown-event-type`.
    pub fn unknown_event_type(event_type: impl fmt::Display) -> Self {
        Self::dead(
            DeadLetterReason::UnknownEventType,
            format!("unknown event type {event_type}"),
        )
    }

    pub(super) fn dead(reason: DeadLetterReason, error: impl fmt::Display) -> Self {
        Self {
            dead_letter: Some(reason),
            message: error.to_string(),
        }
    }

    /// Whether a retry may succeed.
    pub fn is_retriable(&self) -> bool {
        self.dead_letter.is_none()
    }

    /// Where a permanent failure goes: the `dlq-reason`. `None` for a retriable one.
    pub fn dead_letter_reason(&self) -> Option<DeadLetterReason> {
        self.dead_letter
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dead_letter {
            Some(reason) => write!(f, "{reason}: {}", self.message),
            None => write!(f, "retriable: {}", self.message),
        }
    }
}

impl std::error::Error for HandlerError {}

/// Transient database errors (serialization failure, deadlock, lost connection) are retriable;
/// any other (a constraint violation, a missing table) is permanent.
impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        if leases::retry::is_retriable_db_error(&error) {
            Self::retriable(error)
        } else {
            Self::permanent(error)
        }
    }
}

/// Classified by [`Error::is_retriable`].
impl From<Error> for HandlerError {
    fn from(error: Error) -> Self {
        if error.is_retriable() {
            Self::retriable(error)
        } else {
            Self::permanent(error)
        }
    }
}

/// What a service does with its events: decode a message, then apply it inside the runner's
/// transaction.
///
/// ```
/// use inbox::{Handler, HandlerError, Message};
/// use sqlx::PgConnection;
///
/// enum StockEvent {
///     Reserved { sku: String, quantity: i32 },
/// }
///
/// struct Inventory;
///
/// impl Handler for Inventory {
///     type Event = StockEvent;
///
///     fn decode(&self, message: &Message) -> Result<StockEvent, HandlerError> {
///         let payload = message.payload().unwrap_or_default();
///         match message.header_str("event-type") {
///             Some("StockReserved") => {
///                 #[derive(serde::Deserialize)]
///                 struct Reserved {
///                     sku: String,
///                     quantity: i32,
///                 }
///                 let Reserved { sku, quantity } =
///                     serde_json::from_slice(payload).map_err(HandlerError::decode)?;
///                 Ok(StockEvent::Reserved { sku, quantity })
///             }
///             other => Err(HandlerError::unknown_event_type(other.unwrap_or("(none)"))),
///         }
///     }
///
///     async fn handle(
///         &self,
///         conn: &mut PgConnection,
///         event: StockEvent,
///         _message: &Message,
///     ) -> Result<(), HandlerError> {
///         let StockEvent::Reserved { sku, quantity } = event;
///         sqlx::query("UPDATE stock SET reserved = reserved + $2 WHERE sku = $1")
///             .bind(sku)
///             .bind(quantity)
///             .execute(&mut *conn)
///             .await?; // transient errors retry, others dead-letter
///         Ok(())
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// The decoded event.
    type Event: Send;

    /// Decodes a message. Return [`HandlerError::decode`] or
    /// [`HandlerError::unknown_event_type`] for messages that are not valid events: they are
    /// dead-lettered. Called again on every retry.
    ///
    /// # Errors
    ///
    /// A [`HandlerError`] saying whether the message is poison or decoding may succeed later.
    fn decode(&self, message: &Message) -> Result<Self::Event, HandlerError>;

    /// Applies a fresh event on `conn`, inside the transaction that also records it in the
    /// inbox. Do not commit or roll back: the runner does.
    ///
    /// # Errors
    ///
    /// A [`HandlerError`]: retriable ones are retried, permanent ones dead-lettered.
    fn handle(
        &self,
        conn: &mut PgConnection,
        event: Self::Event,
        message: &Message,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Takes the row locks a batch needs, at the start of its transaction (after its inbox rows
    /// are written, before [`handle_batch`](Self::handle_batch)), all at once and in one order.
    ///
    /// Batches of different partitions run at once, each in one transaction held to its end.
    /// When events of different partitions lock the same rows (a product's stock row, say) one
    /// event at a time, two batches can each hold a row the other waits for: PostgreSQL breaks
    /// such a deadlock only after its `deadlock_timeout` (1 s by default) by failing one of
    /// them, which is then retried. Lock those rows here instead, in one statement with a fixed
    /// order (`SELECT ... WHERE id = ANY($1) ORDER BY id FOR UPDATE`), and every batch takes
    /// them in that order; the locks taken later by the events are already held. The default
    /// locks nothing, which suits handlers whose rows are each touched by one partition's
    /// events. Events applied one at a time (isolating a poison event) are not passed here.
    ///
    /// # Errors
    ///
    /// A [`HandlerError`], treated as [`handle_batch`](Self::handle_batch)'s.
    fn lock_batch(
        &self,
        conn: &mut PgConnection,
        events: &[(Self::Event, &Message)],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let _ = (conn, events);
        async { Ok(()) }
    }

    /// Applies the fresh events of a batch, in partition order, on `conn`, inside the
    /// transaction that also records them in the inbox. Do not commit or roll back: the runner
    /// does.
    ///
    /// The default applies each event with [`handle`](Self::handle) in turn, each in its own
    /// `consume` span (so the events it enqueues carry its trace). Override it to apply a batch
    /// with set-based SQL (one statement over `unnest` of the batch's values, say), and keep
    /// [`handle`](Self::handle) for the same effect one event at a time: the runner uses it to
    /// isolate a poison event after a permanent failure of the batch.
    ///
    /// # Errors
    ///
    /// A [`HandlerError`]: after a retriable one the batch is applied again after a backoff;
    /// after a permanent one the runner applies the batch again one event at a time through
    /// [`handle`](Self::handle), and dead-letters only the event that fails.
    fn handle_batch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: Vec<(Self::Event, &'a Message)>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a {
        async move {
            for (event, message) in events {
                self.handle(&mut *conn, event, message)
                    .instrument(message.span())
                    .await?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_handler_errors() {
        assert!(HandlerError::retriable("x").is_retriable());
        assert_eq!(
            HandlerError::decode("x").dead_letter_reason(),
            Some(DeadLetterReason::DecodeFailed)
        );
        assert_eq!(
            HandlerError::unknown_event_type("Foo").to_string(),
            "unknown-event-type: unknown event type Foo"
        );
        assert!(HandlerError::from(sqlx::Error::PoolTimedOut).is_retriable());
        assert_eq!(
            HandlerError::from(sqlx::Error::RowNotFound).dead_letter_reason(),
            Some(DeadLetterReason::Rejected)
        );
    }
}
