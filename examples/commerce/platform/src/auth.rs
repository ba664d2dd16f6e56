//! Authentication: JWTs (HS256, `exp` required, roles) for people, API keys for services.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::ApiError;

/// The claims of a bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The principal (user id).
    pub sub: String,
    /// Roles, e.g. `["admin"]` or `["customer"]`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Expiry, seconds since the epoch (required).
    pub exp: i64,
}

/// Verifies bearer tokens and service API keys.
#[derive(Clone)]
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    api_key: Arc<str>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Tokens signed with `jwt_secret` (HS256); service calls carrying `api_key`.
    pub fn new(jwt_secret: &[u8], api_key: &str) -> Self {
        Self {
            decoding: DecodingKey::from_secret(jwt_secret),
            encoding: EncodingKey::from_secret(jwt_secret),
            api_key: api_key.into(),
        }
    }

    /// Signs `claims` (for the demo and tests; a real deployment gets tokens from its identity provider).
    pub fn issue(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .unwrap_or_default()
    }

    /// Verifies a bearer token: HS256 only (so `alg: none` and other algorithms fail), signature,
    /// and a required, unexpired `exp`.
    ///
    /// # Errors
    ///
    /// [`ApiError::Unauthorized`] with the reason.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 0;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| ApiError::Unauthorized(format!("invalid bearer token: {e}")))
    }

    /// Whether `presented` is the service API key, compared in constant time.
    pub fn is_service_key(&self, presented: &str) -> bool {
        presented.as_bytes().ct_eq(self.api_key.as_bytes()).into()
    }
}

/// An authenticated person (any role).
#[derive(Debug, Clone)]
pub struct Caller(pub Claims);

/// An authenticated person with the `admin` role.
#[derive(Debug, Clone)]
pub struct Admin(pub Claims);

/// A request from another service, carrying the API key in `x-api-key`.
#[derive(Debug, Clone, Copy)]
pub struct ServiceKey;

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))
}

impl<S> FromRequestParts<S> for Caller
where
    Authenticator: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let claims = Authenticator::from_ref(state).verify(bearer(parts)?)?;
        Ok(Caller(claims))
    }
}

impl<S> FromRequestParts<S> for Admin
where
    Authenticator: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Caller(claims) = Caller::from_request_parts(parts, state).await?;
        if claims.roles.iter().any(|r| r == "admin") {
            Ok(Admin(claims))
        } else {
            Err(ApiError::Forbidden(
                "this route needs the admin role".into(),
            ))
        }
    }
}

impl<S> FromRequestParts<S> for ServiceKey
where
    Authenticator: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::Unauthorized("missing x-api-key".into()))?;
        if Authenticator::from_ref(state).is_service_key(presented) {
            Ok(ServiceKey)
        } else {
            Err(ApiError::Unauthorized("invalid api key".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp_offset: i64) -> Claims {
        Claims {
            sub: "alice".into(),
            roles: vec!["customer".into()],
            exp: chrono::Utc::now().timestamp() + exp_offset,
        }
    }

    #[test]
    fn verifies_signature_expiry_and_algorithm() {
        let auth = Authenticator::new(b"secret", "key");
        let good = auth.issue(&claims(60));
        assert_eq!(auth.verify(&good).expect("valid").sub, "alice");
        assert!(auth.verify(&auth.issue(&claims(-60))).is_err(), "expired");
        let other = Authenticator::new(b"other", "key").issue(&claims(60));
        assert!(auth.verify(&other).is_err(), "wrong signature");
        // alg: none, unsigned
        let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
        let payload = good.split('.').nth(1).expect("payload");
        assert!(
            auth.verify(&format!("{header}.{payload}.")).is_err(),
            "alg none"
        );
    }

    #[test]
    fn compares_api_keys() {
        let auth = Authenticator::new(b"secret", "service-key");
        assert!(auth.is_service_key("service-key"));
        assert!(!auth.is_service_key("service-kez"));
        assert!(!auth.is_service_key(""));
    }
}
