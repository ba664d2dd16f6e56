//! The commerce system's inventory service: stock per product, all-or-nothing reservations for
//! orders, confirmation and release of reservations, a movement for every change, and a
//! `StockLevelChanged` event for every change (plus a snapshot of every product at start-up).
//!
//! Run it with `cargo run -p commerce-launcher -- inventory` (it listens on `INVENTORY_ADDR`,
//! default `127.0.0.1:8082`, and uses the database `<COMMERCE_DB_PREFIX>_inventory`; see
//! `docs/commerce.md`).
//!
//! - **Saga** ([`Saga`], consumer `inventory.saga` of the products, orders and payments
//!   topics): a product's first `ProductChanged` sets up its stock row (no units); `OrderPlaced` reserves every line or none and publishes `StockReserved` or
//!   `StockReservationFailed`; `PaymentApproved` confirms the reservation (`StockConfirmed`);
//!   `PaymentDeclined` releases it (`StockReleased`); `OrderCancelled` releases units still
//!   reserved and restocks units already sold (`StockRestocked`), so a cancelled order returns
//!   every unit.
//! - **Admin API** ([`app`], bearer JWT with the `admin` role): `GET /api/v1/stock/{id}`,
//!   `POST /api/v1/stock/{id}/add`, `POST /api/v1/stock/{id}/remove` (units out, with a reason,
//!   never below the reserved ones), `PUT /api/v1/stock/{id}`,
//!   `GET /api/v1/stock/{id}/movements`, and the OpenAPI document at `GET /openapi.json`.
//!   `POST /api/v1/stock/{id}/add` and `.../remove` require an `Idempotency-Key`: a retry with
//!   the same key replays the first answer and the units are added or removed once.
//!
//! # Guarantees
//!
//! - **Never negative, never oversold.** The arithmetic ([`domain`]) refuses any change that
//!   would make a total or a reservation negative or reserve more than is owned, and the
//!   `stock` table's `CHECK (reserved >= 0 AND reserved <= total AND total >= 0)` refuses to
//!   commit one anyway. Concurrent reservations serialize on the stock rows' locks, taken in
//!   `product_id` order so they cannot deadlock.
//! - **All or nothing.** An order's reservations, movements, stock figures and outgoing events
//!   commit in one transaction, together with the inbox record of the `OrderPlaced` that caused
//!   them.
//! - **Once per event.** The consumer runs on `inbox::Consumer`: a redelivered event is a
//!   duplicate in the inbox and changes nothing. Events are published at least once through the
//!   outbox; `StockLevelChanged` carries a per-product `version` so readers keep the newest.

#![forbid(unsafe_code)]

pub mod domain;
mod error;
pub mod events;
pub mod http;
mod ledger;
mod repo;

use anyhow::Context;
use commerce_platform::Config;
use commerce_platform::runtime::{self, Parts, Running};
use sqlx::migrate::Migrator;

pub use error::{Error, Result};
pub use events::{Saga, publish_snapshot};
pub use http::AppState;

/// The service's own migrations (`stock`, `reservations`, `movements`; versions 20260302...).
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// The HTTP API (without the operations routes, which [`start`] adds).
pub fn app(state: AppState) -> axum::Router {
    http::router(state)
}

/// The consumer (and consumer group, and inbox) name of the saga.
pub const SAGA_CONSUMER: &str = "inventory.saga";

/// Starts the service: its database (created and migrated), the stock snapshot, the saga
/// consumer, the outbox relay, the retention job and the HTTP server.
///
/// # Errors
///
/// A message saying which part could not start.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let pool = commerce_platform::setup::database(config, "inventory", &MIGRATOR)
        .await
        .context("inventory: database")?;
    publish_snapshot(&pool, &config.topics)
        .await
        .context("inventory: snapshot")?;
    let saga = runtime::consume(
        config,
        &pool,
        SAGA_CONSUMER,
        &[
            &config.topics.products,
            &config.topics.orders,
            &config.topics.payments,
        ],
        Saga::new(config.topics.clone()),
    )
    .context("inventory: consumer")?;
    let state = AppState {
        pool: pool.clone(),
        auth: config.authenticator(),
        topics: config.topics.clone(),
    };
    runtime::start(
        "inventory",
        config,
        &pool,
        config.addrs.inventory,
        Parts {
            router: app(state),
            consumers: vec![saga],
            jobs: Vec::new(),
        },
    )
    .await
}
