//! The payment API: admin only, 401 / 403 / 404 / 400 as problem+json.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use commerce_events::{Event, Topics};
use commerce_payment::{AppState, CONSUMER, Saga, app};
use commerce_platform::events::{EventHandler, decode};
use commerce_platform::{Authenticator, Claims};
use http_body_util::BodyExt;
use tower::ServiceExt;
use uuid::Uuid;

fn auth() -> Authenticator {
    Authenticator::new(b"test-secret", "test-key")
}

fn token(role: &str) -> String {
    auth().issue(&Claims {
        sub: "someone".into(),
        roles: vec![role.into()],
        exp: chrono::Utc::now().timestamp() + 300,
    })
}

async fn get(
    state: &AppState,
    uri: &str,
    token: Option<&str>,
) -> (StatusCode, String, serde_json::Value) {
    let mut request = Request::get(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = app(state.clone())
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, content_type, json)
}

#[tokio::test]
async fn admins_read_payments_and_others_are_refused() {
    let db = testkit::database(&commerce_platform::setup::migrators(
        &commerce_payment::MIGRATOR,
    ))
    .await;
    let state = AppState {
        pool: db.pool.clone(),
        auth: auth(),
    };
    let order_id = Uuid::now_v7();
    let envelope = Event::StockReserved {
        order_id,
        total_cents: 1234,
        customer_id: "alice".into(),
    }
    .into_envelope();
    let message = idempotency::Message::new("t", 0, 0, None, Some(envelope.to_json()), vec![]);
    let saga = Saga::new(Topics::new("test"));
    let mut tx = db.pool.begin().await.expect("begin");
    let _ = idempotency::inbox::receive(&mut tx, CONSUMER, &envelope.event_id.to_string())
        .await
        .expect("inbox");
    saga.handle(&mut tx, decode(&message).expect("decodes"))
        .await
        .expect("handled");
    tx.commit().await.expect("commit");

    let uri = format!("/api/v1/payments/{order_id}");
    let (status, _, body) = get(&state, &uri, Some(&token("admin"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["order_id"], order_id.to_string());
    assert_eq!(body["customer_id"], "alice");
    assert_eq!(body["amount_cents"], 1234);
    assert_eq!(body["status"], "APPROVED");
    assert!(
        body["payment_id"]
            .as_str()
            .is_some_and(|id| id.parse::<Uuid>().is_ok())
    );
    assert_eq!(body["reason"], serde_json::Value::Null);

    for (token, expected, code) in [
        (None, StatusCode::UNAUTHORIZED, "unauthorized"),
        (
            Some("not-a-jwt".to_owned()),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (Some(token("customer")), StatusCode::FORBIDDEN, "forbidden"),
    ] {
        let (status, content_type, body) = get(&state, &uri, token.as_deref()).await;
        assert_eq!(status, expected);
        assert_eq!(content_type, "application/problem+json");
        assert_eq!(body["code"], code);
    }

    let (status, content_type, body) = get(
        &state,
        &format!("/api/v1/payments/{}", Uuid::now_v7()),
        Some(&token("admin")),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(body["code"], "not-found");

    let (status, _, body) = get(&state, "/api/v1/payments/nope", Some(&token("admin"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "bad-request");
}

#[tokio::test]
async fn serves_its_openapi_document() {
    let db = testkit::database(&commerce_platform::setup::migrators(
        &commerce_payment::MIGRATOR,
    ))
    .await;
    let state = AppState {
        pool: db.pool.clone(),
        auth: auth(),
    };
    let (status, _, body) = get(&state, "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["openapi"], "3.1.0");
    let get = &body["paths"]["/api/v1/payments/{order_id}"]["get"];
    assert!(get.is_object());
    assert_eq!(get["security"], serde_json::json!([{ "bearer": [] }]));
    assert_eq!(
        get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Payment"
    );
    for status in ["400", "401", "403", "404"] {
        assert_eq!(
            get["responses"][status]["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem",
            "{status}"
        );
    }
    let schemas = &body["components"]["schemas"];
    assert!(schemas["Payment"].is_object());
    assert_eq!(
        schemas["Status"]["enum"],
        serde_json::json!(["PENDING", "APPROVED", "DECLINED", "REFUNDED"])
    );
    assert_eq!(
        schemas["Problem"]["required"],
        serde_json::json!(["type", "title", "status", "detail", "code"])
    );
    assert_eq!(
        body["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}
