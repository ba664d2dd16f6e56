//! Events and how they enter the outbox: inside the caller's own transaction.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::Result;

/// An event to publish, built by the caller and enqueued in its own transaction.
///
/// ```
/// use outbox::NewEvent;
///
/// let event = NewEvent::json("orders", "order", "42", "OrderPlaced", &serde_json::json!({"total": 990}))?
///     .header("tenant", "acme")
///     .dedup_key("place-order:req-7");
/// assert_eq!(event.aggregate_id, "42");
/// # Ok::<(), outbox::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The event's id (UUIDv7: time-ordered), sent as the `event-id` header.
    pub id: Uuid,
    /// The Kafka topic.
    pub topic: String,
    /// The kind of aggregate (`order`, `product`); with the id, it scopes ordering and dedup.
    pub aggregate_type: String,
    /// The aggregate's id: the Kafka key, so one aggregate's events share a partition.
    pub aggregate_id: String,
    /// The event's type (`OrderPlaced`).
    pub event_type: String,
    /// The message value.
    pub payload: Vec<u8>,
    /// Extra Kafka headers. When enqueued, the current span's trace context is added (see
    /// [`enqueue_many`]) unless a `traceparent` is set here.
    pub headers: BTreeMap<String, String>,
    /// When set, a second event with the same key for the same aggregate is not enqueued while
    /// the first is in the table.
    pub dedup_key: Option<String>,
}

impl NewEvent {
    /// An event whose payload is raw bytes.
    pub fn bytes(
        topic: impl Into<String>,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        event_type: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            id: Uuid::now_v7(),
            topic: topic.into(),
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            event_type: event_type.into(),
            payload: payload.into(),
            headers: BTreeMap::new(),
            dedup_key: None,
        }
    }

    /// An event whose payload is `payload` as JSON, with a `content-type: application/json` header.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`](crate::Error::Encode) when `payload` cannot be serialized.
    pub fn json<T: Serialize + ?Sized>(
        topic: impl Into<String>,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        event_type: impl Into<String>,
        payload: &T,
    ) -> Result<Self> {
        let bytes = serde_json::to_vec(payload)?;
        Ok(
            Self::bytes(topic, aggregate_type, aggregate_id, event_type, bytes)
                .header("content-type", "application/json"),
        )
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Sets the dedup key.
    pub fn dedup_key(mut self, key: impl Into<String>) -> Self {
        self.dedup_key = Some(key.into());
        self
    }

    /// Stores the current span's trace context in the headers now, instead of when the event is
    /// enqueued (see [`enqueue_many`]): for events built on behalf of one trace and enqueued in
    /// another span, as a set-based consumer does when it enqueues the events of a whole batch at
    /// once. Nothing changes when the event already has a `traceparent`.
    ///
    /// ```
    /// let caused = tracing::info_span!("consume");
    /// let event = caused.in_scope(|| {
    ///     outbox::NewEvent::bytes("orders", "order", "42", "OrderShipped", b"{}".to_vec())
    ///         .with_trace_context()
    /// });
    /// # let _ = event;
    /// ```
    #[must_use]
    pub fn with_trace_context(mut self) -> Self {
        crate::trace::capture(&mut self.headers);
        self
    }
}

/// Enqueues one event on `conn`, normally the caller's open transaction: the event is published
/// if and only if that transaction commits. Returns `false` when an event with the same dedup key
/// for the same aggregate is already enqueued (nothing is written then).
///
/// ```no_run
/// # async fn place(pool: sqlx::PgPool) -> outbox::Result<()> {
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO orders (id, total) VALUES ($1, $2)").bind(42_i64).bind(990_i64).execute(&mut *tx).await?;
/// let event = outbox::NewEvent::json("orders", "order", "42", "OrderPlaced", &serde_json::json!({"total": 990}))?;
/// outbox::enqueue(&mut tx, &event).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the insert fails (the caller's transaction is
/// then aborted, as with any failed statement).
pub async fn enqueue(conn: &mut PgConnection, event: &NewEvent) -> Result<bool> {
    Ok(enqueue_many(conn, std::slice::from_ref(event)).await? == 1)
}

/// Enqueues many events in one round trip, in slice order. Returns how many were inserted
/// (events whose dedup key is already present are skipped).
///
/// Each event's row also stores the trace context of the current `tracing` span (W3C
/// `traceparent` / `tracestate`, written by OpenTelemetry's global propagator), unless the event
/// sets its own `traceparent` header. The relay sends it with the event, and the `inbox`
/// consumer runner continues it, so one request's work across services is one trace. This needs
/// a `tracing-opentelemetry` layer in the subscriber and a propagator, installed once at start:
/// `opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new())`.
///
/// # Errors
///
/// As [`enqueue`].
pub async fn enqueue_many(conn: &mut PgConnection, events: &[NewEvent]) -> Result<u64> {
    crate::table::events::insert(conn, events).await
}
