//! The `Idempotency-Key` layer in axum apps against a real PostgreSQL (and the in-memory store),
//! each test with its own database.

mod concurrency_and_reuse;
mod contract;
mod replay_and_leases;
mod retention;
mod scope_and_transaction;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use chrono::Utc;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use idempotency::{
    IDEMPOTENT_REPLAYED, IdempotencyKey, IdempotencyLayer, KeyPolicy, MemoryStore, PostgresStore,
    RecordState, ScopedKey, Store, Tx,
};
use sqlx::PgPool;
use testkit::{ManualClock, TestDb};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

const MINUTE: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(30);

/// A database with the crate's tables and a business table, `orders`.
async fn db() -> TestDb {
    let db = testkit::database(&[&idempotency::MIGRATOR]).await;
    sqlx::raw_sql(
        "CREATE TABLE orders (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            principal text NOT NULL DEFAULT '',
            body text NOT NULL,
            attempt int NOT NULL)",
    )
    .execute(&db.pool)
    .await
    .expect("create orders");
    db
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// A response, read whole.
#[derive(Debug, Clone)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    /// The problem code of a problem+json response.
    fn code(&self) -> String {
        assert_eq!(
            self.headers["content-type"], "application/problem+json",
            "not a problem: {self:?}"
        );
        let json: serde_json::Value = serde_json::from_slice(&self.body).expect("problem json");
        assert_eq!(json["status"], self.status.as_u16());
        assert_eq!(
            json["type"],
            format!(
                "{}#{}",
                idempotency::problem::TYPE_BASE,
                json["code"].as_str().expect("code")
            )
        );
        json["code"].as_str().expect("code").to_owned()
    }

    fn replayed(&self) -> bool {
        self.headers
            .get(IDEMPOTENT_REPLAYED)
            .is_some_and(|v| v == "true")
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn send(app: &Router, request: Request) -> Reply {
    let response = app.clone().oneshot(request).await.expect("infallible");
    read(response).await
}

async fn read(response: Response) -> Reply {
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

fn request(method: Method, uri: &str, key: Option<&str>, body: &str) -> Request {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(key) = key {
        builder = builder.header("idempotency-key", key);
    }
    builder.body(Body::from(body.to_owned())).expect("request")
}

fn post_json(uri: &str, key: &str, body: &str) -> Request {
    request(Method::POST, uri, Some(key), body)
}

/// What the test handlers share: how often they ran, a gate the first call may wait at, and a
/// channel that reports each call as it starts.
#[derive(Clone)]
struct App {
    pool: PgPool,
    calls: Arc<AtomicUsize>,
    gate: watch::Receiver<bool>,
    entered: mpsc::UnboundedSender<usize>,
}

struct Harness {
    app: App,
    open: watch::Sender<bool>,
    entered: mpsc::UnboundedReceiver<usize>,
}

impl Harness {
    fn new(pool: &PgPool) -> Self {
        let (open, gate) = watch::channel(false);
        let (entered_tx, entered) = mpsc::unbounded_channel();
        Self {
            app: App {
                pool: pool.clone(),
                calls: Arc::new(AtomicUsize::new(0)),
                gate,
                entered: entered_tx,
            },
            open,
            entered,
        }
    }

    fn calls(&self) -> usize {
        self.app.calls.load(Ordering::SeqCst)
    }

    /// Waits until a handler call starts and returns its number (0-based).
    async fn entered(&mut self) -> usize {
        tokio::time::timeout(WAIT, self.entered.recv())
            .await
            .expect("a handler call started in time")
            .expect("channel open")
    }
}

impl App {
    /// Counts the call, reports it, and waits at the gate if it is the first call and
    /// `first_waits` (or never returns, with `first_hangs`).
    async fn enter(&self, hold_first: Hold) -> usize {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let _ = self.entered.send(n);
        if n == 0 {
            match hold_first {
                Hold::No => {}
                Hold::UntilOpen => {
                    let _ = self.gate.clone().wait_for(|open| *open).await;
                }
                Hold::Forever => std::future::pending::<()>().await,
            }
        }
        n
    }
}

#[derive(Clone, Copy)]
enum Hold {
    No,
    UntilOpen,
    Forever,
}

/// `POST /orders`: inserts an order on the pool (no `Tx`), answers 201 with a `Location`, two
/// cookies and the attempt number.
async fn create_order(State((app, hold)): State<(App, Hold)>, body: String) -> Response {
    let n = app.enter(hold).await;
    sqlx::query("INSERT INTO orders (body, attempt) VALUES ($1, $2)")
        .bind(&body)
        .bind(n as i32)
        .execute(&app.pool)
        .await
        .expect("insert");
    created(n)
}

fn created(n: usize) -> Response {
    let mut response = (
        StatusCode::CREATED,
        [("location", format!("/orders/{n}"))],
        format!("{{\"attempt\":{n}}}"),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.append(
        "set-cookie",
        HeaderValue::from_static("session=abc; HttpOnly"),
    );
    headers.append("set-cookie", HeaderValue::from_static("theme=dark"));
    response
}

/// `POST /orders` in same-transaction mode: the order is inserted through the request's `Tx`.
/// A body containing `fail` answers 500, `panic` panics, `odd` answers 299 (which the test's
/// trigger refuses to store), `hang` never returns.
async fn create_order_tx(
    State((app, hold)): State<(App, Hold)>,
    mut tx: Tx,
    body: String,
) -> Response {
    sqlx::query("INSERT INTO orders (body, attempt) VALUES ($1, $2)")
        .bind(&body)
        .bind(app.calls.load(Ordering::SeqCst) as i32)
        .execute(tx.conn().await.expect("begin"))
        .await
        .expect("insert");
    let n = app.enter(hold).await;
    if body.contains("fail") {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    if body.contains("panic") {
        panic!("handler panicked on purpose");
    }
    if body.contains("odd") {
        return StatusCode::from_u16(299).expect("status").into_response();
    }
    if body.contains("hang") {
        std::future::pending::<()>().await;
    }
    created(n)
}

fn orders_app<St: Store + Clone>(
    layer: IdempotencyLayer<St>,
    app: &App,
    hold: Hold,
    tx: bool,
) -> Router {
    let route = if tx {
        post(create_order_tx)
    } else {
        post(create_order)
    };
    Router::new()
        .route("/orders", route)
        .route_layer(layer)
        .with_state((app.clone(), hold))
}

fn scoped(key: &str) -> ScopedKey {
    ScopedKey {
        scope: String::new(),
        route: "/orders".into(),
        key: IdempotencyKey::parse(key.as_bytes()).expect("key"),
    }
}
