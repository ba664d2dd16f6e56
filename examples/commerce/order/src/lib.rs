//! The commerce system's order service: customers place, read and cancel orders; the service
//! follows each order through the saga (see `docs/commerce.md`).
//!
//! - **HTTP** (bearer JWT, any role; a customer sees only their own orders):
//!   `POST /api/v1/orders` (an `Idempotency-Key` is required; prices are read from the service's
//!   copy of the catalogue and kept with the order; the order, its `OrderPlaced` event and the
//!   key's stored response commit in one transaction), `GET /api/v1/orders`,
//!   `GET /api/v1/orders/{id}`, `POST /api/v1/orders/{id}/cancel`, and `GET /openapi.json`;
//!   for services (`x-api-key`), `GET /internal/v1/catalogue/{product id}`: a product's price
//!   and listing as orders are priced.
//! - **Consumer** `order.catalogue` of the products topic ([`Catalogue`]): keeps the copy of the
//!   catalogue at the newest `ProductChanged` of each product (see [`catalogue`] for why a copy).
//! - **Consumer** `order.saga` of the inventory, payments and shipments topics ([`OrderSaga`]):
//!   moves orders through `PENDING -> RESERVED -> PAID -> CONFIRMED -> SHIPPED -> COMPLETED`,
//!   or to `FAILED` / `CANCELLED`, with the transitions of [`domain`]. Each event is applied once (the `inbox` crate).
//! - **Jobs** ([`jobs`], each run by one instance at a time through a named lease): reservations
//!   waiting longer than `RESERVATION_TIMEOUT_SECS` for their payment are cancelled ("payment
//!   timeout", with `OrderCancelled`); orders `PENDING` or `PAID` for longer than
//!   `ORDER_STUCK_AFTER_SECS` (default 3600) are cancelled ("stuck: no progress in time", with
//!   `OrderCancelled`, so every unit and cent goes back); finished orders older than
//!   `ORDER_ARCHIVE_AFTER_DAYS`
//!   (default 30) move to the archive tables, still readable through the API, and are deleted
//!   `ORDER_ARCHIVE_RETENTION_DAYS` (default 365) after that.
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

pub mod catalogue;
pub mod domain;
mod error;
pub mod events;
mod http;
pub mod jobs;
pub mod repo;

use anyhow::Context;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use commerce_events::Topics;
use commerce_platform::runtime::{self, Parts};
use commerce_platform::{Authenticator, Config, Running, setup};
use sqlx::PgPool;
use sqlx::migrate::Migrator;

pub use catalogue::Catalogue;
pub use error::{Error, Result};
pub use events::OrderSaga;
pub use http::{ApiDoc, CreateOrder, LineRequest, ListParams, MAX_BODY};
pub use repo::{archive_finished, cancel_stuck, expire_reservations, prune_archive};

/// The service's own migrations (orders, lines, the archive, the catalogue copy), versions
/// `20260301...`.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// What the HTTP handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The service's database.
    pub pool: PgPool,
    /// Where events are published.
    pub topics: Topics,
    /// Verifies bearer tokens and the service API key.
    pub auth: Authenticator,
}

impl AppState {
    /// The state for `config`: its topics, its JWT secret and API key.
    pub fn new(pool: PgPool, config: &Config) -> Self {
        Self {
            pool,
            topics: config.topics.clone(),
            auth: config.authenticator(),
        }
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

/// `ORDER_STUCK_AFTER_SECS` (default 3600): how long an order may stay `PENDING` or `PAID`
/// before the stuck-order job cancels it.
///
/// # Errors
///
/// When the variable is set but is not a whole number of seconds.
pub fn stuck_after_from_env() -> anyhow::Result<Duration> {
    let secs: u64 = match std::env::var("ORDER_STUCK_AFTER_SECS") {
        Ok(value) => value.parse().context("ORDER_STUCK_AFTER_SECS")?,
        Err(_) => 60 * 60,
    };
    Ok(Duration::from_secs(secs))
}

/// `ORDER_ARCHIVE_RETENTION_DAYS` (default 365): how long archived orders are kept.
///
/// # Errors
///
/// When the variable is set but is not a whole number of days.
pub fn archive_retention_from_env() -> anyhow::Result<Duration> {
    let days: u64 = match std::env::var("ORDER_ARCHIVE_RETENTION_DAYS") {
        Ok(value) => value.parse().context("ORDER_ARCHIVE_RETENTION_DAYS")?,
        Err(_) => 365,
    };
    Ok(Duration::from_secs(days.saturating_mul(24 * 60 * 60)))
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

/// Starts the order service: its database (`<prefix>_order`, migrated), the `order.catalogue`
/// and `order.saga` consumers, the expiry and archiver jobs, the outbox relay and the HTTP server on
/// `config.addrs.order`.
///
/// # Errors
///
/// A message saying what could not be started.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let archive_after = archive_after_from_env()?;
    let stuck_after = stuck_after_from_env()?;
    let archive_retention = archive_retention_from_env()?;
    let reservation_timeout = config.reservation_timeout;
    let pool = setup::database(config, "order", &MIGRATOR)
        .await
        .context("order: database")?;
    let state = AppState::new(pool.clone(), config);
    tracing::info!(
        service = "order",
        reservation_timeout_secs = reservation_timeout.as_secs(),
        stuck_after_secs = stuck_after.as_secs(),
        archive_after_days = archive_after.as_secs() / (24 * 60 * 60),
        archive_retention_days = archive_retention.as_secs() / (24 * 60 * 60),
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
    let catalogue = runtime::consume(
        config,
        &pool,
        catalogue::CONSUMER,
        &[&config.topics.products],
        Catalogue,
    )
    .context("order: catalogue consumer")?;
    let owner = format!("order-{}", uuid::Uuid::now_v7());
    let jobs = vec![
        jobs::spawn_expiry(
            pool.clone(),
            config.topics.clone(),
            reservation_timeout,
            owner.clone(),
        ),
        jobs::spawn_stuck(
            pool.clone(),
            config.topics.clone(),
            stuck_after,
            owner.clone(),
        ),
        jobs::spawn_archiver(pool.clone(), archive_after, archive_retention, owner),
    ];
    runtime::start(
        "order",
        config,
        &pool,
        config.addrs.order,
        Parts {
            router: app(state),
            consumers: vec![catalogue, saga],
            jobs,
        },
    )
    .await
}
