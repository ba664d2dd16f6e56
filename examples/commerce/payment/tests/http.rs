//! The payment API: admin only, 401 / 403 / 404 / 400 as problem+json.

use axum::http::{Method, StatusCode};
use commerce_events::{Event, Topics};
use commerce_payment::{AppState, CONSUMER, Saga, app};
use commerce_platform::Authenticator;
use commerce_platform::testing;
use uuid::Uuid;

fn auth() -> Authenticator {
    Authenticator::new(b"test-secret", "test-key")
}

fn token(role: &str) -> String {
    testing::token(&auth(), "someone", &[role])
}

async fn get(
    state: &AppState,
    uri: &str,
    token: Option<&str>,
) -> (StatusCode, String, serde_json::Value) {
    testing::call(app(state.clone()), Method::GET, uri, token)
        .await
        .into_parts()
}

#[tokio::test]
async fn admins_read_payments_and_others_are_refused() {
    let db = testing::database(&commerce_payment::MIGRATOR).await;
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
    testing::apply(
        &db.pool,
        CONSUMER,
        &Saga::new(Topics::new("test")),
        &envelope,
    )
    .await;
    let leases = commerce_payment::charger::leases("test-charger").expect("leases");
    commerce_payment::charger::charge_due(&db.pool, &Topics::new("test"), &leases)
        .await
        .expect("charged");

    let uri = format!("/api/v1/payments/{order_id}");
    let (status, _, body) = get(&state, &uri, Some(&token("admin"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["order_id"], order_id.to_string());
    assert_eq!(body["customer_id"], "alice");
    assert_eq!(body["amount_cents"], 1234);
    assert_eq!(body["status"], "APPROVED");
    assert_eq!(body["currency"], "USD");
    let payment_id: Uuid = body["payment_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("a payment id");
    assert_eq!(
        body["provider_payment_id"],
        format!("ch_{}", payment_id.simple())
    );
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
    let db = testing::database(&commerce_payment::MIGRATOR).await;
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
