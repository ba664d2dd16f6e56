//! The trace context of the span that enqueues an event is stored with its row and published
//! with it as W3C `traceparent`.

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

use super::*;

#[tokio::test]
async fn the_enqueuing_spans_trace_context_is_stored_and_published() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _subscriber = tracing::subscriber::set_default(subscriber);

    let db = outbox_db().await;
    let topic = testkit::kafka::topic(1).await;
    let span = tracing::info_span!("place order");
    let trace_id = span.context().span().span_context().trace_id().to_string();
    let traced =
        NewEvent::json(&topic, "order", "1", "OrderPlaced", &serde_json::json!({})).expect("json");
    let mut tx = db.pool.begin().await.expect("begin");
    outbox::enqueue(&mut tx, &traced)
        .instrument(span)
        .await
        .expect("enqueue");
    let untraced =
        NewEvent::json(&topic, "order", "2", "OrderPlaced", &serde_json::json!({})).expect("json");
    outbox::enqueue(&mut tx, &untraced).await.expect("enqueue");
    tx.commit().await.expect("commit");

    let stored: String =
        sqlx::query_scalar("SELECT headers->>'traceparent' FROM outbox_events WHERE id = $1")
            .bind(traced.id)
            .fetch_one(&db.pool)
            .await
            .expect("stored headers");
    assert!(stored.contains(&trace_id), "{stored} in trace {trace_id}");

    let relay = Relay::new(db.pool.clone(), kafka().await, RelayConfig::default()).expect("relay");
    drain(&relay, &db.pool).await;
    let messages = testkit::kafka::read_all(&topic).await;
    assert_eq!(messages.len(), 2);
    for message in &messages {
        let traceparent = header(message, "traceparent");
        if event_id(message) == traced.id {
            let traceparent = traceparent.expect("traceparent");
            let parts: Vec<&str> = traceparent.split('-').collect();
            assert_eq!(parts.len(), 4, "{traceparent}");
            assert_eq!(parts[1], trace_id, "the enqueuing span's trace");
        } else {
            assert_eq!(traceparent, None, "enqueued outside any trace");
        }
    }
}
