//! The `commerce` binary's configuration checks and its `token` subcommand, run as a user runs
//! them: as a process.

use std::process::{Command, Output};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use commerce_inventory::{AppState, app};
use commerce_platform::Authenticator;
use commerce_platform::config::DEV_JWT_SECRET;
use tower::ServiceExt;
use uuid::Uuid;

const SECRET: &str = "a-test-secret-of-more-than-thirty-two-characters";
const KEY: &str = "a-test-service-key-of-more-than-thirty-two-chars";

/// `commerce <args>` with neither secret nor development mode in its environment, plus `env`.
fn commerce(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_commerce"));
    command
        .args(args)
        .env_remove("JWT_SECRET")
        .env_remove("SERVICE_API_KEY")
        .env_remove("COMMERCE_DEV_MODE");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("the commerce binary runs")
}

#[test]
fn a_service_without_secrets_or_development_mode_exits_with_a_clear_message() {
    for service in ["order", "inventory", "shipping", "all"] {
        let output = commerce(&[service], &[]);
        assert_eq!(output.status.code(), Some(2), "{service}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("JWT_SECRET is not set") && stderr.contains("COMMERCE_DEV_MODE"),
            "{service}: {stderr}"
        );
    }
    let output = commerce(&["order"], &[("JWT_SECRET", SECRET)]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("SERVICE_API_KEY is not set"));
    let output = commerce(
        &["order"],
        &[("JWT_SECRET", "short"), ("SERVICE_API_KEY", KEY)],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("at least 32 characters"));
}

/// The token `commerce token` prints.
fn token(args: &[&str], env: &[(&str, &str)]) -> String {
    let output = commerce(&[&["token"], args].concat(), env);
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

#[tokio::test]
async fn the_token_subcommand_signs_tokens_an_admin_route_accepts() {
    let env = [("JWT_SECRET", SECRET), ("SERVICE_API_KEY", KEY)];
    let admin = token(&["ops", "--role", "admin"], &env);
    let customer = token(&["ops"], &env);
    let db = testkit::database(&commerce_platform::setup::migrators(
        &commerce_inventory::MIGRATOR,
    ))
    .await;
    let product = Uuid::now_v7();
    sqlx::query("INSERT INTO stock (product_id, total) VALUES ($1, 5)")
        .bind(product)
        .execute(&db.pool)
        .await
        .expect("a stock row");
    let state = AppState {
        pool: db.pool.clone(),
        auth: Authenticator::new(SECRET.as_bytes(), KEY),
        topics: commerce_events::Topics::new("cli-test"),
    };
    let status = |bearer: Option<String>| {
        let state = state.clone();
        async move {
            let mut request = Request::get(format!("/api/v1/stock/{product}"));
            if let Some(bearer) = bearer {
                request = request.header(header::AUTHORIZATION, format!("Bearer {bearer}"));
            }
            app(state)
                .oneshot(request.body(Body::empty()).expect("request"))
                .await
                .expect("response")
                .status()
        }
    };
    assert_eq!(status(Some(admin)).await, StatusCode::OK);
    assert_eq!(status(Some(customer)).await, StatusCode::FORBIDDEN);
    assert_eq!(status(None).await, StatusCode::UNAUTHORIZED);
    // A token signed with another secret is refused.
    let other = token(
        &["ops", "--role", "admin"],
        &[("JWT_SECRET", KEY), ("SERVICE_API_KEY", KEY)],
    );
    assert_eq!(status(Some(other)).await, StatusCode::UNAUTHORIZED);
}

#[test]
fn development_mode_is_explicit_and_signs_with_the_public_development_secret() {
    let output = commerce(
        &["token", "dev", "--role", "admin"],
        &[("COMMERCE_DEV_MODE", "true")],
    );
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("DEVELOPMENT MODE"));
    let token = String::from_utf8(output.stdout).expect("utf-8");
    let claims = Authenticator::new(DEV_JWT_SECRET.as_bytes(), "unused")
        .verify(token.trim())
        .expect("signed with the development secret");
    assert_eq!(
        (claims.sub.as_str(), claims.roles.as_slice()),
        ("dev", &["admin".to_owned()][..])
    );
}
