//! Must show 1 and 2: fifty concurrent requests with one key run once; a key reused for a different request gets 422.

use super::*;

/// Fifty requests with one key behind `layer`; `tx`: the handler writes through its `Tx`.
async fn fifty_concurrent_requests_run_once<St: Store + Clone>(
    layer: IdempotencyLayer<St>,
    tx: bool,
    pool: &PgPool,
) {
    let mut harness = Harness::new(pool);
    let app = orders_app(layer, &harness.app, Hold::UntilOpen, tx);
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
    let store = PostgresStore::new(db.pool.clone());
    fifty_concurrent_requests_run_once(IdempotencyLayer::new(store), false, &db.pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_with_one_key_run_the_handler_once_in_transactional_mode() {
    let db = db().await;
    let store = PostgresStore::new(db.pool.clone());
    fifty_concurrent_requests_run_once(IdempotencyLayer::transactional(store), true, &db.pool)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_with_one_key_run_the_handler_once_in_memory() {
    let db = db().await;
    fifty_concurrent_requests_run_once(IdempotencyLayer::new(MemoryStore::new()), false, &db.pool)
        .await;
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

async fn reuse_is_refused<St: Store + Clone>(layer: IdempotencyLayer<St>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let app = Router::new()
        .route("/orders/{id}", post(echo).put(echo))
        // Inside the idempotency layer: counts the handler's runs.
        .route_layer(middleware::from_fn(move |request: Request, next: Next| {
            counted.fetch_add(1, Ordering::SeqCst);
            next.run(request)
        }))
        .route_layer(layer);
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
    reuse_is_refused(IdempotencyLayer::new(PostgresStore::new(db.pool.clone()))).await;
    let db = super::db().await;
    reuse_is_refused(IdempotencyLayer::transactional(PostgresStore::new(
        db.pool.clone(),
    )))
    .await;
    reuse_is_refused(IdempotencyLayer::new(MemoryStore::new())).await;
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
