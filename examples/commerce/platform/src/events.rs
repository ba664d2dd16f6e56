//! Commerce events on the wire, as every service handles them: consumed messages decoded through
//! the events allowlist, envelopes turned into outbox events, and [`EventHandler`], the one thing a
//! service writes to consume events.

use std::future::Future;

use commerce_events::{Cause, DecodeError, Envelope, Event, Topics};
use inbox::{Handler, HandlerError, Message};
use sqlx::PgConnection;
use tracing::Instrument as _;

/// What a service writes to consume commerce events: what one event does, in the consumer's
/// transaction (with the inbox record, the service's own rows and the events it publishes through
/// the outbox). Decoding, the inbox and dead-lettering are the runner's; see
/// [`runtime::consume`](crate::runtime::consume).
pub trait EventHandler: Send + Sync + 'static {
    /// Applies `envelope`. Events the service does not care about are `Ok(())`.
    ///
    /// # Errors
    ///
    /// [`HandlerError::retriable`] to retry the message in place, or a permanent error to
    /// dead-letter it.
    fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: Envelope,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Locks, at the start of a batch, the rows its events share with other partitions'
    /// batches, in one order (see [`Handler::lock_batch`]). The default locks nothing.
    ///
    /// # Errors
    ///
    /// As [`handle`](Self::handle).
    fn lock_batch(
        &self,
        conn: &mut PgConnection,
        envelopes: Vec<&Envelope>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let _ = (conn, envelopes);
        async { Ok(()) }
    }

    /// Applies a batch's fresh events, in partition order, each with its message (for its
    /// `consume` span, [`Message::span`]). The default applies each with
    /// [`handle`](Self::handle) in its span. Override it to apply the batch with set-based SQL,
    /// and keep [`handle`](Self::handle) for one event (the runner uses it to isolate a poison
    /// event); see [`Handler::handle_batch`].
    ///
    /// # Errors
    ///
    /// As [`handle`](Self::handle), for the whole batch.
    fn handle_batch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        batch: Vec<(Envelope, &'a Message)>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a {
        async move {
            for (envelope, message) in batch {
                self.handle(&mut *conn, envelope)
                    .instrument(message.span())
                    .await?;
            }
            Ok(())
        }
    }
}

/// An [`EventHandler`] as the consumer runner's [`Handler`]: decodes through [`decode`].
#[derive(Debug, Clone)]
pub struct Events<H>(pub H);

impl<H: EventHandler> Handler for Events<H> {
    type Event = Envelope;

    fn decode(&self, message: &Message) -> Result<Envelope, HandlerError> {
        decode(message)
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: Envelope,
        _message: &Message,
    ) -> Result<(), HandlerError> {
        self.0.handle(conn, envelope).await
    }

    fn lock_batch(
        &self,
        conn: &mut PgConnection,
        events: &[(Envelope, &Message)],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        self.0
            .lock_batch(conn, events.iter().map(|(envelope, _)| envelope).collect())
    }

    fn handle_batch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: Vec<(Envelope, &'a Message)>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a {
        self.0.handle_batch(conn, events)
    }
}

/// Decodes a message's envelope through the events allowlist: unknown types and malformed
/// payloads become errors the runner dead-letters.
///
/// # Errors
///
/// [`HandlerError::unknown_event_type`] or [`HandlerError::decode`].
pub fn decode(message: &Message) -> Result<Envelope, HandlerError> {
    let payload = message
        .payload()
        .ok_or_else(|| HandlerError::decode("the message has no payload"))?;
    commerce_events::decode(payload).map_err(|error| match error {
        DecodeError::UnknownType(event_type) => HandlerError::unknown_event_type(event_type),
        other => HandlerError::decode(other),
    })
}

/// `envelope` as an outbox event on its producer's topic in `topics`, keyed by its aggregate,
/// with its type and id, and the CloudEvents Kafka binding's headers (`ce_specversion`, `ce_id`,
/// `ce_type` = `commerce.<event type>`, `ce_source` = `/<topic>`, `ce_time`), so a consumer
/// that does not read the envelope can still tell what a record is.
pub fn to_outbox(envelope: &Envelope, topics: &Topics) -> outbox::NewEvent {
    let (aggregate_type, aggregate_id) = envelope.event.aggregate();
    let topic = topics.of(&envelope.event);
    let mut event = outbox::NewEvent::bytes(
        topic,
        aggregate_type,
        aggregate_id,
        envelope.event.event_type(),
        envelope.to_json(),
    )
    .header("content-type", "application/json")
    .header("ce_specversion", "1.0")
    .header("ce_id", envelope.event_id.to_string())
    .header(
        "ce_type",
        format!("commerce.{}", envelope.event.event_type()),
    )
    .header("ce_source", format!("/{topic}"))
    .header("ce_time", envelope.occurred_at.to_rfc3339());
    event.id = envelope.event_id;
    event
}

/// Enqueues `events`, each in a fresh envelope on its producer's topic, in the outbox on the
/// connection's transaction, in order (at most 500 rows per statement): they are published if and
/// only if that transaction commits. A consumer passes the event it is applying as `cause`
/// ([`Envelope::cause`]), so what it publishes joins that event's chain; a request or a job
/// passes `None`, and each event starts a chain.
///
/// # Errors
///
/// The [`outbox::Error`] of a failed statement (in a handler, turn it into a
/// [`HandlerError`] with [`handler_error`]).
pub async fn publish(
    conn: &mut PgConnection,
    topics: &Topics,
    cause: Option<Cause>,
    events: impl IntoIterator<Item = Event>,
) -> Result<(), outbox::Error> {
    let envelopes: Vec<Envelope> = events
        .into_iter()
        .map(|event| match cause {
            Some(cause) => event.caused_by(cause),
            None => event.into_envelope(),
        })
        .collect();
    let rows: Vec<outbox::NewEvent> = envelopes.iter().map(|e| to_outbox(e, topics)).collect();
    enqueue(conn, &rows).await
}

/// Enqueues outbox events in order, at most 500 rows per statement, on the connection's
/// transaction (what [`publish`] does once its envelopes are built; a set-based handler builds
/// each with [`to_outbox`] in the span of the event that caused it, with
/// [`outbox::NewEvent::with_trace_context`]).
///
/// # Errors
///
/// As [`publish`].
pub async fn enqueue(
    conn: &mut PgConnection,
    rows: &[outbox::NewEvent],
) -> Result<(), outbox::Error> {
    const CHUNK: usize = 500;
    for chunk in rows.chunks(CHUNK) {
        outbox::enqueue_many(conn, chunk).await?;
    }
    Ok(())
}

/// [`publish`] of what a handler publishes while applying the event `cause`, a failure turned
/// into the handler's error ([`handler_error`]).
///
/// # Errors
///
/// As [`handler_error`].
pub async fn publish_caused(
    conn: &mut PgConnection,
    topics: &Topics,
    cause: Cause,
    events: impl IntoIterator<Item = Event>,
) -> Result<(), HandlerError> {
    publish(conn, topics, Some(cause), events)
        .await
        .map_err(handler_error)
}

/// A failed [`publish`] as a handler's error: retried when transient, dead-lettered otherwise.
pub fn handler_error(error: outbox::Error) -> HandlerError {
    if error.is_retriable() {
        HandlerError::retriable(error)
    } else {
        HandlerError::permanent(error)
    }
}

#[cfg(test)]
mod tests {
    use commerce_events::Event;
    use uuid::Uuid;

    use super::*;

    #[test]
    fn an_envelope_becomes_an_outbox_event_on_its_topic() {
        let envelope = Event::StockConfirmed {
            order_id: Uuid::now_v7(),
        }
        .into_envelope();
        let event = to_outbox(&envelope, &Topics::new("t"));
        assert_eq!(event.id, envelope.event_id);
        assert_eq!(event.topic, "t.inventory");
        assert_eq!(event.event_type, "StockConfirmed");
        let header = |name: &str| event.headers.get(name).map(String::as_str);
        assert_eq!(header("ce_specversion"), Some("1.0"));
        assert_eq!(
            header("ce_id"),
            Some(envelope.event_id.to_string().as_str())
        );
        assert_eq!(header("ce_type"), Some("commerce.StockConfirmed"));
        assert_eq!(header("ce_source"), Some("/t.inventory"));
        let time = header("ce_time").expect("ce_time");
        assert_eq!(
            chrono::DateTime::parse_from_rfc3339(time).expect("RFC 3339"),
            envelope.occurred_at
        );
        let message = Message::new("t.inventory", 0, 0, None, Some(envelope.to_json()), vec![]);
        assert_eq!(decode(&message).expect("decodes"), envelope);
    }
}
