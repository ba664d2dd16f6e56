//! Must show 3 and 4: a replay is byte for byte; a killed request and a stale owner.

use super::*;

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

async fn replay_is_byte_identical<St: Store + Clone>(layer: IdempotencyLayer<St>) {
    let app = Router::new()
        .route("/orders", post(raw_response))
        .route_layer(layer);
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
    replay_is_byte_identical(IdempotencyLayer::new(PostgresStore::new(db.pool.clone()))).await;
    let db = super::db().await;
    replay_is_byte_identical(IdempotencyLayer::transactional(PostgresStore::new(
        db.pool.clone(),
    )))
    .await;
    replay_is_byte_identical(IdempotencyLayer::new(MemoryStore::new())).await;
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
        IdempotencyLayer::new(store.clone())
            .lifetimes(Duration::from_secs(30), Duration::from_secs(24 * 3600))
            .expect("valid lifetimes"),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_owner_cannot_store_its_response() {
    let db = db().await;
    let clock = ManualClock::new(Utc::now());
    let store = PostgresStore::new(db.pool.clone()).with_clock(clock.clone());
    let mut harness = Harness::new(&db.pool);
    let app = orders_app(
        IdempotencyLayer::new(store.clone())
            .lifetimes(Duration::from_secs(30), Duration::from_secs(24 * 3600))
            .expect("valid lifetimes"),
        &harness.app,
        Hold::UntilOpen,
        false,
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

    // ... and then the stale owner finishes: it cannot store its response. Its effect happened
    // (it had no transaction to undo), so its client gets its response; the stored one stays
    // the retry's.
    harness.open.send_replace(true);
    let stale = stale.await.expect("task");
    assert_eq!(stale.status, StatusCode::CREATED);
    assert_eq!(stale.text(), r#"{"attempt":0}"#);
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
async fn in_transactional_mode_a_slow_request_keeps_its_key_past_the_lease_ttl() {
    let db = db().await;
    let clock = ManualClock::new(Utc::now());
    let store = PostgresStore::new(db.pool.clone()).with_clock(clock.clone());
    let mut harness = Harness::new(&db.pool);
    let app = orders_app(
        IdempotencyLayer::transactional(store.clone())
            .lifetimes(Duration::from_secs(30), Duration::from_secs(24 * 3600))
            .expect("valid lifetimes"),
        &harness.app,
        Hold::UntilOpen,
        true,
    );

    // The first request stalls in its handler past the lease ttl...
    let slow = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_json("/orders", "k", "{}")).await }
    });
    assert_eq!(harness.entered().await, 0);
    clock.advance(Duration::from_secs(31));

    // ... and still holds the key: its transaction does, whatever the clock says. No second
    // owner can exist, so none has to be fenced.
    let retry = send(&app, post_json("/orders", "k", "{}")).await;
    assert_eq!(retry.status, StatusCode::CONFLICT);
    assert_eq!(retry.code(), "request-in-progress");
    assert_eq!(harness.calls(), 1);

    harness.open.send_replace(true);
    let slow = slow.await.expect("task");
    assert_eq!(slow.status, StatusCode::CREATED);
    let replay = send(&app, post_json("/orders", "k", "{}")).await;
    assert!(replay.replayed());
    assert_eq!(replay.body, slow.body);
    assert_eq!(harness.calls(), 1);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM orders").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_mode_waits_out_a_lease_mode_holder_then_takes_the_key_over_fenced() {
    // A route switched from lease mode to transactional mode while a request held its key.
    let db = db().await;
    let clock = ManualClock::new(Utc::now());
    let store = PostgresStore::new(db.pool.clone()).with_clock(clock.clone());
    let lifetimes = (Duration::from_secs(30), Duration::from_secs(24 * 3600));
    let mut harness = Harness::new(&db.pool);
    let lease_mode = orders_app(
        IdempotencyLayer::new(store.clone())
            .lifetimes(lifetimes.0, lifetimes.1)
            .expect("valid lifetimes"),
        &harness.app,
        Hold::Forever,
        false,
    );
    let transactional = orders_app(
        IdempotencyLayer::transactional(store.clone())
            .lifetimes(lifetimes.0, lifetimes.1)
            .expect("valid lifetimes"),
        &harness.app,
        Hold::No,
        true,
    );
    // The lease-mode request dies in its handler, holding the key's lease.
    let mut doomed = Box::pin(send(&lease_mode, post_json("/orders", "k", "{}")));
    tokio::select! {
        reply = &mut doomed => panic!("the first request returned: {reply:?}"),
        n = harness.entered() => assert_eq!(n, 0),
    }
    std::mem::forget(doomed);

    // While its lease runs: 409, and a different request with the key: 422.
    let busy = send(&transactional, post_json("/orders", "k", "{}")).await;
    assert_eq!(busy.code(), "request-in-progress");
    let other = send(&transactional, post_json("/orders", "k", r#"{"x":1}"#)).await;
    assert_eq!(other.code(), "idempotency-key-reused");

    // Once it expired, the transactional request takes the key over through the lease (a new
    // token, so the dead holder could not store over it) and completes it.
    clock.advance(Duration::from_secs(31));
    let taken = send(&transactional, post_json("/orders", "k", "{}")).await;
    assert_eq!(taken.status, StatusCode::CREATED, "{taken:?}");
    let record = store.get(&scoped("k")).await.expect("get").expect("record");
    assert_eq!(record.token, 2);
    assert!(matches!(record.state, RecordState::Completed(ref r) if r.body == taken.body));
    assert!(
        send(&transactional, post_json("/orders", "k", "{}"))
            .await
            .replayed()
    );
    assert_eq!(harness.calls(), 2);
}
