//! The commerce system's shipping service: hands every confirmed order to a deterministic fake
//! carrier, exactly once per order, and cancels the shipment if the order is cancelled before
//! it is delivered (see `docs/commerce.md`).
//!
//! Run it (with the other services) with `cargo run -p commerce-launcher -- shipping`; it
//! listens on `SHIPPING_ADDR` (default `127.0.0.1:8085`) and keeps its state in the
//! `commerce_shipping` database.
//!
//! # What it does
//!
//! One consumer, `shipping.saga`, reads the orders topic ([`Saga`]):
//!
//! - `OrderConfirmed` -> a `CREATED` shipment with the fake carrier ([`domain::CARRIER`],
//!   "Acme Parcel") and a tracking number derived from the order id only
//!   ([`domain::tracking_number`]), and `ShipmentCreated`.
//! - `OrderCancelled` -> a `CREATED` shipment becomes `CANCELLED` with the order's reason (the
//!   parcel is not handed over; nothing is published, the order is already cancelled). An order
//!   without a shipment gets a `CANCELLED` row without carrier, so a confirmation arriving later
//!   ships nothing. A `DELIVERED` shipment stays delivered (logged as a warning).
//!
//! The HTTP API:
//!
//! - `GET /api/v1/shipments/{order_id}` (bearer token): admins read any shipment, customers
//!   those of their own orders (404 otherwise).
//! - `POST /api/v1/shipments/{order_id}/deliver` (admin): `CREATED` -> `DELIVERED` and
//!   `ShipmentDelivered`; an already delivered shipment is answered as it is (200, no second
//!   event), a cancelled one is refused (409 `conflict`).
//!
//! plus `GET /openapi.json` and the operations routes (`/health`, `/ready`, `/metrics`).
//!
//! # Guarantees
//!
//! - **One shipment per order.** The `shipments` table's primary key is the order id, so no
//!   second shipment (and no second `ShipmentCreated`) can exist, whether the same
//!   `OrderConfirmed` is redelivered (the inbox skips it anyway) or two different events
//!   confirm the same order.
//! - **Never ships an order whose cancellation it saw first.** A cancellation without a
//!   shipment leaves a `CANCELLED` row, and a confirmation finding any row ships nothing. Both
//!   handlers take a per-order advisory lock first, so a confirmation and a cancellation of the
//!   same order handled at the same time (possibly on different instances) are serialized:
//!   either the shipment comes first and the cancellation cancels it, or the cancellation comes
//!   first and there is no shipment.
//! - **A cancelled order's not-yet-delivered shipment is cancelled**, and a cancelled shipment
//!   is never delivered: the cancellation and the admin's delivery both lock the shipment row,
//!   so whichever comes second sees the first (a delivery after a cancellation is a 409, a
//!   cancellation after a delivery leaves it delivered).
//! - **Exactly-once effect per event.** Each event's effects (the shipment row and the events
//!   published through the outbox) commit in one transaction with the consumer's inbox record;
//!   the events then reach Kafka at least once through the outbox relay. A delivery's state
//!   change and its `ShipmentDelivered` commit together too.

#![forbid(unsafe_code)]

pub mod domain;
pub mod events;
mod http;
mod repo;

use anyhow::Context;
use axum::Router;
use axum::extract::FromRef;
use commerce_events::Topics;
use commerce_platform::runtime::{self, Parts};
use commerce_platform::{Authenticator, Config, Running, setup};
use sqlx::PgPool;
use sqlx::migrate::Migrator;

pub use events::{CONSUMER, Saga};
pub use http::ApiDoc;

/// The service's own migrations (`shipments`).
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// What the HTTP handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The service's database.
    pub pool: PgPool,
    /// Verifies bearer tokens.
    pub auth: Authenticator,
    /// Where `ShipmentDelivered` is published.
    pub topics: Topics,
}

impl FromRef<AppState> for Authenticator {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

/// The HTTP API (without the operations routes, which [`start`] adds).
pub fn app(state: AppState) -> Router {
    http::router(state)
}

/// Starts the service: its database (created and migrated), the `shipping.saga` consumer, the
/// outbox relay and the HTTP server on `config.addrs.shipping`.
///
/// # Errors
///
/// A message saying what could not be set up.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let pool = setup::database(config, "shipping", &MIGRATOR)
        .await
        .context("shipping: database")?;
    let saga = runtime::consume(
        config,
        &pool,
        CONSUMER,
        &[&config.topics.orders],
        Saga::new(config.topics.clone()),
    )
    .with_context(|| format!("shipping: consumer {CONSUMER}"))?;
    let state = AppState {
        pool: pool.clone(),
        auth: config.authenticator(),
        topics: config.topics.clone(),
    };
    runtime::start(
        "shipping",
        config,
        &pool,
        config.addrs.shipping,
        Parts {
            router: app(state),
            consumers: vec![saga],
            jobs: Vec::new(),
        },
    )
    .await
}
