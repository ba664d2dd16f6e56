//! One trace end to end: the trace context of `POST /api/v1/orders` reaches every consumer of
//! the order's saga through the outbox rows, the Kafka headers and the consumer runners.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt as _;

use super::*;

/// Every span of this process, recorded from the first call on (the stack's services run here).
fn spans() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("e2e")));
        tracing::subscriber::set_global_default(subscriber).expect("the first subscriber");
        exporter
    })
}

/// The consumers whose `consume` spans carry `trace_id`, as the spans' `consumer` attribute.
fn consumers_in(trace_id: &str) -> BTreeSet<String> {
    spans()
        .get_finished_spans()
        .expect("spans")
        .into_iter()
        .filter(|span| {
            span.name == "consume" && span.span_context.trace_id().to_string() == trace_id
        })
        .filter_map(|span| {
            let attribute = |key: &str| {
                span.attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == key)
                    .map(|kv| kv.value.as_str().into_owned())
            };
            // The span's `trace_id` field (what its JSON log lines carry) is the trace's id.
            assert_eq!(attribute("trace_id").as_deref(), Some(trace_id));
            attribute("consumer")
        })
        .collect()
}

#[test]
fn one_orders_saga_is_one_trace_across_every_consumer() {
    spans();
    run(async {
        let stack = stack().await;
        let world = World::new(stack);
        let product = world.product(1500, 3).await;
        let (_, customer) = world.customer("trace");
        let trace_id = Uuid::new_v4().simple().to_string();
        let traceparent = format!(
            "00-{trace_id}-{}-01",
            &Uuid::new_v4().simple().to_string()[..16]
        );
        let (status, order) = world
            .client
            .send(
                world
                    .client
                    .request(Method::POST, "order", "/api/v1/orders", Some(&customer))
                    .header("Idempotency-Key", Uuid::new_v4().to_string())
                    .header("traceparent", traceparent)
                    .json(&json!({"lines": [{"product_id": product, "quantity": 1}]})),
            )
            .await
            .expect("order");
        assert_eq!(status, StatusCode::CREATED, "{order}");
        let id = order["id"].as_str().expect("id");
        let settled = world
            .client
            .wait_settled(&customer, id, FINAL)
            .await
            .expect("settled");
        assert_eq!(settled["state"], "SHIPPED", "{settled}");

        let expected: BTreeSet<String> = [
            "inventory.saga",
            "payment.saga",
            "order.saga",
            "shipping.saga",
            "notification.events",
            "product.stock",
        ]
        .map(str::to_owned)
        .into();
        let deadline = tokio::time::Instant::now() + FINAL;
        loop {
            let seen = consumers_in(&trace_id);
            if seen.is_superset(&expected) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "consumers in the order's trace: {seen:?}, expected {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}
