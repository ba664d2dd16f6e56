//! The rest of the contract.

use super::*;

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
    let modes = [
        ("lease", IdempotencyLayer::new(store.clone())),
        ("transactional", IdempotencyLayer::transactional(store)),
    ];
    for ((mode, layer), store_them) in modes
        .into_iter()
        .flat_map(|mode| [(mode.clone(), false), (mode, true)])
    {
        let calls = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route("/orders", post(flaky))
            .route_layer(layer.store_if(if store_them {
                idempotency::stores_server_errors_too
            } else {
                idempotency::stores_by_default
            }))
            .with_state(Arc::clone(&calls));
        let key = format!("k-{mode}-{store_them}");
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
        IdempotencyLayer::new(store.clone())
            .lifetimes(Duration::from_secs(30), Duration::from_secs(3600))
            .expect("valid lifetimes"),
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
        IdempotencyLayer::new(memory.clone())
            .lifetimes(Duration::from_secs(30), Duration::from_secs(3600))
            .expect("valid lifetimes"),
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
async fn a_misconfigured_layer_is_refused_when_it_is_built() {
    for (lease_ttl, retention) in [
        (Duration::ZERO, Duration::from_secs(3600)),
        (Duration::from_secs(30), Duration::ZERO),
        (Duration::from_secs(60), Duration::from_secs(59)),
    ] {
        let refused = IdempotencyLayer::new(MemoryStore::new()).lifetimes(lease_ttl, retention);
        assert!(
            matches!(refused, Err(idempotency::Error::InvalidConfig(_))),
            "{lease_ttl:?} / {retention:?} accepted"
        );
    }
    // The bounds are inclusive: a retention equal to the lease ttl is a working layer.
    let store = MemoryStore::new();
    let app = Router::new()
        .route("/orders", post(|| async { StatusCode::CREATED }))
        .route_layer(
            IdempotencyLayer::new(store)
                .lifetimes(Duration::from_secs(30), Duration::from_secs(30))
                .expect("equal lifetimes are valid"),
        );
    let reply = send(&app, post_json("/orders", "k", "{}")).await;
    assert_eq!(reply.status, StatusCode::CREATED);
}

#[tokio::test]
async fn tx_is_refused_where_no_transactional_layer_provides_it() {
    let db = db().await;
    let app = |layer: IdempotencyLayer<PostgresStore>| {
        Router::new()
            .route("/orders", post(|_tx: Tx| async { StatusCode::CREATED }))
            .route_layer(layer)
    };
    let plain = app(IdempotencyLayer::new(PostgresStore::new(db.pool.clone())));
    let reply = send(&plain, post_json("/orders", "k", "{}")).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.code(), "transaction-unavailable");
    let transactional = app(IdempotencyLayer::transactional(PostgresStore::new(
        db.pool.clone(),
    )));
    let reply = send(&transactional, post_json("/orders", "k", "{}")).await;
    assert_eq!(reply.status, StatusCode::CREATED);
}
