//! What every service's OpenAPI document shares: the [`Problem`] schema of its error bodies and
//! the [`SecuritySchemes`] its operations refer to.
//!
//! A service derives `utoipa::OpenApi` for its document, lists [`Problem`] in
//! `components(schemas(..))`, answers its errors with `body = Problem, content_type =
//! "application/problem+json"`, and adds `modifiers(&SecuritySchemes)`; an operation then names
//! the scheme it needs with `security(("bearer" = []))` or `security(("apiKey" = []))`.

use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, ToSchema};

/// An RFC 9457 problem, as every error is answered (`application/problem+json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// `https://errors.commerce.example/<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The status's reason phrase.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for people.
    pub detail: String,
    /// A stable code, for programs: `bad-request`, `unauthorized`, `forbidden`, `not-found`,
    /// `conflict`, ...
    pub code: String,
    /// The request's path: which request this answers (every service's answers carry it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// When the error happened, RFC 3339 (every service's answers carry it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

/// The name of the bearer-token scheme (people: HS256 JWTs).
pub const BEARER: &str = "bearer";
/// The name of the API-key scheme (service-to-service calls, header `x-api-key`).
pub const API_KEY: &str = "apiKey";

/// Declares the security schemes operations refer to: [`BEARER`] (an HS256 JWT in
/// `Authorization: Bearer`) and [`API_KEY`] (the service API key in `x-api-key`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An HS256 JWT with a required `exp`; admin routes need the `admin` role",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            API_KEY,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-api-key",
                "The service API key, for service-to-service calls",
            ))),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::OpenApi;

    #[derive(OpenApi)]
    #[openapi(components(schemas(Problem)), modifiers(&SecuritySchemes))]
    struct Doc;

    #[test]
    fn declares_the_problem_schema_and_both_security_schemes() {
        let doc = serde_json::to_value(Doc::openapi()).expect("serializes");
        let components = &doc["components"];
        let problem = &components["schemas"]["Problem"];
        assert_eq!(
            problem["required"],
            serde_json::json!(["type", "title", "status", "detail", "code"])
        );
        assert_eq!(problem["properties"]["status"]["type"], "integer");
        let schemes = &components["securitySchemes"];
        assert_eq!(schemes[BEARER]["type"], "http");
        assert_eq!(schemes[BEARER]["scheme"], "bearer");
        assert_eq!(schemes[BEARER]["bearerFormat"], "JWT");
        assert_eq!(schemes[API_KEY]["type"], "apiKey");
        assert_eq!(schemes[API_KEY]["in"], "header");
        assert_eq!(schemes[API_KEY]["name"], "x-api-key");
    }

    #[test]
    fn a_problem_body_round_trips_with_type_named_type() {
        let problem = Problem {
            kind: "https://errors.commerce.example/not-found".into(),
            title: "Not Found".into(),
            status: 404,
            detail: "no such order".into(),
            code: "not-found".into(),
            instance: Some("/api/v1/orders/1".into()),
            timestamp: None,
        };
        let json = serde_json::to_value(&problem).expect("serializes");
        assert_eq!(json["type"], "https://errors.commerce.example/not-found");
        assert!(json.get("kind").is_none());
        assert_eq!(
            serde_json::from_value::<Problem>(json).expect("deserializes"),
            problem
        );
    }
}
