//! What every commerce service shares: configuration from the environment, JWT and API-key
//! authentication, problem+json errors, the pieces of every OpenAPI document, health / readiness
//! / metrics routes, JSON logs with request and trace ids, and start-up of its database and topics. Behind
//! the `testing` feature, the `testing` module: helpers for the services' tests.

#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod cors;
pub mod events;
pub mod extract;
pub mod limits;
pub mod openapi;
pub mod ops;
pub mod problem;
pub mod runtime;
pub mod setup;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

pub use auth::{Admin, Authenticator, Caller, Claims, ServiceKey};
pub use config::{Addrs, Config};
pub use problem::ApiError;
pub use runtime::Running;
