//! The `Idempotency-Key` layer in axum apps against a real PostgreSQL (and the in-memory store),
//! each test with its own database.

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
    let db = testkit::database(&idempotency::MIGRATOR).await;
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
        .execute(&mut *tx)
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

// ---------------------------------------------------------------------------------------------
// Must show 1: 50 concurrent requests, one key: the handler runs once.

async fn fifty_concurrent_requests_run_once<St: Store + Clone>(store: St, pool: &PgPool) {
    let mut harness = Harness::new(pool);
    let app = orders_app(
        IdempotencyLayer::new(store),
        &harness.app,
        Hold::UntilOpen,
        false,
    );
    let body = r#"{"sku":"a","quantity":1}"#;
    let mut replies = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let app = app.clone();
        replies.spawn(async move { send(&app, post_json("/orders", "order-1", body)).await });
    }
    assert_eq!(harness.entered().await, 0);
    // While the first runs, every other request is turned away with 409 and Retry-After.
    for _ in 0..49 {
        let reply = replies.join_next().await.expect("reply").expect("task");
        assert_eq!(reply.status, StatusCode::CONFLICT, "{reply:?}");
        assert_eq!(reply.code(), "request-in-progress");
        assert_eq!(reply.headers["retry-after"], "1");
    }
    harness.open.send_replace(true);
    let first = replies.join_next().await.expect("reply").expect("task");
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.replayed());

    // Once it finished, every retry gets the replay.
    for _ in 0..50 {
        let app = app.clone();
        replies.spawn(async move { send(&app, post_json("/orders", "order-1", body)).await });
    }
    while let Some(reply) = replies.join_next().await {
        let reply = reply.expect("task");
        assert_eq!(reply.status, StatusCode::CREATED);
        assert!(reply.replayed());
        assert_eq!(reply.body, first.body);
    }
    assert_eq!(harness.calls(), 1, "the handler ran once");
    assert_eq!(count(pool, "SELECT count(*) FROM orders").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_with_one_key_run_the_handler_once() {
    let db = db().await;
    fifty_concurrent_requests_run_once(PostgresStore::new(db.pool.clone()), &db.pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_with_one_key_run_the_handler_once_in_memory() {
    let db = db().await;
    fifty_concurrent_requests_run_once(MemoryStore::new(), &db.pool).await;
}

// ---------------------------------------------------------------------------------------------
// Must show 2: same key, different request: 422.

async fn echo(Path(id): Path<String>, method: Method, body: Bytes) -> Response {
    (
        StatusCode::CREATED,
        format!("{method} {id} {}", String::from_utf8_lossy(&body)),
    )
        .into_response()
}

async fn reuse_is_refused<St: Store + Clone>(store: St) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let app = Router::new()
        .route("/orders/{id}", post(echo).put(echo))
        // Inside the idempotency layer: counts the handler's runs.
        .route_layer(middleware::from_fn(move |request: Request, next: Next| {
            counted.fetch_add(1, Ordering::SeqCst);
            next.run(request)
        }))
        .route_layer(IdempotencyLayer::new(store));
    let original = || {
        Request::builder()
            .method(Method::POST)
            .uri("/orders/1?a=1")
            .header("content-type", "application/json")
            .header("idempotency-key", "k")
    };
    let first = send(
        &app,
        original().body(Body::from(r#"{"x":1}"#)).expect("request"),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED);

    let variants = [
        ("body", original().body(Body::from(r#"{"x":2}"#))),
        (
            "query",
            original()
                .uri("/orders/1?a=2")
                .body(Body::from(r#"{"x":1}"#)),
        ),
        (
            "path",
            original()
                .uri("/orders/2?a=1")
                .body(Body::from(r#"{"x":1}"#)),
        ),
        (
            "method",
            original()
                .method(Method::PUT)
                .body(Body::from(r#"{"x":1}"#)),
        ),
        (
            "content type",
            original()
                .header("content-type", "text/plain")
                .body(Body::from(r#"{"x":1}"#)),
        ),
    ];
    for (what, variant) in variants {
        let mut variant = variant.expect("request");
        if what == "content type" {
            // Replace, not add: one content type.
            variant
                .headers_mut()
                .insert("content-type", HeaderValue::from_static("text/plain"));
        }
        let reply = send(&app, variant).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "different {what}"
        );
        assert_eq!(reply.code(), "idempotency-key-reused", "different {what}");
    }
    let again = send(
        &app,
        original().body(Body::from(r#"{"x":1}"#)).expect("request"),
    )
    .await;
    assert!(again.replayed());
    assert_eq!(again.body, first.body);

    // `?a=&a=b` and `?a=&b=` are different requests.
    let with_query = |uri: &str| {
        Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header("idempotency-key", "q")
            .body(Body::empty())
            .expect("request")
    };
    assert_eq!(
        send(&app, with_query("/orders/1?a=&a=b")).await.status,
        StatusCode::CREATED
    );
    let other = send(&app, with_query("/orders/1?a=&b=")).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(send(&app, with_query("/orders/1?a=&a=b")).await.replayed());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "only the two first requests ran"
    );
}

#[tokio::test]
async fn a_key_reused_for_a_different_request_gets_422() {
    let db = db().await;
    reuse_is_refused(PostgresStore::new(db.pool.clone())).await;
    reuse_is_refused(MemoryStore::new()).await;
}

#[tokio::test]
async fn canonical_json_makes_key_order_and_whitespace_irrelevant() {
    let db = db().await;
    let app = Router::new().route("/orders/{id}", post(echo)).route_layer(
        IdempotencyLayer::new(PostgresStore::new(db.pool.clone())).canonical_json(true),
    );
    let first = send(
        &app,
        post_json("/orders/1", "k", r#"{"a": 1, "b": [true, null]}"#),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let same = send(
        &app,
        post_json("/orders/1", "k", r#"{"b":[true,null],"a":1}"#),
    )
    .await;
    assert!(same.replayed());
    assert_eq!(same.body, first.body);
    let different = send(
        &app,
        post_json("/orders/1", "k", r#"{"b":[null,true],"a":1}"#),
    )
    .await;
    assert_eq!(different.status, StatusCode::UNPROCESSABLE_ENTITY);
}

// ---------------------------------------------------------------------------------------------
// Must show 3: replay byte for byte.

/// Headers as (name, value bytes) in order.
fn header_list(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

async fn raw_response() -> Response {
    let mut response = (
        StatusCode::CREATED,
        [("location", "/orders/42"), ("x-order-id", "42")],
        Body::from(vec![0_u8, 159, 146, 150, b'{', b'}', 255]),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.append(
        "set-cookie",
        HeaderValue::from_static("session=abc; Path=/; HttpOnly"),
    );
    headers.append("set-cookie", HeaderValue::from_static("theme=dark"));
    headers.append(
        "x-opaque",
        HeaderValue::from_bytes(b"caf\xe9").expect("obs-text"),
    );
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

async fn replay_is_byte_identical<St: Store + Clone>(store: St) {
    let app = Router::new()
        .route("/orders", post(raw_response))
        .route_layer(IdempotencyLayer::new(store));
    let first = send(&app, post_json("/orders", "k", "{}")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.replayed());
    for _ in 0..2 {
        let replay = send(&app, post_json("/orders", "k", "{}")).await;
        assert_eq!(replay.status, first.status);
        assert!(replay.replayed());
        let mut replayed = replay.headers.clone();
        replayed.remove(IDEMPOTENT_REPLAYED);
        assert_eq!(header_list(&replayed), header_list(&first.headers));
        assert_eq!(
            replay
                .headers
                .get_all("set-cookie")
                .iter()
                .map(|v| v.to_str().expect("ascii"))
                .collect::<Vec<_>>(),
            ["session=abc; Path=/; HttpOnly", "theme=dark"]
        );
        assert_eq!(replay.headers["location"], "/orders/42");
        assert_eq!(replay.body, first.body);
        assert_eq!(&replay.body[..], &[0_u8, 159, 146, 150, b'{', b'}', 255]);
    }
}

#[tokio::test]
async fn a_replay_is_byte_identical_and_marked() {
    let db = db().await;
    replay_is_byte_identical(PostgresStore::new(db.pool.clone())).await;
    replay_is_byte_identical(MemoryStore::new()).await;
}

// ---------------------------------------------------------------------------------------------
// Must show 4: a request killed mid-handler; a stale owner.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_killed_mid_handler_holds_its_key_only_until_the_lease_expires() {
    let db = db().await;
    let clock = ManualClock::new(Utc::now());
    let store = PostgresStore::new(db.pool.clone()).with_clock(clock.clone());
    let mut harness = Harness::new(&db.pool);
    let app = orders_app(
        IdempotencyLayer::new(store.clone()).lease_ttl(Duration::from_secs(30)),
        &harness.app,
        Hold::Forever,
        false,
    );

    // The first request reaches the handler, and then its process dies: nothing after this
    // point runs for it, not even a destructor.
    let mut doomed = Box::pin(send(&app, post_json("/orders", "k", "{}")));
    tokio::select! {
        reply = &mut doomed => panic!("the first request returned: {reply:?}"),
        n = harness.entered() => assert_eq!(n, 0),
    }
    std::mem::forget(doomed);

    // Before the lease expires: 409.
    clock.advance(Duration::from_secs(29));
    let retry = send(&app, post_json("/orders", "k", "{}")).await;
    assert_eq!(retry.status, StatusCode::CONFLICT);
    assert_eq!(retry.code(), "request-in-progress");
    assert!(retry.headers.contains_key("retry-after"));
    assert_eq!(harness.calls(), 1);

    // After: the retry runs (the key was not held for the whole 24 h retention).
    clock.advance(Duration::from_secs(2));
    let retry = send(&app, post_json("/orders", "k", "{}")).await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.text(), r#"{"attempt":1}"#);
    assert_eq!(harness.calls(), 2);
    let record = store.get(&scoped("k")).await.expect("get").expect("record");
    assert_eq!(record.token, 2, "the retry holds a newer lease");
    assert!(matches!(record.state, RecordState::Completed(ref r) if r.body == retry.body));
    assert!(send(&app, post_json("/orders", "k", "{}")).await.replayed());
}

async fn stale_owner_cannot_overwrite(tx_mode: bool) {
    let db = db().await;
    let clock = ManualClock::new(Utc::now());
    let store = PostgresStore::new(db.pool.clone()).with_clock(clock.clone());
    let mut harness = Harness::new(&db.pool);
    let app = orders_app(
        IdempotencyLayer::new(store.clone()).lease_ttl(Duration::from_secs(30)),
        &harness.app,
        Hold::UntilOpen,
        tx_mode,
    );

    // The first request stalls in its handler past its lease...
    let stale = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_json("/orders", "k", "{}")).await }
    });
    assert_eq!(harness.entered().await, 0);
    clock.advance(Duration::from_secs(31));

    // ... a retry takes the key over and completes ...
    let retry = send(&app, post_json("/orders", "k", "{}")).await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.text(), r#"{"attempt":1}"#);

    // ... and then the stale owner finishes: it cannot store its response.
    harness.open.send_replace(true);
    let stale = stale.await.expect("task");
    if tx_mode {
        // Its transaction was rolled back with its order row.
        assert_eq!(stale.status, StatusCode::CONFLICT);
        assert_eq!(stale.code(), "idempotency-key-superseded");
        assert_eq!(count(&db.pool, "SELECT count(*) FROM orders").await, 1);
    } else {
        // Its effect happened (it had no transaction to undo), so its client gets its
        // response; the stored one stays the retry's.
        assert_eq!(stale.status, StatusCode::CREATED);
        assert_eq!(stale.text(), r#"{"attempt":0}"#);
    }
    let record = store.get(&scoped("k")).await.expect("get").expect("record");
    assert_eq!(record.token, 2);
    match record.state {
        RecordState::Completed(stored) => assert_eq!(stored.body, retry.body),
        other => panic!("not completed: {other:?}"),
    }
    let replay = send(&app, post_json("/orders", "k", "{}")).await;
    assert!(replay.replayed());
    assert_eq!(replay.text(), r#"{"attempt":1}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_owner_cannot_store_its_response() {
    stale_owner_cannot_overwrite(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_owner_in_same_transaction_mode_is_rolled_back() {
    stale_owner_cannot_overwrite(true).await;
}

// ---------------------------------------------------------------------------------------------
// Must show 5: scope isolation.

#[derive(Clone)]
struct Principal(String);

/// A stand-in for an authentication layer: the principal from `x-user`.
async fn authenticate(mut request: Request, next: Next) -> Response {
    if let Some(user) = request
        .headers()
        .get("x-user")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    {
        request.extensions_mut().insert(Principal(user));
    }
    next.run(request).await
}

async fn create_for(
    State(app): State<App>,
    principal: Option<axum::Extension<Principal>>,
    body: String,
) -> Response {
    let n = app.enter(Hold::No).await;
    let who = principal.map(|p| p.0.0).unwrap_or_default();
    sqlx::query("INSERT INTO orders (principal, body, attempt) VALUES ($1, $2, $3)")
        .bind(&who)
        .bind(&body)
        .bind(n as i32)
        .execute(&app.pool)
        .await
        .expect("insert");
    (StatusCode::CREATED, format!("{who}: {body}")).into_response()
}

#[tokio::test]
async fn the_same_key_from_two_principals_is_two_keys() {
    let db = db().await;
    let harness = Harness::new(&db.pool);
    let layer = IdempotencyLayer::new(PostgresStore::new(db.pool.clone()))
        .scope(|parts| parts.extensions.get::<Principal>().map(|p| p.0.clone()));
    let app = Router::new()
        .route("/orders", post(create_for))
        .route_layer(layer)
        .layer(middleware::from_fn(authenticate))
        .with_state(harness.app.clone());
    let as_user = |user: &str, body: &str| {
        let mut request = post_json("/orders", "shared-key", body);
        request
            .headers_mut()
            .insert("x-user", HeaderValue::from_str(user).expect("header"));
        request
    };
    let alice = send(&app, as_user("alice", "alice's order")).await;
    // Bob's request differs, yet is not a reuse of Alice's key: it is his own key.
    let bob = send(&app, as_user("bob", "bob's order")).await;
    assert_eq!(
        (alice.status, bob.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_eq!(harness.calls(), 2);
    assert_eq!(alice.text(), "alice: alice's order");
    assert_eq!(bob.text(), "bob: bob's order");

    // Each replays their own response only.
    let alice_again = send(&app, as_user("alice", "alice's order")).await;
    let bob_again = send(&app, as_user("bob", "bob's order")).await;
    assert!(alice_again.replayed() && bob_again.replayed());
    assert_eq!(alice_again.body, alice.body);
    assert_eq!(bob_again.body, bob.body);
    // Bob sending Alice's exact request under the same key gets neither her response nor 422.
    let bob_as_alice = send(&app, as_user("bob", "alice's order")).await;
    assert_eq!(bob_as_alice.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(harness.calls(), 2);
    assert_eq!(
        count(&db.pool, "SELECT count(DISTINCT principal) FROM orders").await,
        2
    );

    // No principal: refused before anything is stored or run.
    let anonymous = send(&app, post_json("/orders", "shared-key", "x")).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.code(), "scope-missing");
    assert_eq!(harness.calls(), 2);
}

// ---------------------------------------------------------------------------------------------
// Must show 6: same-transaction mode.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_same_transaction_mode_the_business_row_and_the_key_commit_or_roll_back_together() {
    let db = db().await;
    // A store that refuses to record status 299, to fail the response write itself.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_299() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.status = 299 THEN RAISE EXCEPTION 'refusing to store 299'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_299 BEFORE UPDATE ON idempotency_keys
             FOR EACH ROW EXECUTE FUNCTION refuse_299();",
    )
    .execute(&db.pool)
    .await
    .expect("trigger");
    let store = PostgresStore::new(db.pool.clone());
    let harness = Harness::new(&db.pool);
    let app = orders_app(
        IdempotencyLayer::new(store.clone()),
        &harness.app,
        Hold::No,
        true,
    );
    let orders_with = |body: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orders WHERE body = $1")
                .bind(body)
                .fetch_one(&pool)
                .await
                .expect("count")
        }
    };

    // Success: the order row and the stored response are both committed.
    let ok = send(&app, post_json("/orders", "k-ok", "ok")).await;
    assert_eq!(ok.status, StatusCode::CREATED);
    assert_eq!(orders_with("ok").await, 1);
    let record = store
        .get(&scoped("k-ok"))
        .await
        .expect("get")
        .expect("record");
    assert!(matches!(record.state, RecordState::Completed(ref r) if r.body == ok.body));
    assert!(
        send(&app, post_json("/orders", "k-ok", "ok"))
            .await
            .replayed()
    );
    assert_eq!(orders_with("ok").await, 1);

    // A handler error: the order row is rolled back and the key is released, not consumed.
    let failed = send(&app, post_json("/orders", "k-fail", "fail")).await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(orders_with("fail").await, 0);
    let record = store
        .get(&scoped("k-fail"))
        .await
        .expect("get")
        .expect("record");
    assert_eq!(record.state, RecordState::Released);
    // So the client's retry runs (and may even differ: the failed request did not count).
    let calls = harness.calls();
    let retried = send(&app, post_json("/orders", "k-fail", "ok, fixed")).await;
    assert_eq!(retried.status, StatusCode::CREATED);
    assert_eq!(harness.calls(), calls + 1);
    assert_eq!(orders_with("ok, fixed").await, 1);

    // A panic: a 500 problem, rolled back, released.
    let panicked = send(&app, post_json("/orders", "k-panic", "panic")).await;
    assert_eq!(panicked.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(panicked.code(), "handler-panicked");
    assert_eq!(orders_with("panic").await, 0);
    assert_eq!(
        store
            .get(&scoped("k-panic"))
            .await
            .expect("get")
            .expect("record")
            .state,
        RecordState::Released
    );

    // Storing the response fails: the order row goes with it.
    let unstored = send(&app, post_json("/orders", "k-odd", "odd")).await;
    assert_eq!(unstored.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(unstored.code(), "store-unavailable");
    assert_eq!(orders_with("odd").await, 0);
    assert_eq!(
        store
            .get(&scoped("k-odd"))
            .await
            .expect("get")
            .expect("record")
            .state,
        RecordState::Released
    );

    // Only the committed orders exist.
    assert_eq!(count(&db.pool, "SELECT count(*) FROM orders").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_rolls_back_and_frees_its_key_at_once() {
    let db = db().await;
    let store = PostgresStore::new(db.pool.clone());
    let mut harness = Harness::new(&db.pool);
    let app = orders_app(
        IdempotencyLayer::new(store.clone()),
        &harness.app,
        Hold::No,
        true,
    );

    let hung = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_json("/orders", "k", "hang")).await }
    });
    assert_eq!(harness.entered().await, 0);
    hung.abort(); // the client went away: the request's future is dropped
    assert!(hung.await.expect_err("aborted").is_cancelled());

    // The release happens in the background: poll for it.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let record = store.get(&scoped("k")).await.expect("get").expect("record");
        if record.state == RecordState::Released {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "key not released: {record:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(&db.pool, "SELECT count(*) FROM orders").await, 0);
    // A retry runs at once (a fixed one, here).
    let retry = send(&app, post_json("/orders", "k", "ok")).await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM orders").await, 1);
}

// ---------------------------------------------------------------------------------------------
// The rest of the contract.

#[tokio::test]
async fn malformed_keys_are_refused_and_quoted_keys_equal_bare_ones() {
    let db = db().await;
    let harness = Harness::new(&db.pool);
    let app = orders_app(
        IdempotencyLayer::new(PostgresStore::new(db.pool.clone())).key_policy(KeyPolicy::Required),
        &harness.app,
        Hold::No,
        false,
    );
    let missing = send(&app, request(Method::POST, "/orders", None, "{}")).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.code(), "idempotency-key-missing");

    let too_long = "k".repeat(256);
    let with_raw_key = |key: &[u8]| {
        let mut request = request(Method::POST, "/orders", None, "{}");
        request.headers_mut().insert(
            "idempotency-key",
            HeaderValue::from_bytes(key).expect("header value"),
        );
        request
    };
    for key in [
        &b""[..],
        b"\"\"",
        too_long.as_bytes(),
        b"caf\xc3\xa9",
        b"\"a\tb\"",
        b"\"open",
    ] {
        let reply = send(&app, with_raw_key(key)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{key:?}");
        assert_eq!(reply.code(), "idempotency-key-invalid", "{key:?}");
    }
    let mut repeated = post_json("/orders", "a", "{}");
    repeated
        .headers_mut()
        .append("idempotency-key", HeaderValue::from_static("a"));
    let reply = send(&app, repeated).await;
    assert_eq!(reply.code(), "idempotency-key-invalid");
    assert_eq!(harness.calls(), 0, "no malformed request ran");

    let longest = "k".repeat(255);
    assert_eq!(
        send(&app, with_raw_key(longest.as_bytes())).await.status,
        StatusCode::CREATED
    );
    let bare = send(&app, post_json("/orders", "same-key", "{}")).await;
    let quoted = send(&app, post_json("/orders", "\"same-key\"", "{}")).await;
    assert_eq!(bare.status, StatusCode::CREATED);
    assert!(quoted.replayed(), "the quoted form is the same key");
    assert_eq!(harness.calls(), 2);
}

#[tokio::test]
async fn safe_methods_and_requests_without_a_key_pass_through() {
    let db = db().await;
    let harness = Harness::new(&db.pool);
    let app_state = harness.app.clone();
    let app = Router::new()
        .route(
            "/orders",
            get(|State((app, _)): State<(App, Hold)>| async move {
                app.enter(Hold::No).await;
                "list"
            })
            .post(create_order),
        )
        .route_layer(IdempotencyLayer::new(PostgresStore::new(db.pool.clone())))
        .with_state((app_state, Hold::No));
    for _ in 0..2 {
        assert!(
            !send(&app, request(Method::GET, "/orders", Some("k"), ""))
                .await
                .replayed()
        );
        let keyless = send(&app, request(Method::POST, "/orders", None, "{}")).await;
        assert_eq!(keyless.status, StatusCode::CREATED);
        assert!(!keyless.replayed());
    }
    assert_eq!(harness.calls(), 4);
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM idempotency_keys").await,
        0
    );
}

async fn flaky(State(calls): State<Arc<AtomicUsize>>) -> Response {
    match calls.fetch_add(1, Ordering::SeqCst) {
        0 => (StatusCode::SERVICE_UNAVAILABLE, "try again").into_response(),
        n => (StatusCode::CREATED, format!("done on call {n}")).into_response(),
    }
}

#[tokio::test]
async fn server_errors_release_the_key_unless_configured_to_be_stored() {
    let db = db().await;
    let store = PostgresStore::new(db.pool.clone());
    for store_them in [false, true] {
        let calls = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route("/orders", post(flaky))
            .route_layer(
                IdempotencyLayer::new(store.clone()).store_if(if store_them {
                    idempotency::stores_server_errors_too
                } else {
                    idempotency::stores_by_default
                }),
            )
            .with_state(Arc::clone(&calls));
        let key = format!("k-{store_them}");
        let first = send(&app, post_json("/orders", &key, "{}")).await;
        assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
        let second = send(&app, post_json("/orders", &key, "{}")).await;
        if store_them {
            assert!(second.replayed());
            assert_eq!(second.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        } else {
            assert_eq!(second.status, StatusCode::CREATED);
            assert_eq!(second.text(), "done on call 1");
            assert_eq!(calls.load(Ordering::SeqCst), 2);
        }
    }
}

#[derive(serde::Deserialize)]
struct NewOrder {
    quantity: u32,
}

#[tokio::test]
async fn a_request_refused_by_validation_does_not_consume_its_key() {
    let db = db().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let app = Router::new()
        .route(
            "/orders",
            post(move |Json(order): Json<NewOrder>| async move {
                counted.fetch_add(1, Ordering::SeqCst);
                (StatusCode::CREATED, format!("{} units", order.quantity))
            }),
        )
        .route_layer(IdempotencyLayer::new(PostgresStore::new(db.pool.clone())));
    // axum's Json extractor refuses these before the handler runs.
    let syntax = send(&app, post_json("/orders", "k", "{oops")).await;
    assert_eq!(syntax.status, StatusCode::BAD_REQUEST);
    let invalid = send(&app, post_json("/orders", "k", r#"{"quantity": -1}"#)).await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    // The fixed request, under the same key, runs; then it replays.
    let fixed = send(&app, post_json("/orders", "k", r#"{"quantity": 2}"#)).await;
    assert_eq!(
        (fixed.status, fixed.text().as_str()),
        (StatusCode::CREATED, "2 units")
    );
    assert!(
        send(&app, post_json("/orders", "k", r#"{"quantity": 2}"#))
            .await
            .replayed()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bodies_over_the_caps_get_413_or_are_not_stored() {
    let db = db().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let app = Router::new()
        .route(
            "/echo",
            post(move |body: Bytes| async move {
                counted.fetch_add(1, Ordering::SeqCst);
                (StatusCode::CREATED, body)
            }),
        )
        .route_layer(
            IdempotencyLayer::new(PostgresStore::new(db.pool.clone()))
                .max_request_body(1000)
                .max_response_body(100),
        );
    let too_large = send(&app, post_json("/echo", "k1", &"x".repeat(1001))).await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(too_large.code(), "request-body-too-large");
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    // A response over its cap reaches the client whole, but is not stored: a retry runs again.
    let big = "y".repeat(500);
    for run in 1..=2 {
        let reply = send(&app, post_json("/echo", "k2", &big)).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.text(), big);
        assert!(!reply.replayed());
        assert_eq!(calls.load(Ordering::SeqCst), run);
    }
    // One within the cap is stored.
    let small = send(&app, post_json("/echo", "k3", "small")).await;
    assert!(!small.replayed());
    assert!(
        send(&app, post_json("/echo", "k3", "small"))
            .await
            .replayed()
    );
}

#[tokio::test]
async fn with_the_store_down_keyed_requests_fail_closed_or_open() {
    // A pool on a port where nothing listens.
    let down = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/nothing")
        .expect("lazy pool");
    let calls = Arc::new(AtomicUsize::new(0));
    for fail_open in [false, true] {
        let counted = Arc::clone(&calls);
        let app = Router::new()
            .route(
                "/orders",
                post(move || async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    StatusCode::CREATED
                }),
            )
            .route_layer(
                IdempotencyLayer::new(PostgresStore::new(down.clone())).fail_open(fail_open),
            );
        let reply = send(&app, post_json("/orders", "k", "{}")).await;
        if fail_open {
            assert_eq!(reply.status, StatusCode::CREATED);
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        } else {
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(reply.code(), "store-unavailable");
            assert_eq!(reply.headers["retry-after"], "1");
            assert_eq!(calls.load(Ordering::SeqCst), 0, "fail closed: nothing ran");
        }
    }
}

#[tokio::test]
async fn retention_is_checked_on_read_and_expired_keys_are_purged_in_batches() {
    let db = db().await;
    let clock = ManualClock::new(Utc::now());
    let store = PostgresStore::new(db.pool.clone()).with_clock(clock.clone());
    let harness = Harness::new(&db.pool);
    let app = orders_app(
        IdempotencyLayer::new(store.clone()).retention(Duration::from_secs(3600)),
        &harness.app,
        Hold::No,
        false,
    );
    for i in 0..25 {
        let reply = send(&app, post_json("/orders", &format!("k{i}"), "first")).await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }
    clock.advance(59 * MINUTE);
    assert_eq!(
        send(&app, post_json("/orders", "k0", "other")).await.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "within retention the key is taken"
    );
    assert_eq!(store.purge_expired(10).await.expect("purge"), 0);

    clock.advance(2 * MINUTE);
    assert_eq!(
        store.get(&scoped("k1")).await.expect("get"),
        None,
        "expired on read"
    );
    let reused = send(&app, post_json("/orders", "k0", "other")).await;
    assert_eq!(
        reused.status,
        StatusCode::CREATED,
        "past retention the key is new"
    );
    assert!(!reused.replayed());
    // The 24 others are deleted, ten per statement; the renewed key stays.
    assert_eq!(store.purge_expired(10).await.expect("purge"), 24);
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM idempotency_keys").await,
        1
    );

    let memory = MemoryStore::new().with_clock(clock.clone());
    let app = orders_app(
        IdempotencyLayer::new(memory.clone()).retention(Duration::from_secs(3600)),
        &harness.app,
        Hold::No,
        false,
    );
    send(&app, post_json("/orders", "m", "first")).await;
    clock.advance(61 * MINUTE);
    assert_eq!(memory.purge_expired(), 1);
    assert!(memory.is_empty());
}

#[tokio::test]
async fn a_misconfigured_layer_refuses_instead_of_running_unprotected() {
    let layer = IdempotencyLayer::new(MemoryStore::new()).lease_ttl(Duration::ZERO);
    assert!(layer.validate().is_err());
    let app = Router::new()
        .route("/orders", post(|| async { StatusCode::CREATED }))
        .route_layer(layer);
    let reply = send(&app, post_json("/orders", "k", "{}")).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.code(), "idempotency-misconfigured");
}

#[tokio::test]
async fn tx_is_refused_where_no_transactional_layer_provides_it() {
    let app = Router::new()
        .route("/orders", post(|_tx: Tx| async { StatusCode::CREATED }))
        .route_layer(IdempotencyLayer::new(MemoryStore::new()));
    let reply = send(&app, post_json("/orders", "k", "{}")).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.code(), "transaction-unavailable");
}
