//! The notification API: any bearer token, the caller's own notifications oldest first, 401 / 400
//! as problem+json.

use axum::http::{Method, StatusCode};
use chrono::{DateTime, Duration, Utc};
use commerce_events::{Envelope, Event};
use commerce_notification::{AppState, CONSUMER, Notifier, app};
use commerce_platform::testing;
use commerce_platform::{Authenticator, Claims};
use serde_json::{Value, json};
use uuid::Uuid;

fn auth() -> Authenticator {
    Authenticator::new(b"test-secret", "test-key")
}

fn token(sub: &str) -> String {
    testing::token(&auth(), sub, &["customer"])
}

async fn get(state: &AppState, uri: &str, token: Option<&str>) -> (StatusCode, String, Value) {
    testing::call(app(state.clone()), Method::GET, uri, token)
        .await
        .into_parts()
}

async fn state() -> (testkit::TestDb, AppState) {
    let db = testing::database(&commerce_notification::MIGRATOR).await;
    let state = AppState {
        pool: db.pool.clone(),
        auth: auth(),
    };
    (db, state)
}

/// Delivers `event` as the consumer runner does (inbox + handler in one transaction), as having
/// happened at `occurred_at`.
async fn deliver(state: &AppState, event: Event, occurred_at: DateTime<Utc>) -> Envelope {
    let mut envelope = event.into_envelope();
    envelope.occurred_at = occurred_at;
    testing::apply(&state.pool, CONSUMER, &Notifier, &envelope).await;
    envelope
}

fn confirmed(order_id: Uuid, customer_id: &str) -> Event {
    Event::OrderConfirmed {
        order_id,
        customer_id: customer_id.into(),
    }
}

fn delivered(order_id: Uuid, customer_id: &str) -> Event {
    Event::ShipmentDelivered {
        order_id,
        shipment_id: Uuid::now_v7(),
        customer_id: customer_id.into(),
    }
}

/// The `event_id`s of a list response, in order.
fn event_ids(body: &Value) -> Vec<String> {
    body["notifications"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|n| n["event_id"].as_str().expect("an event id").to_owned())
        .collect()
}

fn ids(envelopes: &[&Envelope]) -> Vec<String> {
    envelopes.iter().map(|e| e.event_id.to_string()).collect()
}

#[tokio::test]
async fn customers_see_only_their_own_oldest_first() {
    let (_db, state) = state().await;
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    let t0 = Utc::now() - Duration::hours(1);
    // Delivered out of order: the list follows when the events happened, not the inserts.
    let late = deliver(
        &state,
        delivered(first, "alice"),
        t0 + Duration::minutes(30),
    )
    .await;
    let early = deliver(&state, confirmed(first, "alice"), t0).await;
    let other = deliver(
        &state,
        confirmed(second, "alice"),
        t0 + Duration::minutes(10),
    )
    .await;
    let bobs = deliver(&state, confirmed(Uuid::now_v7(), "bob"), t0).await;

    let alice = token("alice");
    let (status, _, body) = get(&state, "/api/v1/notifications", Some(&alice)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(event_ids(&body), ids(&[&early, &other, &late]));
    let notification = &body["notifications"][0];
    let id = notification["id"].as_i64().expect("an id");
    assert_eq!(
        *notification,
        json!({
            "id": id,
            "event_id": early.event_id,
            "order_id": first,
            "kind": "order_confirmed",
            "message": format!("Order {first} confirmed"),
            "occurred_at": notification["occurred_at"],
        })
    );
    let occurred_at: DateTime<Utc> = notification["occurred_at"]
        .as_str()
        .expect("a time")
        .parse()
        .expect("RFC 3339");
    assert_eq!(
        occurred_at.timestamp_micros(),
        early.occurred_at.timestamp_micros()
    );
    assert_eq!(body["notifications"][2]["kind"], "order_delivered");

    // One order's.
    let uri = format!("/api/v1/notifications?order_id={first}");
    let (status, _, body) = get(&state, &uri, Some(&alice)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(event_ids(&body), ids(&[&early, &late]));

    // The first ones only.
    let (status, _, body) = get(&state, "/api/v1/notifications?limit=2", Some(&alice)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(event_ids(&body), ids(&[&early, &other]));
    let uri = format!("/api/v1/notifications?order_id={second}&limit=500");
    let (_, _, body) = get(&state, &uri, Some(&alice)).await;
    assert_eq!(event_ids(&body), ids(&[&other]));

    // Bob sees his own only, even when he names Alice's order.
    let bob = token("bob");
    let (status, _, body) = get(&state, "/api/v1/notifications", Some(&bob)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(event_ids(&body), ids(&[&bobs]));
    let (status, _, body) = get(&state, &uri, Some(&bob)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "notifications": [] }));

    // Someone with nothing sees an empty list, whatever their role.
    let admin = testing::token(&auth(), "carol", &["admin"]);
    let (status, _, body) = get(&state, "/api/v1/notifications", Some(&admin)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "notifications": [] }));
}

#[tokio::test]
async fn refuses_missing_tokens_and_bad_queries() {
    let (_db, state) = state().await;
    for token in [None, Some("not-a-jwt".to_owned())] {
        let (status, content_type, body) =
            get(&state, "/api/v1/notifications", token.as_deref()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(content_type, "application/problem+json");
        assert_eq!(body["code"], "unauthorized");
    }
    let expired = auth().issue(&Claims {
        sub: "alice".into(),
        roles: vec!["customer".into()],
        exp: Utc::now().timestamp() - 60,
    });
    let (status, _, _) = get(&state, "/api/v1/notifications", Some(&expired)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let alice = token("alice");
    for query in [
        "limit=0",
        "limit=501",
        "limit=-1",
        "limit=ten",
        "order_id=nope",
        "customer_id=bob",
        "offset=1",
    ] {
        let uri = format!("/api/v1/notifications?{query}");
        let (status, content_type, body) = get(&state, &uri, Some(&alice)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(content_type, "application/problem+json", "{query}");
        assert_eq!(body["code"], "bad-request", "{query}");
    }
    for query in ["limit=1", "limit=500"] {
        let uri = format!("/api/v1/notifications?{query}");
        let (status, _, _) = get(&state, &uri, Some(&alice)).await;
        assert_eq!(status, StatusCode::OK, "{query}");
    }
}

#[tokio::test]
async fn serves_its_openapi_document() {
    let (_db, state) = state().await;
    let (status, _, body) = get(&state, "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["openapi"], "3.1.0");
    let list = &body["paths"]["/api/v1/notifications"]["get"];
    assert!(list.is_object());
    assert_eq!(list["operationId"], "listNotifications");
    assert_eq!(list["security"], json!([{ "bearer": [] }]));
    let params: Vec<&str> = list["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .map(|p| p["name"].as_str().expect("a name"))
        .collect();
    assert_eq!(params, ["order_id", "limit"]);
    assert_eq!(
        list["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Notifications"
    );
    for status in ["400", "401"] {
        assert_eq!(
            list["responses"][status]["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem",
            "{status}"
        );
    }
    let schemas = &body["components"]["schemas"];
    assert_eq!(
        schemas["Notification"]["required"],
        json!([
            "id",
            "event_id",
            "order_id",
            "kind",
            "message",
            "occurred_at"
        ])
    );
    assert_eq!(
        schemas["Kind"]["enum"],
        json!([
            "order_placed",
            "order_confirmed",
            "order_cancelled",
            "order_shipped",
            "order_delivered",
            "payment_refunded"
        ])
    );
    assert_eq!(
        body["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}
