//! Must show 5 and 6: scope isolation; same-transaction mode.

use super::*;

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
         CREATE TRIGGER refuse_299 BEFORE INSERT OR UPDATE ON idempotency_keys
             FOR EACH ROW EXECUTE FUNCTION refuse_299();",
    )
    .execute(&db.pool)
    .await
    .expect("trigger");
    let store = PostgresStore::new(db.pool.clone());
    let harness = Harness::new(&db.pool);
    let app = orders_app(
        IdempotencyLayer::transactional(store.clone()),
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

    // A handler error: the order row is rolled back with the key, which is not consumed (it
    // was only ever taken inside the transaction).
    let failed = send(&app, post_json("/orders", "k-fail", "fail")).await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(orders_with("fail").await, 0);
    assert_eq!(store.get(&scoped("k-fail")).await.expect("get"), None);
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
    assert_eq!(store.get(&scoped("k-panic")).await.expect("get"), None);

    // Storing the response fails: the order row goes with it.
    let unstored = send(&app, post_json("/orders", "k-odd", "odd")).await;
    assert_eq!(unstored.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(unstored.code(), "store-unavailable");
    assert_eq!(orders_with("odd").await, 0);
    assert_eq!(store.get(&scoped("k-odd")).await.expect("get"), None);

    // Only the committed orders exist.
    assert_eq!(count(&db.pool, "SELECT count(*) FROM orders").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_rolls_back_and_frees_its_key_at_once() {
    let db = db().await;
    let store = PostgresStore::new(db.pool.clone());
    let mut harness = Harness::new(&db.pool);
    let app = orders_app(
        IdempotencyLayer::transactional(store.clone()),
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

    // The dropped transaction rolls back when its connection goes back to the pool: nothing of
    // the key or the order was ever committed.
    assert_eq!(store.get(&scoped("k")).await.expect("get"), None);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM orders").await, 0);
    // A retry runs as soon as the pool has rolled the dropped transaction back (which ends its
    // lock on the key): 409 until then, never a wait for a lease.
    let deadline = tokio::time::Instant::now() + WAIT;
    let retry = loop {
        let retry = send(&app, post_json("/orders", "k", "ok")).await;
        if retry.status != StatusCode::CONFLICT || tokio::time::Instant::now() >= deadline {
            break retry;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(retry.status, StatusCode::CREATED, "{retry:?}");
    assert_eq!(count(&db.pool, "SELECT count(*) FROM orders").await, 1);
}
