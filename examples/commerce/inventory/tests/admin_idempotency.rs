//! `POST /api/v1/stock/{product_id}/add` under its required `Idempotency-Key`, against
//! PostgreSQL: concurrent and sequential retries add once and answer the first answer, a reused
//! key is refused, a missing key is refused, and a refused token never stores a key.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use commerce_events::Event;
use commerce_inventory::{AppState, app};
use commerce_platform::Authenticator;
use commerce_platform::testing;
use common::*;
use serde_json::{Value, json};
use uuid::Uuid;

fn token(sub: &str, roles: &[&str]) -> String {
    testing::token(&auth(), sub, roles)
}

#[derive(Debug, Clone)]
struct Reply {
    status: StatusCode,
    content_type: Option<String>,
    replayed: Option<String>,
    body: Value,
}

impl Reply {
    fn assert_problem(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/problem+json"),
            "{}",
            self.body
        );
        assert_eq!(self.body["code"], code, "{}", self.body);
    }
}

/// `POST /api/v1/stock/{product}/add` with `body`, as `token`, under `key` (none when `None`).
async fn add(
    state: &AppState,
    product: Uuid,
    token: &str,
    key: Option<&str>,
    body: &Value,
) -> Reply {
    let uri = format!("/api/v1/stock/{product}/add");
    let mut request = testing::request(Method::POST, &uri, Some(token))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let request = request.body(Body::from(body.to_string())).expect("request");
    let reply = testing::send(app(state.clone()), request).await;
    Reply {
        status: reply.status,
        content_type: reply.content_type().map(str::to_owned),
        replayed: reply.header("idempotent-replayed").map(str::to_owned),
        body: reply.body,
    }
}

async fn stored_keys(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(pool)
        .await
        .expect("count keys")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_adds_with_one_key_add_once() {
    let db = db().await;
    let state = state(&db.pool);
    let admin = token("admin-1", &["admin"]);
    let product = Uuid::now_v7();
    seed(&db.pool, product, 10).await;
    let body = json!({"quantity": 7});

    let calls: Vec<_> = (0..10)
        .map(|_| {
            let (state, admin, body) = (state.clone(), admin.clone(), body.clone());
            tokio::spawn(
                async move { add(&state, product, &admin, Some("restock-1"), &body).await },
            )
        })
        .collect();
    let mut replies = Vec::new();
    for call in calls {
        replies.push(call.await.expect("the call ran"));
    }

    let expected =
        json!({"product_id": product, "total": 17, "reserved": 0, "available": 17, "version": 1});
    let succeeded: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .collect();
    assert!(!succeeded.is_empty(), "{replies:?}");
    for reply in &succeeded {
        assert_eq!(reply.body, expected, "every success is the first answer");
    }
    for reply in replies.iter().filter(|r| r.status != StatusCode::OK) {
        // A duplicate that arrived while the first was running.
        reply.assert_problem(StatusCode::CONFLICT, "request-in-progress");
    }
    assert_eq!(
        succeeded.iter().filter(|r| r.replayed.is_none()).count(),
        1,
        "one execution, the other successes replayed: {replies:?}"
    );

    // Added once: one movement, one event.
    assert_eq!(level(&db.pool, product).await, (17, 0, 1));
    assert_eq!(
        movements(&db.pool, product).await,
        vec![("add".into(), None, 7, 0)]
    );
    assert_eq!(
        outbox_of(&db.pool, "StockLevelChanged").await,
        vec![Event::StockLevelChanged {
            product_id: product,
            total: 17,
            reserved: 0,
            available: 17,
            version: 1,
        }]
    );

    // A later retry gets the stored answer, marked as replayed, and adds nothing.
    let retry = add(&state, product, &admin, Some("restock-1"), &body).await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.body);
    assert_eq!(retry.replayed.as_deref(), Some("true"));
    assert_eq!(retry.body, expected);
    assert_eq!(level(&db.pool, product).await, (17, 0, 1));
    assert_eq!(count(&db.pool, "movements").await, 1);
    assert_eq!(count(&db.pool, "outbox_events").await, 1);
    assert_eq!(stored_keys(&db.pool).await, 1);

    // A new key is a new restock.
    let again = add(&state, product, &admin, Some("restock-2"), &body).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.replayed, None);
    assert_eq!(again.body["total"], 24);
    assert_eq!(level(&db.pool, product).await, (24, 0, 2));
}

#[tokio::test]
async fn a_key_reused_for_another_request_is_refused() {
    let db = db().await;
    let state = state(&db.pool);
    let admin = token("admin-1", &["admin"]);
    let product = Uuid::now_v7();

    let first = add(&state, product, &admin, Some("k"), &json!({"quantity": 3})).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.body["total"], 3);

    // Another quantity, or another product, under the same key.
    add(&state, product, &admin, Some("k"), &json!({"quantity": 4}))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused");
    let other = Uuid::now_v7();
    add(&state, other, &admin, Some("k"), &json!({"quantity": 3}))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused");
    assert_eq!(level(&db.pool, product).await, (3, 0, 1));
    assert_eq!(count(&db.pool, "stock").await, 1);
    assert_eq!(count(&db.pool, "movements").await, 1);
    assert_eq!(count(&db.pool, "outbox_events").await, 1);

    // Keys are per admin: another admin's "k" is theirs.
    let other_admin = token("admin-2", &["admin"]);
    let theirs = add(
        &state,
        product,
        &other_admin,
        Some("k"),
        &json!({"quantity": 4}),
    )
    .await;
    assert_eq!(theirs.status, StatusCode::OK, "{}", theirs.body);
    assert_eq!(theirs.replayed, None);
    assert_eq!(theirs.body["total"], 7);
}

#[tokio::test]
async fn a_missing_key_is_refused_and_adds_nothing() {
    let db = db().await;
    let state = state(&db.pool);
    let admin = token("admin-1", &["admin"]);
    let product = Uuid::now_v7();
    seed(&db.pool, product, 5).await;

    add(&state, product, &admin, None, &json!({"quantity": 3}))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "idempotency-key-missing");
    assert_eq!(level(&db.pool, product).await, (5, 0, 0));
    assert_eq!(count(&db.pool, "movements").await, 0);
    assert_eq!(count(&db.pool, "outbox_events").await, 0);
    assert_eq!(stored_keys(&db.pool).await, 0);
}

#[tokio::test]
async fn a_refused_token_stores_no_key() {
    let db = db().await;
    let state = state(&db.pool);
    let product = Uuid::now_v7();
    seed(&db.pool, product, 5).await;
    let body = json!({"quantity": 3});

    let customer = token("customer-1", &["customer"]);
    add(&state, product, &customer, Some("k"), &body)
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    let forged = testing::token(
        &Authenticator::new(b"another secret", "k"),
        "admin-1",
        &["admin"],
    );
    add(&state, product, &forged, Some("k"), &body)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    // Checked before the key, too.
    add(&state, product, &customer, None, &body)
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(stored_keys(&db.pool).await, 0);
    assert_eq!(level(&db.pool, product).await, (5, 0, 0));
    assert_eq!(count(&db.pool, "movements").await, 0);

    // The key is still free for the admin it belongs to.
    let admin = token("admin-1", &["admin"]);
    let reply = add(&state, product, &admin, Some("k"), &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.replayed, None);
    assert_eq!(reply.body["total"], 8);
}

#[tokio::test]
async fn a_refused_add_does_not_consume_its_key() {
    let db = db().await;
    let state = state(&db.pool);
    let admin = token("admin-1", &["admin"]);
    let product = Uuid::now_v7();

    // Invalid: refused before it took effect, so the client can fix it under the same key.
    add(&state, product, &admin, Some("k"), &json!({"quantity": 0}))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "bad-request");
    assert_eq!(count(&db.pool, "stock").await, 0);
    let fixed = add(&state, product, &admin, Some("k"), &json!({"quantity": 2})).await;
    assert_eq!(fixed.status, StatusCode::OK, "{}", fixed.body);
    assert_eq!(fixed.body["total"], 2);

    // A conflict (the total would overflow) is an answer: stored and replayed, nothing added.
    sqlx::query("UPDATE stock SET total = 2147483000 WHERE product_id = $1")
        .bind(product)
        .execute(&db.pool)
        .await
        .expect("raise the total");
    let body = json!({"quantity": 1_000});
    add(&state, product, &admin, Some("big"), &body)
        .await
        .assert_problem(StatusCode::CONFLICT, "conflict");
    let retry = add(&state, product, &admin, Some("big"), &body).await;
    retry.assert_problem(StatusCode::CONFLICT, "conflict");
    assert_eq!(retry.replayed.as_deref(), Some("true"));
    assert_eq!(level(&db.pool, product).await, (2_147_483_000, 0, 1));
    assert_eq!(count(&db.pool, "movements").await, 1);
}

#[tokio::test]
async fn the_openapi_document_declares_the_key() {
    let db = db().await;
    let request = Request::get("/openapi.json")
        .body(Body::empty())
        .expect("request");
    let doc = testing::send(app(state(&db.pool)), request).await.body;
    let add = &doc["paths"]["/api/v1/stock/{product_id}/add"]["post"];
    let key = add["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == "Idempotency-Key")
        .expect("an Idempotency-Key parameter");
    assert_eq!(key["in"], "header");
    assert_eq!(key["required"], true);
    for status in ["400", "409", "422"] {
        assert_eq!(
            add["responses"][status]["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem",
            "{status}"
        );
    }
    // The other writes are idempotent by nature and take no key.
    let adjust = &doc["paths"]["/api/v1/stock/{product_id}"]["put"];
    assert!(
        adjust["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .all(|p| p["name"] != "Idempotency-Key")
    );
}
