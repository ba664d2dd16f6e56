//! The shipping API: reads for the owner or an admin, deliveries for admins, 400 / 401 / 403 /
//! 404 / 409 as problem+json, and the OpenAPI document.

use axum::http::{Method, StatusCode};
use commerce_events::{Envelope, Event, Topics};
use commerce_platform::Authenticator;
use commerce_platform::testing;
use commerce_shipping::{AppState, CONSUMER, Saga, app};
use sqlx::PgPool;
use uuid::Uuid;

fn auth() -> Authenticator {
    Authenticator::new(b"test-secret", "test-key")
}

fn token(sub: &str, role: &str) -> String {
    testing::token(&auth(), sub, &[role])
}

fn admin() -> String {
    token("ops", "admin")
}

async fn state() -> (testkit::TestDb, AppState) {
    let db = testing::database(&commerce_shipping::MIGRATOR).await;
    let state = AppState {
        pool: db.pool.clone(),
        auth: auth(),
        topics: Topics::new("test"),
    };
    (db, state)
}

/// Delivers `envelope` as the consumer runner does: inbox record and handler in one transaction.
async fn apply(pool: &PgPool, envelope: &Envelope) {
    testing::apply(pool, CONSUMER, &Saga::new(Topics::new("test")), envelope).await;
}

/// A confirmed order of `customer_id`: it has a `CREATED` shipment.
async fn shipped(pool: &PgPool, customer_id: &str) -> Uuid {
    let order_id = Uuid::now_v7();
    apply(
        pool,
        &Event::OrderConfirmed {
            order_id,
            customer_id: customer_id.into(),
        }
        .into_envelope(),
    )
    .await;
    order_id
}

async fn call(
    state: &AppState,
    method: Method,
    uri: &str,
    token: Option<&str>,
) -> (StatusCode, String, serde_json::Value) {
    testing::call(app(state.clone()), method, uri, token)
        .await
        .into_parts()
}

async fn get(
    state: &AppState,
    uri: &str,
    token: Option<&str>,
) -> (StatusCode, String, serde_json::Value) {
    call(state, Method::GET, uri, token).await
}

async fn post(
    state: &AppState,
    uri: &str,
    token: Option<&str>,
) -> (StatusCode, String, serde_json::Value) {
    call(state, Method::POST, uri, token).await
}

/// How many `event_type` events were enqueued for `order_id`.
async fn enqueued(pool: &PgPool, order_id: Uuid, event_type: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM outbox_events WHERE aggregate_id = $1 AND event_type = $2",
    )
    .bind(order_id.to_string())
    .bind(event_type)
    .fetch_one(pool)
    .await
    .expect("outbox")
}

fn assert_problem(
    response: &(StatusCode, String, serde_json::Value),
    status: StatusCode,
    code: &str,
) {
    let (actual, content_type, body) = response;
    assert_eq!(*actual, status, "{body}");
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(body["code"], code);
    assert_eq!(body["status"], status.as_u16());
}

#[tokio::test]
async fn owners_and_admins_read_shipments_and_others_are_refused() {
    let (db, state) = state().await;
    let order_id = shipped(&db.pool, "alice").await;
    let uri = format!("/api/v1/shipments/{order_id}");

    for token in [admin(), token("alice", "customer")] {
        let (status, content_type, body) = get(&state, &uri, Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(content_type, "application/json");
        assert_eq!(body["order_id"], order_id.to_string());
        assert_eq!(body["customer_id"], "alice");
        assert_eq!(body["state"], "CREATED");
        assert_eq!(body["carrier"], "Acme Parcel");
        assert_eq!(
            body["tracking_number"],
            format!("AP{}", order_id.simple().to_string().to_uppercase())
        );
        assert!(
            body["shipment_id"]
                .as_str()
                .is_some_and(|id| id.parse::<Uuid>().is_ok())
        );
        for field in ["reason", "delivered_at"] {
            assert_eq!(body[field], serde_json::Value::Null, "{field}");
            assert!(body.as_object().is_some_and(|o| o.contains_key(field)));
        }
        assert!(body["created_at"].is_string());
        assert!(body["updated_at"].is_string());
    }

    // Another customer's shipment is indistinguishable from a missing one.
    let other = get(&state, &uri, Some(&token("bob", "customer"))).await;
    assert_problem(&other, StatusCode::NOT_FOUND, "not-found");
    let missing = get(
        &state,
        &format!("/api/v1/shipments/{}", Uuid::now_v7()),
        Some(&token("bob", "customer")),
    )
    .await;
    assert_problem(&missing, StatusCode::NOT_FOUND, "not-found");

    for token in [None, Some("not-a-jwt")] {
        assert_problem(
            &get(&state, &uri, token).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
    }
    assert_problem(
        &get(&state, "/api/v1/shipments/nope", Some(&admin())).await,
        StatusCode::BAD_REQUEST,
        "bad-request",
    );
}

#[tokio::test]
async fn admins_deliver_once_and_repeats_are_answered_without_a_second_event() {
    let (db, state) = state().await;
    let order_id = shipped(&db.pool, "alice").await;
    let uri = format!("/api/v1/shipments/{order_id}/deliver");

    let (status, _, first) = post(&state, &uri, Some(&admin())).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["state"], "DELIVERED");
    assert!(first["delivered_at"].is_string());
    assert_eq!(enqueued(&db.pool, order_id, "ShipmentDelivered").await, 1);
    let payload: Vec<u8> = sqlx::query_scalar(
        "SELECT payload FROM outbox_events WHERE aggregate_id = $1 AND event_type = 'ShipmentDelivered'",
    )
    .bind(order_id.to_string())
    .fetch_one(&db.pool)
    .await
    .expect("event");
    let shipment_id: Uuid = first["shipment_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("a shipment id");
    assert_eq!(
        commerce_events::decode(&payload).expect("decodes").event,
        Event::ShipmentDelivered {
            order_id,
            shipment_id,
            customer_id: "alice".into(),
        }
    );

    // Again: the same shipment, unchanged, and no second event.
    let (status, _, again) = post(&state, &uri, Some(&admin())).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again, first);
    assert_eq!(enqueued(&db.pool, order_id, "ShipmentDelivered").await, 1);

    // The owner now reads it delivered.
    let (status, _, read) = get(
        &state,
        &format!("/api/v1/shipments/{order_id}"),
        Some(&token("alice", "customer")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read, first);
}

#[tokio::test]
async fn deliveries_are_refused_for_cancelled_unknown_and_non_admins() {
    let (db, state) = state().await;
    let cancelled = shipped(&db.pool, "alice").await;
    apply(
        &db.pool,
        &Event::OrderCancelled {
            order_id: cancelled,
            customer_id: "alice".into(),
            reason: "cancelled by customer".into(),
        }
        .into_envelope(),
    )
    .await;
    let response = post(
        &state,
        &format!("/api/v1/shipments/{cancelled}/deliver"),
        Some(&admin()),
    )
    .await;
    assert_problem(&response, StatusCode::CONFLICT, "conflict");
    assert_eq!(enqueued(&db.pool, cancelled, "ShipmentDelivered").await, 0);

    assert_problem(
        &post(
            &state,
            &format!("/api/v1/shipments/{}/deliver", Uuid::now_v7()),
            Some(&admin()),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not-found",
    );

    let created = shipped(&db.pool, "alice").await;
    let uri = format!("/api/v1/shipments/{created}/deliver");
    assert_problem(
        &post(&state, &uri, Some(&token("alice", "customer"))).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_problem(
        &post(&state, &uri, None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_problem(
        &post(&state, "/api/v1/shipments/nope/deliver", Some(&admin())).await,
        StatusCode::BAD_REQUEST,
        "bad-request",
    );
    assert_eq!(enqueued(&db.pool, created, "ShipmentDelivered").await, 0);
    let (_, _, body) = get(
        &state,
        &format!("/api/v1/shipments/{created}"),
        Some(&admin()),
    )
    .await;
    assert_eq!(body["state"], "CREATED");
}

#[tokio::test]
async fn serves_its_openapi_document() {
    let (_db, state) = state().await;
    let (status, _, body) = get(&state, "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["openapi"], "3.1.0");
    let paths = body["paths"].as_object().expect("paths");
    let mut listed: Vec<&str> = paths.keys().map(String::as_str).collect();
    listed.sort_unstable();
    assert_eq!(
        listed,
        [
            "/api/v1/shipments/{order_id}",
            "/api/v1/shipments/{order_id}/deliver"
        ]
    );
    let read = &body["paths"]["/api/v1/shipments/{order_id}"]["get"];
    let deliver = &body["paths"]["/api/v1/shipments/{order_id}/deliver"]["post"];
    for (operation, problems) in [
        (read, &["400", "401", "404"][..]),
        (deliver, &["400", "401", "403", "404", "409"][..]),
    ] {
        assert_eq!(operation["security"], serde_json::json!([{ "bearer": [] }]));
        assert_eq!(
            operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Shipment"
        );
        for status in problems {
            assert_eq!(
                operation["responses"][status]["content"]["application/problem+json"]["schema"]["$ref"],
                "#/components/schemas/Problem",
                "{status}"
            );
        }
    }
    let schemas = &body["components"]["schemas"];
    assert_eq!(
        schemas["ShipmentState"]["enum"],
        serde_json::json!(["CREATED", "DELIVERED", "CANCELLED"])
    );
    let required = schemas["Shipment"]["required"]
        .as_array()
        .expect("required");
    assert_eq!(required.len(), 10, "{required:?}");
    assert_eq!(
        body["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}
