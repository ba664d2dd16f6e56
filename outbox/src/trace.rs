//! Trace context: the context of the span that enqueues an event is stored with the event's row
//! and sent with it, so the consumers' work joins the producer's trace.

use std::collections::BTreeMap;

use opentelemetry::propagation::Injector;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Adds the current span's trace context to `headers`, written by the process's global
/// OpenTelemetry propagator (the W3C `traceparent` and `tracestate` with
/// `TraceContextPropagator`), unless `headers` already carry a `traceparent`. Without an
/// OpenTelemetry layer in the subscriber, or outside any trace, nothing is added.
pub(crate) fn capture(headers: &mut BTreeMap<String, String>) {
    if headers.contains_key("traceparent") {
        return;
    }
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut Headers(headers));
    });
}

/// An event's headers as a propagator writes them.
struct Headers<'a>(&'a mut BTreeMap<String, String>);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}
