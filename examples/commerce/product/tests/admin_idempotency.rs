//! `POST /api/v1/products` under its required `Idempotency-Key`, against PostgreSQL: a retry
//! creates nothing and answers the first answer, a reused key and a missing key are refused, and
//! a refused token never stores a key.

mod common;

use axum::http::StatusCode;
use common::{Fixture, assert_problem, fixture, post_with_key, token};
use serde_json::json;

const PRODUCTS: &str = "/api/v1/products";

async fn stored_keys(f: &Fixture) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&f.db.pool)
        .await
        .expect("count keys")
}

#[tokio::test]
async fn a_retry_with_the_same_key_creates_one_product() {
    let f = fixture().await;
    let admin = token("admin");
    let body = json!({ "sku": "RETRY-1", "name": "Retry", "price_cents": 700 }).to_string();

    let first = f
        .send(post_with_key(
            PRODUCTS,
            Some(&admin),
            Some("create-1"),
            &body,
        ))
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.json);
    assert_eq!(first.replayed, None);
    let id = first.json["id"].as_str().expect("an id").to_owned();

    let second = f
        .send(post_with_key(
            PRODUCTS,
            Some(&admin),
            Some("create-1"),
            &body,
        ))
        .await;
    assert_eq!(second.status, StatusCode::CREATED, "{:?}", second.json);
    assert_eq!(second.replayed.as_deref(), Some("true"));
    assert_eq!(second.json["id"], id.as_str(), "the same product");
    assert_eq!(second.json, first.json);
    assert_eq!(second.location, first.location);
    assert_eq!(f.products().await, 1);
    assert_eq!(stored_keys(&f).await, 1);

    // Another key with the same body is another create: the SKU is taken.
    assert_problem(
        &f.send(post_with_key(
            PRODUCTS,
            Some(&admin),
            Some("create-2"),
            &body,
        ))
        .await,
        StatusCode::CONFLICT,
        "conflict",
    );
    assert_eq!(f.products().await, 1);
    f.cleanup().await;
}

#[tokio::test]
async fn a_key_reused_for_another_request_is_refused() {
    let f = fixture().await;
    let admin = token("admin");
    let body = json!({ "sku": "REUSE-1", "name": "Reuse", "price_cents": 100 }).to_string();
    let created = f
        .send(post_with_key(PRODUCTS, Some(&admin), Some("k"), &body))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json);

    let other = json!({ "sku": "REUSE-2", "name": "Other", "price_cents": 100 }).to_string();
    assert_problem(
        &f.send(post_with_key(PRODUCTS, Some(&admin), Some("k"), &other))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency-key-reused",
    );
    assert_eq!(f.products().await, 1);

    // Keys are per admin: another admin's "k" is theirs.
    let other_admin = common::auth().issue(&commerce_platform::Claims {
        sub: "admin-2".into(),
        roles: vec!["admin".into()],
        exp: chrono::Utc::now().timestamp() + 300,
    });
    let theirs = f
        .send(post_with_key(
            PRODUCTS,
            Some(&other_admin),
            Some("k"),
            &other,
        ))
        .await;
    assert_eq!(theirs.status, StatusCode::CREATED, "{:?}", theirs.json);
    assert_eq!(theirs.replayed, None);
    assert_ne!(theirs.json["id"], created.json["id"]);
    assert_eq!(f.products().await, 2);
    f.cleanup().await;
}

#[tokio::test]
async fn a_missing_key_is_refused_and_creates_nothing() {
    let f = fixture().await;
    let body = json!({ "sku": "NOKEY-1", "name": "No key", "price_cents": 100 }).to_string();
    assert_problem(
        &f.send(post_with_key(PRODUCTS, Some(&token("admin")), None, &body))
            .await,
        StatusCode::BAD_REQUEST,
        "idempotency-key-missing",
    );
    assert_eq!(f.products().await, 0);
    assert_eq!(stored_keys(&f).await, 0);
    f.cleanup().await;
}

#[tokio::test]
async fn a_refused_token_or_body_stores_no_key() {
    let f = fixture().await;
    let body = json!({ "sku": "AUTH-1", "name": "Auth", "price_cents": 100 }).to_string();
    assert_problem(
        &f.send(post_with_key(
            PRODUCTS,
            Some(&token("customer")),
            Some("k"),
            &body,
        ))
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_problem(
        &f.send(post_with_key(PRODUCTS, None, Some("k"), &body))
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_eq!(stored_keys(&f).await, 0, "checked before the key");
    // An invalid body is refused before it took effect: the key stays free to fix it.
    let admin = token("admin");
    let invalid = json!({ "sku": "AUTH-1", "name": " ", "price_cents": 100 }).to_string();
    assert_problem(
        &f.send(post_with_key(PRODUCTS, Some(&admin), Some("k"), &invalid))
            .await,
        StatusCode::BAD_REQUEST,
        "bad-request",
    );
    assert_eq!(f.products().await, 0);

    let created = f
        .send(post_with_key(PRODUCTS, Some(&admin), Some("k"), &body))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json);
    assert_eq!(created.replayed, None);
    assert_eq!(f.products().await, 1);
    f.cleanup().await;
}

#[tokio::test]
async fn a_duplicate_sku_is_an_answer_replayed_under_its_key() {
    let f = fixture().await;
    let admin = token("admin");
    f.create("TAKEN-1", 100).await;
    let body = json!({ "sku": "TAKEN-1", "name": "Again", "price_cents": 200 }).to_string();
    let refused = f
        .send(post_with_key(PRODUCTS, Some(&admin), Some("dup"), &body))
        .await;
    assert_problem(&refused, StatusCode::CONFLICT, "conflict");
    assert_eq!(refused.replayed, None);
    let again = f
        .send(post_with_key(PRODUCTS, Some(&admin), Some("dup"), &body))
        .await;
    assert_problem(&again, StatusCode::CONFLICT, "conflict");
    assert_eq!(again.replayed.as_deref(), Some("true"));
    assert_eq!(again.json, refused.json);
    assert_eq!(f.products().await, 1);
    f.cleanup().await;
}

#[tokio::test]
async fn the_openapi_document_declares_the_key() {
    let f = fixture().await;
    let doc = f.send(common::get("/openapi.json", None)).await;
    let create = &doc.json["paths"][PRODUCTS]["post"];
    let key = create["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == "Idempotency-Key")
        .expect("an Idempotency-Key parameter");
    assert_eq!(key["in"], "header");
    assert_eq!(key["required"], true);
    for status in ["400", "409", "422"] {
        assert_eq!(
            create["responses"][status]["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem",
            "{status}"
        );
    }
    // The list on the same path takes no key.
    assert!(
        doc.json["paths"][PRODUCTS]["get"]["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .all(|p| p["name"] != "Idempotency-Key")
    );
    f.cleanup().await;
}
