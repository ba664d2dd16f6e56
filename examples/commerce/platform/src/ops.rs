//! Operations: request ids and spans, `/health`, `/ready`, `/metrics`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// The process's Prometheus recorder (installed on first use; shared by services in one process).
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Times one API request for `http_request_duration_seconds`.
async fn record_latency(
    service: &'static str,
    request: Request<axum::body::Body>,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    metrics::histogram!(
        "http_request_duration_seconds",
        "service" => service,
        "route" => route,
        "status" => response.status().as_u16().to_string()
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// A readiness check: `Ok` when the dependency answers, `Err(name: reason)` otherwise.
pub type Check =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// A check that the database answers `SELECT 1`.
pub fn database_check(pool: sqlx::PgPool) -> Check {
    Arc::new(move || {
        let pool = pool.clone();
        Box::pin(async move {
            sqlx::query("SELECT 1")
                .execute(&pool)
                .await
                .map(drop)
                .map_err(|e| format!("database: {e}"))
        })
    })
}

/// How long a consumer may retry one message before its service is not ready: it moves nothing
/// on that partition meanwhile.
pub const STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// A check that a consumer holds at least one partition and is not stuck retrying one message
/// for longer than [`STUCK_AFTER`]: a consumer that has not joined its group, that the group
/// leaves without work, or that cannot get past a message moves nothing, and the service is not
/// ready.
pub fn consumer_check(name: String, consumer: inbox::ConsumerMonitor) -> Check {
    Arc::new(move || {
        let stats = consumer.stats();
        let result = match stats.retrying_for {
            _ if stats.partitions == 0 => Err(format!("consumer {name}: no partition assigned")),
            Some(stuck) if stuck > STUCK_AFTER => Err(format!(
                "consumer {name}: retrying one message for {} s",
                stuck.as_secs()
            )),
            _ => Ok(()),
        };
        Box::pin(std::future::ready(result))
    })
}

/// A check that the relay is publishing: a relay whose last batch published nothing because the
/// broker refused or timed out every event (or whose claim failed) is stalled until a batch
/// publishes again, and the service is not ready.
pub fn relay_check(relay: outbox::RelayMonitor) -> Check {
    Arc::new(move || {
        let result = match relay.stalled() {
            Some(stalled) => Err(format!(
                "relay: not publishing for {} s: {}",
                stalled.since.as_secs(),
                stalled.error
            )),
            None => Ok(()),
        };
        Box::pin(std::future::ready(result))
    })
}

/// A check that the broker answers a metadata request, through one client made here and kept
/// (a client per probe would open new connections, and a thread, on every `/ready`).
///
/// # Errors
///
/// When the client cannot be created from `bootstrap`.
pub fn broker_check(bootstrap: &str) -> anyhow::Result<Check> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let client: Arc<BaseConsumer> = Arc::new(
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()?,
    );
    Ok(Arc::new(move || {
        let client = Arc::clone(&client);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                client
                    .fetch_metadata(None, std::time::Duration::from_secs(2))
                    .map(drop)
                    .map_err(|e| format!("broker: {e}"))
            })
            .await
            .map_err(|e| format!("broker: {e}"))?
        })
    }))
}

/// How long one readiness check may take: a check that does not answer in time fails, so
/// `/ready` always answers.
const CHECK_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

async fn ready(State(checks): State<Arc<Vec<Check>>>) -> impl IntoResponse {
    let mut failures = Vec::new();
    for check in checks.iter() {
        match tokio::time::timeout(CHECK_LIMIT, check()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(e),
            Err(_) => failures.push(format!(
                "a check did not answer within {} s",
                CHECK_LIMIT.as_secs()
            )),
        }
    }
    if failures.is_empty() {
        (StatusCode::OK, "ready".to_owned())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, failures.join("; "))
    }
}

/// Adds `/health`, `/ready` (running `checks`), `/metrics`, request ids (`x-request-id`, made
/// when absent and echoed), a span per request carrying the id and the trace id (see
/// [`telemetry`](crate::telemetry)), and the histogram
/// `http_request_duration_seconds` labelled with the `service`, the matched `route` and the
/// `status` of every API request.
pub fn with_operations(service: &'static str, app: Router, checks: Vec<Check>) -> Router {
    let handle = metrics();
    let app = app.route_layer(axum::middleware::from_fn(
        move |request: Request<axum::body::Body>, next: axum::middleware::Next| {
            record_latency(service, request, next)
        },
    ));
    let ops = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .with_state(Arc::new(checks))
        .route("/metrics", get(move || std::future::ready(handle.render())));
    app.merge(ops)
        .layer(TraceLayer::new_for_http().make_span_with(crate::telemetry::request_span))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}
