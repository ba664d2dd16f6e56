//! The HTTP API against real PostgreSQL, with products announced to the catalogue consumer.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use commerce_events::Event;
use commerce_order::domain::OrderState;
use commerce_platform::testing;
use common::{Harness, Reply};
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test]
async fn places_an_order_with_snapshotted_prices_and_its_event() {
    let h = Harness::new().await;
    let beans = h.products.add(450, true).await;
    let grinder = h.products.add(12_999, true).await;
    let reply = h
        .place(
            "alice",
            "key-1",
            &json!({"lines": [
                {"product_id": beans, "quantity": 2},
                {"product_id": grinder, "quantity": 1},
            ]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let id = reply.id();
    assert_eq!(
        reply.header("location"),
        Some(format!("/api/v1/orders/{id}").as_str())
    );
    let order = &reply.body;
    assert_eq!(order["customer_id"], "alice");
    assert_eq!(order["state"], "PENDING");
    assert_eq!(order["reason"], Value::Null);
    assert_eq!(order["total_cents"], 2 * 450 + 12_999);
    assert_eq!(
        order["lines"],
        json!([
            {"product_id": beans, "quantity": 2, "unit_price_cents": 450},
            {"product_id": grinder, "quantity": 1, "unit_price_cents": 12_999},
        ])
    );
    assert!(order["created_at"].is_string() && order["updated_at"].is_string());

    // A later price change does not touch the order.
    h.products.announce(beans, 999, true, 2).await;
    let read = h.get("alice", &format!("/api/v1/orders/{id}")).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(&read.body, order);

    let outbox = h.outbox().await;
    assert_eq!(outbox.len(), 1);
    let (event_type, topic, aggregate_type, aggregate_id, payload) = &outbox[0];
    assert_eq!(event_type, "OrderPlaced");
    assert_eq!(topic, &h.config.topics.orders);
    assert_eq!(aggregate_type, "order");
    assert_eq!(aggregate_id, &id.to_string());
    let envelope = commerce_events::decode(payload).expect("a valid envelope");
    let Event::OrderPlaced {
        order_id,
        customer_id,
        lines,
        total_cents,
    } = envelope.event
    else {
        panic!("not OrderPlaced: {:?}", envelope.event);
    };
    assert_eq!(order_id, id);
    assert_eq!(customer_id, "alice");
    assert_eq!(total_cents, 13_899);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0].unit_price_cents, 450);

    let list = h.get("alice", "/api/v1/orders").await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body, json!([order]));
}

#[tokio::test]
async fn a_replayed_key_places_one_order() {
    let h = Harness::new().await;
    let product = h.products.add(100, true).await;
    let body = json!({"lines": [{"product_id": product, "quantity": 3}]});
    let first = h.place("alice", "same-key", &body).await;
    let second = h.place("alice", "same-key", &body).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(second.status, StatusCode::CREATED);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(first.body, second.body);
    assert_eq!(first.header("location"), second.header("location"));
    assert_eq!(h.count("orders").await, 1);
    assert_eq!(h.count("order_lines").await, 1);
    assert_eq!(h.count("outbox_events").await, 1);

    // The same key for another request is refused; another customer's key is theirs alone.
    let other = json!({"lines": [{"product_id": product, "quantity": 4}]});
    h.place("alice", "same-key", &other)
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    let bobs = h.place("bob", "same-key", &body).await;
    assert_eq!(bobs.status, StatusCode::CREATED);
    assert_ne!(bobs.id(), first.id());
    assert_eq!(h.count("orders").await, 2);
}

#[tokio::test]
async fn the_idempotency_key_is_required() {
    let h = Harness::new().await;
    let product = h.products.add(100, true).await;
    let reply = h
        .send(
            testing::request(Method::POST, "/api/v1/orders", Some(&h.token("alice")))
                .header("content-type", "application/json")
                .body(Body::from(
                    json!({"lines": [{"product_id": product, "quantity": 1}]}).to_string(),
                ))
                .expect("request"),
        )
        .await;
    reply.assert_problem(StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["code"], "idempotency-key-missing");
    assert_eq!(h.count("orders").await, 0);
    assert_eq!(h.count("outbox_events").await, 0);
}

async fn assert_nothing_written(h: &Harness) {
    assert_eq!(h.count("orders").await, 0);
    assert_eq!(h.count("order_lines").await, 0);
    assert_eq!(h.count("outbox_events").await, 0);
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM idempotency_keys WHERE completed_at IS NOT NULL")
            .fetch_one(h.pool())
            .await
            .expect("count stored keys");
    assert_eq!(stored, 0, "no response stored for a refused request");
}

#[tokio::test]
async fn invalid_requests_get_problems_and_write_nothing() {
    let h = Harness::new().await;
    let a = h.products.add(100, true).await;
    let b = h.products.add(100, true).await;
    let line = |product: Uuid, quantity: i64| json!({"product_id": product, "quantity": quantity});
    let too_many: Vec<Value> = (0..51).map(|_| line(Uuid::now_v7(), 1)).collect();
    let cases: Vec<(&str, String)> = vec![
        ("malformed JSON", "{\"lines\": [".to_owned()),
        ("not an object", "[]".to_owned()),
        ("no lines field", "{}".to_owned()),
        (
            "unknown field",
            json!({"lines": [line(a, 1)], "discount": 100}).to_string(),
        ),
        (
            "unknown line field",
            json!({"lines": [{"product_id": a, "quantity": 1, "unit_price_cents": 1}]}).to_string(),
        ),
        ("quantity 0", json!({"lines": [line(a, 0)]}).to_string()),
        ("quantity -1", json!({"lines": [line(a, -1)]}).to_string()),
        ("quantity 101", json!({"lines": [line(a, 101)]}).to_string()),
        (
            "quantity overflows i32",
            json!({"lines": [line(a, 1 << 40)]}).to_string(),
        ),
        (
            "product id not a uuid",
            json!({"lines": [{"product_id": "beans", "quantity": 1}]}).to_string(),
        ),
        ("no lines", json!({"lines": []}).to_string()),
        ("51 lines", json!({"lines": too_many}).to_string()),
        (
            "duplicate product",
            json!({"lines": [line(a, 1), line(b, 1), line(a, 2)]}).to_string(),
        ),
    ];
    for (i, (what, body)) in cases.into_iter().enumerate() {
        let reply = h
            .send(
                testing::request(Method::POST, "/api/v1/orders", Some(&h.token("alice")))
                    .header("content-type", "application/json")
                    .header("idempotency-key", format!("invalid-{i}"))
                    .body(Body::from(body))
                    .expect("request"),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{what}: {}",
            reply.body
        );
        reply.assert_problem(StatusCode::BAD_REQUEST);
    }

    let not_json = h
        .send(
            testing::request(Method::POST, "/api/v1/orders", Some(&h.token("alice")))
                .header("content-type", "text/plain")
                .header("idempotency-key", "text")
                .body(Body::from(json!({"lines": [line(a, 1)]}).to_string()))
                .expect("request"),
        )
        .await;
    not_json.assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let huge = format!(
        "{{\"lines\": [{{\"product_id\": \"{a}\", \"quantity\": 1}}], \"pad\": \"{}\"}}",
        "x".repeat(commerce_order::MAX_BODY + 1)
    );
    let reply = h
        .send(
            testing::request(Method::POST, "/api/v1/orders", Some(&h.token("alice")))
                .header("content-type", "application/json")
                .header("idempotency-key", "huge")
                .body(Body::from(huge))
                .expect("request"),
        )
        .await;
    reply.assert_problem(StatusCode::PAYLOAD_TOO_LARGE);
    assert_nothing_written(&h).await;
}

#[tokio::test]
async fn unknown_or_inactive_products_are_unprocessable() {
    let h = Harness::new().await;
    let known = h.products.add(100, true).await;
    let retired = h.products.add(100, false).await;
    let unknown = Uuid::now_v7();
    let reply = h
        .place(
            "alice",
            "k1",
            &json!({"lines": [{"product_id": known, "quantity": 1}, {"product_id": unknown, "quantity": 1}]}),
        )
        .await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.body["code"], "unprocessable");
    assert!(
        reply.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("unknown product") && d.contains(&unknown.to_string())),
        "{}",
        reply.body
    );
    let reply = h
        .place(
            "alice",
            "k2",
            &json!({"lines": [{"product_id": retired, "quantity": 1}]}),
        )
        .await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_nothing_written(&h).await;

    // Once the product is announced, an order for it is placed.
    h.products.announce(unknown, 300, true, 1).await;
    let reply = h
        .place(
            "alice",
            "k3",
            &json!({"lines": [{"product_id": unknown, "quantity": 1}]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.body["total_cents"], 300);
}

#[tokio::test]
async fn customers_see_only_their_own_orders() {
    let h = Harness::new().await;
    let alices = h.place_one("alice").await;
    let bobs = h.place_one("bob").await;
    let path = format!("/api/v1/orders/{alices}");
    h.get("bob", &path)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    h.post("bob", &format!("{path}/cancel"))
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    h.get("bob", &format!("/api/v1/orders/{}", Uuid::now_v7()))
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    h.get("bob", "/api/v1/orders/not-a-uuid")
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
    let list = h.get("bob", "/api/v1/orders").await;
    assert_eq!(list.status, StatusCode::OK);
    let ids: Vec<&str> = list
        .body
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|o| o["id"].as_str())
        .collect();
    assert_eq!(ids, [bobs.to_string()]);
    assert_eq!(
        h.state_of(alices).await.0,
        "PENDING",
        "bob's cancel changed nothing"
    );
}

#[tokio::test]
async fn lists_newest_first_with_pages() {
    let h = Harness::new().await;
    let mut placed = Vec::new();
    for _ in 0..3 {
        placed.push(h.place_one("alice").await);
    }
    placed.reverse();
    let page: Reply = h.get("alice", "/api/v1/orders?limit=2").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let ids: Vec<Uuid> = page
        .body
        .as_array()
        .expect("array")
        .iter()
        .map(|o| o["id"].as_str().and_then(|s| s.parse().ok()).expect("id"))
        .collect();
    assert_eq!(ids, placed[..2]);
    let next = h
        .get(
            "alice",
            &format!("/api/v1/orders?limit=2&before={}", ids[1]),
        )
        .await;
    let ids: Vec<&str> = next
        .body
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|o| o["id"].as_str())
        .collect();
    assert_eq!(ids, [placed[2].to_string()]);
    for bad in ["limit=0", "limit=101", "limit=x", "page=2"] {
        h.get("alice", &format!("/api/v1/orders?{bad}"))
            .await
            .assert_problem(StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn cancels_until_shipped() {
    let h = Harness::new().await;
    for state in [
        OrderState::Pending,
        OrderState::Reserved,
        OrderState::Paid,
        OrderState::Confirmed,
    ] {
        let id = h.place_one("alice").await;
        h.set_state(id, state).await;
        let reply = h
            .post("alice", &format!("/api/v1/orders/{id}/cancel"))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{state}: {}", reply.body);
        assert_eq!(reply.body["state"], "CANCELLED");
        assert_eq!(reply.body["reason"], "cancelled by customer");
        assert_eq!(reply.body["id"], id.to_string());
        // A second cancel finds it cancelled.
        h.post("alice", &format!("/api/v1/orders/{id}/cancel"))
            .await
            .assert_problem(StatusCode::CONFLICT);
    }
    let cancelled: Vec<String> = h
        .outbox()
        .await
        .into_iter()
        .filter(|e| e.0 == "OrderCancelled")
        .map(|(_, topic, _, _, payload)| {
            assert_eq!(topic, h.config.topics.orders);
            match commerce_events::decode(&payload).expect("valid").event {
                Event::OrderCancelled { reason, .. } => reason,
                other => panic!("{other:?}"),
            }
        })
        .collect();
    assert_eq!(cancelled, ["cancelled by customer"; 4]);

    for state in [
        OrderState::Shipped,
        OrderState::Completed,
        OrderState::Failed,
    ] {
        let id = h.place_one("alice").await;
        h.set_state(id, state).await;
        let reply = h
            .post("alice", &format!("/api/v1/orders/{id}/cancel"))
            .await;
        reply.assert_problem(StatusCode::CONFLICT);
        assert_eq!(h.state_of(id).await.0, state.as_str());
    }
    assert_eq!(
        h.outbox()
            .await
            .iter()
            .filter(|e| e.0 == "OrderCancelled")
            .count(),
        4,
        "refused cancels publish nothing"
    );
}

#[tokio::test]
async fn tokens_are_required_and_checked() {
    let h = Harness::new().await;
    let product = h.products.add(100, true).await;
    let body = json!({"lines": [{"product_id": product, "quantity": 1}]}).to_string();
    let other_secret = commerce_platform::Authenticator::new(b"another secret", "k").issue(
        &commerce_platform::Claims {
            sub: "alice".into(),
            roles: vec![],
            exp: chrono::Utc::now().timestamp() + 60,
        },
    );
    for authorization in [
        None,
        Some(format!("Bearer {}", h.expired_token("alice"))),
        Some(format!("Bearer {other_secret}")),
        Some("Basic YWxpY2U6cGFzcw==".to_owned()),
    ] {
        for (method, path) in [
            ("POST", "/api/v1/orders"),
            ("GET", "/api/v1/orders"),
            ("GET", "/api/v1/orders/0190d6a0-0000-7000-8000-000000000000"),
            (
                "POST",
                "/api/v1/orders/0190d6a0-0000-7000-8000-000000000000/cancel",
            ),
        ] {
            let mut request = Request::builder()
                .method(method)
                .uri(path)
                .header("content-type", "application/json")
                .header("idempotency-key", "k");
            if let Some(value) = &authorization {
                request = request.header("authorization", value);
            }
            let reply = h
                .send(request.body(Body::from(body.clone())).expect("request"))
                .await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {authorization:?}"
            );
            reply.assert_problem(StatusCode::UNAUTHORIZED);
        }
    }
    assert_nothing_written(&h).await;
}

#[tokio::test]
async fn serves_its_openapi_document() {
    let h = Harness::new().await;
    let app = commerce_order::app(h.state.clone());
    let reply = testing::call(app, Method::GET, "/openapi.json", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let paths = reply.body["paths"].as_object().expect("paths");
    for path in [
        "/api/v1/orders",
        "/api/v1/orders/{id}",
        "/api/v1/orders/{id}/cancel",
        "/internal/v1/catalogue/{id}",
    ] {
        assert!(paths.contains_key(path), "{path} missing");
    }
    assert_eq!(
        reply.body["paths"]["/internal/v1/catalogue/{id}"]["get"]["security"],
        json!([{ "apiKey": [] }])
    );
    assert!(reply.body["paths"]["/api/v1/orders"]["post"].is_object());
    assert!(reply.body["paths"]["/api/v1/orders"]["get"].is_object());
    assert!(reply.body["components"]["schemas"]["Order"].is_object());
    assert!(reply.body["components"]["securitySchemes"]["bearer"].is_object());
}
