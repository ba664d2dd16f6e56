//! Telemetry: JSON logs, and one trace per request across every service (W3C Trace Context).
//!
//! A request's trace context comes from its `traceparent` header (or starts here); `outbox`
//! stores it with every event the request enqueues, and the `inbox` consumer runner
//! continues it in each consumer, so the spans and logs of one order's saga in all six services
//! carry one `trace_id`. Spans get OpenTelemetry ids from an SDK tracer provider that exports
//! nothing: the trace lives in the logs (and in any OpenTelemetry layer a deployment adds).

use axum::http::{HeaderMap, Request};
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Installs the W3C trace-context propagator and the process's subscriber: JSON logs to stdout
/// (each line carries the fields of its span, `trace_id` among them), filtered by `RUST_LOG`
/// (default `default_level`, e.g. `info`), and an OpenTelemetry layer that gives every `info`
/// span its trace and span ids whatever the log level. Safe to call more than once (the first
/// subscriber stays).
pub fn init(default_level: &str) {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_filter(filter);
    let tracer = SdkTracerProvider::builder().build().tracer("commerce");
    let traces = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(LevelFilter::INFO);
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init();
}

/// The span of one HTTP request: method, uri, request id and `trace_id`, continuing the trace
/// context of the request's `traceparent` / `tracestate` headers when it has them.
pub(crate) fn request_span<B>(request: &Request<B>) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        uri = %request.uri(),
        request_id,
        trace_id = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Headers(request.headers()))
    });
    // Fails only when the span is disabled: nothing to continue then.
    let _ = span.set_parent(parent);
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    span
}

/// The current span's trace context as a W3C `traceparent`, written by the global propagator;
/// `None` outside a trace. For work that is recorded now and done later, outside the span (a
/// charge made by a job): its events then carry it, and stay in the trace.
pub fn traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    let mut fields = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut fields);
    });
    fields.remove("traceparent")
}

/// Request headers as a propagator reads them.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}
