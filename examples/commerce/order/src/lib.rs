//! The commerce system's order service: customers place, read and cancel orders; the service
//! follows each order through the saga (see `docs/commerce.md`).
//!
//! - **HTTP** (bearer JWT, any role; a customer sees only their own orders):
//!   `POST /api/v1/orders` (an `Idempotency-Key` is required; prices are read from the product
//!   service and kept with the order; the order, its `OrderPlaced` event and the key's stored
//!   response commit in one transaction), `GET /api/v1/orders`, `GET /api/v1/orders/{id}`,
//!   `POST /api/v1/orders/{id}/cancel`, and `GET /openapi.json`.
//! - **Consumer** `order.saga` of the inventory, payments and shipments topics ([`OrderSaga`]):
//!   moves orders through `PENDING -> RESERVED -> PAID -> CONFIRMED -> SHIPPED -> COMPLETED`,
//!   or to `FAILED` / `CANCELLED`, with the transitions of [`domain`]. Each event is applied once (the `inbox` crate).
//! - **Jobs** ([`jobs`], each run by one instance at a time through a named lease): reservations
//!   waiting longer than `RESERVATION_TIMEOUT_SECS` for their payment are cancelled ("payment
//!   timeout", with `OrderCancelled`); finished orders older than `ORDER_ARCHIVE_AFTER_DAYS`
//!   (default 30) move to the archive tables, still readable through the API.
//!
//! Every event is written to the outbox in the transaction that changes the order, and
//! published by the outbox relay: at least once, in order per order.
//!
//! Run it with `cargo run -p commerce-launcher -- order` (or `-- all` for the whole system); it
//! reads the environment described by [`commerce_platform::Config`]. Its database is
//! `<prefix>_order`.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let config = commerce_platform::Config::from_env()?;
//! let running = commerce_order::start(&config).await?;
//! // ... until asked to stop:
//! running.shutdown().await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod catalog;
pub mod domain;
mod error;
pub mod events;
mod http;
pub mod jobs;
pub mod repo;

use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use commerce_events::Topics;
use commerce_platform::runtime::{self, Parts};
use commerce_platform::{Authenticator, Config, Running, setup};
use sqlx::PgPool;
use sqlx::migrate::Migrator;

pub use error::{Error, Result};
pub use events::OrderSaga;
pub use http::{ApiDoc, CreateOrder, LineRequest, ListParams, MAX_BODY};
pub use repo::{archive_finished, expire_reservations};

/// The service's own migrations (orders, lines, the archive), versions `20260301...`.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The service's database.
    pub pool: PgPool,
    /// Where events are published.
    pub topics: Topics,
    /// Verifies bearer tokens.
    pub auth: Authenticator,
    /// The product service, e.g. `http://127.0.0.1:8084` (prices are read from
    /// `{product_base_url}/internal/v1/products/{id}`).
    pub product_base_url: String,
    /// The key presented to the product service (`x-api-key`).
    api_key: Arc<str>,
    catalog: catalog::Catalog,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("topics", &self.topics)
            .field("product_base_url", &self.product_base_url)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The state for `config`: its topics, its JWT secret, the product service at
    /// `http://{config.addrs.product}` called with `config.api_key`.
    ///
    /// # Errors
    ///
    /// [`Error::HttpClient`] when the HTTP client cannot be built.
    pub fn new(pool: PgPool, config: &Config) -> Result<Self> {
        Ok(Self {
            pool,
            topics: config.topics.clone(),
            auth: config.authenticator(),
            product_base_url: format!("http://{}", config.addrs.product),
            api_key: config.api_key.as_str().into(),
            catalog: catalog::Catalog::new()?,
        })
    }

    /// The same state with the product service at `url` (tests point it at a stub).
    pub fn with_product_base_url(mut self, url: impl Into<String>) -> Self {
        self.product_base_url = url.into();
        self
    }
}

impl FromRef<AppState> for Authenticator {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

/// The HTTP API (without the operations routes, which [`runtime::start`] adds).
pub fn app(state: AppState) -> Router {
    http::router(state)
}

/// `ORDER_ARCHIVE_AFTER_DAYS` (default 30): how long finished orders stay in the live tables.
///
/// # Errors
///
/// When the variable is set but is not a whole number of days.
pub fn archive_after_from_env() -> anyhow::Result<Duration> {
    let days: u64 = match std::env::var("ORDER_ARCHIVE_AFTER_DAYS") {
        Ok(value) => value.parse().context("ORDER_ARCHIVE_AFTER_DAYS")?,
        Err(_) => 30,
    };
    Ok(Duration::from_secs(days.saturating_mul(24 * 60 * 60)))
}

/// Starts the order service: its database (`<prefix>_order`, migrated), the `order.saga`
/// consumer, the expiry and archiver jobs, the outbox relay and the HTTP server on
/// `config.addrs.order`.
///
/// # Errors
///
/// A message saying what could not be started.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let archive_after = archive_after_from_env()?;
    let reservation_timeout = config.reservation_timeout;
    let pool = setup::database(config, "order", &MIGRATOR)
        .await
        .context("order: database")?;
    let state = AppState::new(pool.clone(), config).context("order")?;
    tracing::info!(
        service = "order",
        product_base_url = %state.product_base_url,
        reservation_timeout_secs = reservation_timeout.as_secs(),
        archive_after_days = archive_after.as_secs() / (24 * 60 * 60),
        "order: configuration resolved"
    );
    let saga = runtime::consume(
        config,
        &pool,
        "order.saga",
        &[
            &config.topics.inventory,
            &config.topics.payments,
            &config.topics.shipments,
        ],
        OrderSaga::new(config.topics.clone()),
    )
    .context("order: consumer")?;
    let owner = format!("order-{}", uuid::Uuid::now_v7());
    let jobs = vec![
        jobs::spawn_expiry(
            pool.clone(),
            config.topics.clone(),
            reservation_timeout,
            owner.clone(),
        ),
        jobs::spawn_archiver(pool.clone(), archive_after, owner),
    ];
    runtime::start(
        "order",
        config,
        &pool,
        config.addrs.order,
        Parts {
            router: app(state),
            consumers: vec![saga],
            jobs,
        },
    )
    .await
}
