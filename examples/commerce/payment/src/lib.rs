//! The commerce system's payment service: charges an order once its stock is reserved, at most
//! once per order, through a deterministic fake provider, and refunds it if the order is then
//! cancelled (see `docs/commerce.md`).
//!
//! Run it (with the other services) with `cargo run -p commerce-launcher -- payment`; it listens
//! on `PAYMENT_ADDR` (default `127.0.0.1:8083`) and keeps its state in the `commerce_payment`
//! database.
//!
//! # What it does
//!
//! One consumer, `payment.saga`, reads the inventory and orders topics ([`Saga`]):
//!
//! - `StockReserved` -> a `PENDING` payment, due for the [`charger`], which asks the
//!   [provider] with no transaction open: `APPROVED` and `PaymentApproved`, `DECLINED` and
//!   `PaymentDeclined`, or no answer (asked again every few seconds until the order service's
//!   reservation expiry cancels the order).
//! - `OrderCancelled` -> the order is recorded as cancelled; an `APPROVED` payment is refunded
//!   (`REFUNDED`, `PaymentRefunded`), a `PENDING` one is abandoned (`DECLINED`, "order
//!   cancelled").
//!
//! The HTTP API only reads: `GET /api/v1/payments/{order_id}` (admin bearer token), plus
//! `GET /openapi.json` and the operations routes (`/health`, `/ready`, `/metrics`).
//!
//! # Guarantees
//!
//! - **At most one charge per order.** The `payments` table's primary key is the order id, so
//!   no second payment row can exist, whether the same `StockReserved` is redelivered (the
//!   inbox skips it anyway) or two different events ask for the same order.
//! - **No charge kept after a cancellation.** Cancellations are recorded in
//!   `cancelled_orders`: a reservation for a recorded order is not charged, a pending payment
//!   is abandoned (and not charged when its turn comes), and a charge the provider approved
//!   while the order was being cancelled is refunded at once (`PaymentApproved`, then
//!   `PaymentRefunded`). The saga's handlers and the charger's settlement take a per-order
//!   advisory lock first, so they see each other's writes.
//! - **Exactly-once effect per event.** Each event's effects (payment row, cancellation record,
//!   published events through the outbox) commit in one transaction with the consumer's inbox
//!   record; the events then reach Kafka at least once through the outbox relay.
//!
//! - **A charge is never made inside a transaction.** The [`charger`] claims due payments with
//!   row leases, asks the provider with no transaction open, then settles each payment, fenced
//!   by its lease, with the events it publishes in one transaction. The provider gets the
//!   payment id as its idempotency key, so a charge asked again (a charger that died
//!   mid-charge, a lost lease) is made once.

#![forbid(unsafe_code)]

pub mod charger;
pub mod domain;
pub mod events;
mod http;
pub mod provider;
mod repo;

use anyhow::Context;
use axum::Router;
use axum::extract::FromRef;
use commerce_platform::runtime::{self, Parts};
use commerce_platform::{Authenticator, Config, Running, setup};
use sqlx::PgPool;
use sqlx::migrate::Migrator;

pub use events::{CONSUMER, Saga};
pub use http::ApiDoc;

/// The service's own migrations (`payments`, `cancelled_orders`).
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// What the HTTP handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The service's database.
    pub pool: PgPool,
    /// Verifies bearer tokens.
    pub auth: Authenticator,
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

/// Starts the service: its database (created and migrated), the `payment.saga` consumer, the
/// [`charger`], the outbox relay and the HTTP server on `config.addrs.payment`.
///
/// # Errors
///
/// A message saying what could not be set up.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let pool = setup::database(config, "payment", &MIGRATOR)
        .await
        .context("payment: database")?;
    let saga = runtime::consume(
        config,
        &pool,
        CONSUMER,
        &[&config.topics.inventory, &config.topics.orders],
        Saga::new(config.topics.clone()),
    )
    .with_context(|| format!("payment: consumer {CONSUMER}"))?;
    let charges =
        charger::leases(format!("payment-{}", uuid::Uuid::now_v7())).context("payment: charger")?;
    let charger = charger::spawn(pool.clone(), config.topics.clone(), charges);
    let state = AppState {
        pool: pool.clone(),
        auth: config.authenticator(),
    };
    runtime::start(
        "payment",
        config,
        &pool,
        config.addrs.payment,
        Parts {
            router: app(state),
            consumers: vec![saga],
            jobs: vec![charger],
        },
    )
    .await
}
