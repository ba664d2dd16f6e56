//! The admin API against PostgreSQL: authentication, validation, restocks, removals, counts,
//! movements.

mod common;

use axum::body::Body;
use axum::http::{StatusCode, header};
use commerce_events::Event;
use commerce_inventory::{AppState, Saga, app};
use commerce_platform::Authenticator;
use commerce_platform::testing;
use common::*;
use serde_json::{Value, json};
use uuid::Uuid;

fn token(roles: &[&str]) -> String {
    testing::token(&auth(), "someone", roles)
}

async fn call(
    state: &AppState,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Option<String>, Value) {
    let mut request = testing::request(method.parse().expect("a method"), uri, token);
    if method == "POST" {
        // The restock route requires a key; a fresh one per call (`admin_idempotency.rs` tests
        // retries).
        request = request.header("idempotency-key", Uuid::now_v7().to_string());
    }
    let body = match body {
        Some(body) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Body::from(body.to_string())
        }
        None => Body::empty(),
    };
    let reply = testing::send(app(state.clone()), request.body(body).expect("request")).await;
    let content_type = reply.content_type().map(str::to_owned);
    (reply.status, content_type, reply.body)
}

fn assert_problem(
    (status, content_type, body): &(StatusCode, Option<String>, Value),
    expected: StatusCode,
    code: &str,
) {
    assert_eq!(*status, expected, "{body}");
    assert_eq!(
        content_type.as_deref(),
        Some("application/problem+json"),
        "{body}"
    );
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], expected.as_u16());
}

#[tokio::test]
async fn every_route_needs_an_admin() {
    let db = db().await;
    let state = state(&db.pool);
    let product = Uuid::now_v7();
    seed(&db.pool, product, 5).await;
    let customer = token(&["customer"]);
    let forged = testing::token(
        &Authenticator::new(b"another secret", "k"),
        "mallory",
        &["admin"],
    );
    let routes = [
        ("GET", format!("/api/v1/stock/{product}"), None),
        ("GET", format!("/api/v1/stock/{product}/movements"), None),
        (
            "POST",
            format!("/api/v1/stock/{product}/add"),
            Some(json!({"quantity": 1})),
        ),
        (
            "POST",
            format!("/api/v1/stock/{product}/remove"),
            Some(json!({"quantity": 1, "reason": "damaged"})),
        ),
        (
            "PUT",
            format!("/api/v1/stock/{product}"),
            Some(json!({"total": 1})),
        ),
    ];
    for (method, uri, body) in &routes {
        let anonymous = call(&state, method, uri, None, body.clone()).await;
        assert_problem(&anonymous, StatusCode::UNAUTHORIZED, "unauthorized");
        let forged = call(&state, method, uri, Some(&forged), body.clone()).await;
        assert_problem(&forged, StatusCode::UNAUTHORIZED, "unauthorized");
        let customer = call(&state, method, uri, Some(&customer), body.clone()).await;
        assert_problem(&customer, StatusCode::FORBIDDEN, "forbidden");
    }
    assert_eq!(level(&db.pool, product).await, (5, 0, 0));
    assert_eq!(count(&db.pool, "movements").await, 0);
    assert_eq!(count(&db.pool, "outbox_events").await, 0);
}

#[tokio::test]
async fn bad_input_is_a_problem_and_writes_nothing() {
    let db = db().await;
    let state = state(&db.pool);
    let admin = token(&["admin"]);
    let product = Uuid::now_v7();
    let add = format!("/api/v1/stock/{product}/add");
    for body in [
        json!({"quantity": 0}),
        json!({"quantity": -3}),
        json!({"quantity": 1_000_001}),
        json!({"quantity": 10_000_000_000_i64}),
        json!({"quantity": "5"}),
        json!({"quantity": 1.5}),
        json!({}),
        json!({"quantity": 1, "total": 5}),
        json!([1]),
    ] {
        let response = call(&state, "POST", &add, Some(&admin), Some(body.clone())).await;
        assert_problem(&response, StatusCode::BAD_REQUEST, "bad-request");
    }
    let response = call(
        &state,
        "POST",
        "/api/v1/stock/not-a-uuid/add",
        Some(&admin),
        Some(json!({"quantity": 1})),
    )
    .await;
    assert_problem(&response, StatusCode::BAD_REQUEST, "bad-request");
    // No content type: not JSON.
    let response = call(&state, "POST", &add, Some(&admin), None).await;
    assert_eq!(response.1.as_deref(), Some("application/problem+json"));
    assert!(response.0.is_client_error());

    seed(&db.pool, product, 5).await;
    let put = format!("/api/v1/stock/{product}");
    for body in [
        json!({"total": -1}),
        json!({"total": 2_147_483_648_i64}),
        json!({"total": null}),
        json!({"count": 3}),
    ] {
        let response = call(&state, "PUT", &put, Some(&admin), Some(body)).await;
        assert_problem(&response, StatusCode::BAD_REQUEST, "bad-request");
    }
    let list = format!("/api/v1/stock/{product}/movements");
    for query in ["?limit=0", "?limit=1001", "?limit=x", "?page=2"] {
        let response = call(&state, "GET", &format!("{list}{query}"), Some(&admin), None).await;
        assert_problem(&response, StatusCode::BAD_REQUEST, "bad-request");
    }
    let response = call(&state, "GET", "/api/v1/stock/42", Some(&admin), None).await;
    assert_problem(&response, StatusCode::BAD_REQUEST, "bad-request");

    assert_eq!(level(&db.pool, product).await, (5, 0, 0));
    assert_eq!(count(&db.pool, "stock").await, 1);
    assert_eq!(count(&db.pool, "movements").await, 0);
    assert_eq!(count(&db.pool, "outbox_events").await, 0);
}

#[tokio::test]
async fn add_creates_the_row_and_every_change_is_recorded_and_published() {
    let db = db().await;
    let state = state(&db.pool);
    let admin = token(&["admin"]);
    let product = Uuid::now_v7();
    let stock = format!("/api/v1/stock/{product}");

    let missing = call(&state, "GET", &stock, Some(&admin), None).await;
    assert_problem(&missing, StatusCode::NOT_FOUND, "not-found");
    let missing = call(
        &state,
        "GET",
        &format!("{stock}/movements"),
        Some(&admin),
        None,
    )
    .await;
    assert_problem(&missing, StatusCode::NOT_FOUND, "not-found");
    let missing = call(
        &state,
        "PUT",
        &stock,
        Some(&admin),
        Some(json!({"total": 3})),
    )
    .await;
    assert_problem(&missing, StatusCode::NOT_FOUND, "not-found");
    assert_eq!(count(&db.pool, "stock").await, 0);

    let (status, _, body) = call(
        &state,
        "POST",
        &format!("{stock}/add"),
        Some(&admin),
        Some(json!({"quantity": 5})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let expected =
        json!({"product_id": product, "total": 5, "reserved": 0, "available": 5, "version": 1});
    assert_eq!(body, expected);
    let (_, _, body) = call(
        &state,
        "POST",
        &format!("{stock}/add"),
        Some(&admin),
        Some(json!({"quantity": 1_000_000})),
    )
    .await;
    assert_eq!(body["total"], 1_000_005);
    assert_eq!(body["version"], 2);

    let (status, _, body) = call(
        &state,
        "PUT",
        &stock,
        Some(&admin),
        Some(json!({"total": 20})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let expected =
        json!({"product_id": product, "total": 20, "reserved": 0, "available": 20, "version": 3});
    assert_eq!(body, expected);
    // The same total again: nothing to record.
    let (status, _, body) = call(
        &state,
        "PUT",
        &stock,
        Some(&admin),
        Some(json!({"total": 20})),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, expected.clone()));
    let (status, _, body) = call(&state, "GET", &stock, Some(&admin), None).await;
    assert_eq!((status, body), (StatusCode::OK, expected));

    assert_eq!(
        movements(&db.pool, product).await,
        vec![
            ("add".into(), None, 5, 0),
            ("add".into(), None, 1_000_000, 0),
            ("adjust".into(), None, -999_985, 0)
        ]
    );
    let (status, _, body) = call(
        &state,
        "GET",
        &format!("{stock}/movements"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["product_id"], json!(product));
    let kinds: Vec<&str> = body["movements"]
        .as_array()
        .expect("movements")
        .iter()
        .map(|m| m["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, ["adjust", "add", "add"], "newest first");
    assert_eq!(body["movements"][0]["delta_total"], -999_985);
    assert_eq!(body["movements"][0]["order_id"], Value::Null);
    let (_, _, body) = call(
        &state,
        "GET",
        &format!("{stock}/movements?limit=1"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(body["movements"].as_array().map(Vec::len), Some(1));

    let published: Vec<(String, Event)> = outbox(&db.pool)
        .await
        .into_iter()
        .map(|(topic, e)| (topic, e.event))
        .collect();
    let level = |total, version| {
        (
            state.topics.inventory.clone(),
            Event::StockLevelChanged {
                product_id: product,
                total,
                reserved: 0,
                available: total,
                version,
            },
        )
    };
    assert_eq!(
        published,
        vec![level(5, 1), level(1_000_005, 2), level(20, 3)]
    );
}

#[tokio::test]
async fn adjusting_below_the_reserved_units_is_a_conflict() {
    let db = db().await;
    let state = state(&db.pool);
    let admin = token(&["admin"]);
    let product = Uuid::now_v7();
    seed(&db.pool, product, 10).await;
    let saga = Saga::new(state.topics.clone());
    apply(
        &db.pool,
        &saga,
        &placed(Uuid::now_v7(), vec![line(product, 6)]),
    )
    .await;
    let before = count(&db.pool, "outbox_events").await;

    let stock = format!("/api/v1/stock/{product}");
    let response = call(
        &state,
        "PUT",
        &stock,
        Some(&admin),
        Some(json!({"total": 5})),
    )
    .await;
    assert_problem(&response, StatusCode::CONFLICT, "conflict");
    assert_eq!(level(&db.pool, product).await, (10, 6, 1));
    assert_eq!(count(&db.pool, "outbox_events").await, before);
    assert_eq!(count(&db.pool, "movements").await, 1);

    let (status, _, body) = call(
        &state,
        "PUT",
        &stock,
        Some(&admin),
        Some(json!({"total": 6})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"product_id": product, "total": 6, "reserved": 6, "available": 0, "version": 2})
    );
    // An add past i32::MAX is a conflict too.
    sqlx::query("UPDATE stock SET total = 2147483000 WHERE product_id = $1")
        .bind(product)
        .execute(&db.pool)
        .await
        .expect("raise the total");
    let response = call(
        &state,
        "POST",
        &format!("{stock}/add"),
        Some(&admin),
        Some(json!({"quantity": 1_000})),
    )
    .await;
    assert_problem(&response, StatusCode::CONFLICT, "conflict");
}

#[tokio::test]
async fn removing_takes_units_out_with_a_reason_but_never_below_the_reserved_ones() {
    let db = db().await;
    let state = state(&db.pool);
    let admin = token(&["admin"]);
    let product = Uuid::now_v7();
    seed(&db.pool, product, 10).await;
    let saga = Saga::new(state.topics.clone());
    apply(
        &db.pool,
        &saga,
        &placed(Uuid::now_v7(), vec![line(product, 6)]),
    )
    .await;
    let remove = format!("/api/v1/stock/{product}/remove");
    let before = count(&db.pool, "outbox_events").await;

    // 4 of the 10 units are free: taking 5 is refused, nothing is written.
    let refused = call(
        &state,
        "POST",
        &remove,
        Some(&admin),
        Some(json!({"quantity": 5, "reason": "damaged"})),
    )
    .await;
    assert_problem(&refused, StatusCode::CONFLICT, "conflict");
    assert_eq!(level(&db.pool, product).await, (10, 6, 1));
    assert_eq!(count(&db.pool, "outbox_events").await, before);
    for body in [
        json!({"quantity": 1}),
        json!({"quantity": 1, "reason": " "}),
        json!({"quantity": 0, "reason": "damaged"}),
        json!({"quantity": 1, "reason": "x".repeat(201)}),
    ] {
        let response = call(&state, "POST", &remove, Some(&admin), Some(body)).await;
        assert_problem(&response, StatusCode::BAD_REQUEST, "bad-request");
    }

    let (status, _, body) = call(
        &state,
        "POST",
        &remove,
        Some(&admin),
        Some(json!({"quantity": 4, "reason": "shipped to the outlet"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"product_id": product, "total": 6, "reserved": 6, "available": 0, "version": 2})
    );
    let (_, _, movements) = call(
        &state,
        "GET",
        &format!("/api/v1/stock/{product}/movements"),
        Some(&admin),
        None,
    )
    .await;
    let newest = &movements["movements"][0];
    assert_eq!(
        (&newest["kind"], &newest["delta_total"], &newest["reason"]),
        (
            &json!("remove"),
            &json!(-4),
            &json!("shipped to the outlet")
        )
    );
    assert!(
        outbox_of(&db.pool, "StockLevelChanged")
            .await
            .contains(&Event::StockLevelChanged {
                product_id: product,
                total: 6,
                reserved: 6,
                available: 0,
                version: 2,
            })
    );
    // A product without stock has nothing to remove.
    let missing = call(
        &state,
        "POST",
        &format!("/api/v1/stock/{}/remove", Uuid::now_v7()),
        Some(&admin),
        Some(json!({"quantity": 1, "reason": "lost"})),
    )
    .await;
    assert_problem(&missing, StatusCode::NOT_FOUND, "not-found");
}

#[tokio::test]
async fn serves_its_openapi_document() {
    let db = db().await;
    let state = state(&db.pool);
    let (status, _, body) = call(&state, "GET", "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3."))
    );
    let paths = body["paths"].as_object().expect("paths");
    for path in [
        "/api/v1/stock/{product_id}",
        "/api/v1/stock/{product_id}/add",
        "/api/v1/stock/{product_id}/movements",
    ] {
        assert!(paths.contains_key(path), "{path}");
    }
    assert!(body["paths"]["/api/v1/stock/{product_id}"]["put"].is_object());
    assert!(body["components"]["securitySchemes"]["bearer"].is_object());
    assert!(body["components"]["schemas"]["StockView"].is_object());
    assert_eq!(
        body["components"]["schemas"]["Problem"]["required"],
        serde_json::json!(["type", "title", "status", "detail", "code"])
    );
}
