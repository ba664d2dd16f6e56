//! Trace context: the work a consumed event causes continues the trace of the request that
//! enqueued it.

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::Message;

/// The span the runner handles `message` in: `consume`, with the consumer's name, the message's
/// coordinates and its `trace_id` (so JSON logs written while handling it carry the trace id).
/// Its parent is the trace context in the message's headers (the W3C `traceparent` and
/// `tracestate` that `outbox` stores with each event), read by OpenTelemetry's global
/// propagator: spans of every consumer of one request's events share the request's trace. A
/// retry of the message happens in the same span; a redelivery after a crash is a new `consume`
/// span in the same trace. Without a propagator or a `tracing-opentelemetry` layer, it is a
/// plain `tracing` span.
pub(super) fn span(consumer: &str, message: &Message) -> tracing::Span {
    let span = tracing::info_span!(
        "consume",
        consumer,
        topic = message.topic(),
        partition = message.partition(),
        offset = message.offset(),
        trace_id = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Headers(message))
    });
    // Fails only when the span is disabled (no subscriber records it): nothing to continue then.
    let _ = span.set_parent(parent);
    let context = span.context();
    let trace_id = context.span().span_context().trace_id();
    if trace_id != opentelemetry::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    span
}

/// A message's headers as a propagator reads them.
struct Headers<'a>(&'a Message);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.header_str(key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.header_names().collect()
    }
}

/// The span a worker applies `batch` (one partition's messages, in order) in: `consume_batch`,
/// with the consumer's name, the partition, the first offset and the number of messages. Each
/// event's own `consume` span ([`span`]) is opened inside it by [`Handler::handle_batch`]'s
/// default, or by the isolation path for each message.
///
/// [`Handler::handle_batch`]: crate::Handler::handle_batch
pub(super) fn batch_span(consumer: &str, batch: &[Message]) -> tracing::Span {
    let first = &batch[0];
    tracing::info_span!(
        "consume_batch",
        consumer,
        topic = first.topic(),
        partition = first.partition(),
        offset = first.offset(),
        messages = batch.len(),
    )
}
