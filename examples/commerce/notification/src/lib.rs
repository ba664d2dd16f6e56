//! The commerce system's notification service: tells customers what happens to their orders,
//! one notification per customer-visible event (see `docs/commerce.md`).
//!
//! Run it (with the other services) with `cargo run -p commerce-launcher -- notification`; it
//! listens on `NOTIFICATION_ADDR` (default `127.0.0.1:8086`) and keeps its state in the
//! `commerce_notification` database.
//!
//! # What it does
//!
//! One consumer, `notification.events`, reads the orders, payments and shipments topics
//! ([`Notifier`]) and writes one row of `notifications` per event a customer is told about
//! (the mapping is [`domain::notification_for`]):
//!
//! - `OrderPlaced` -> `order_placed` (units and total), `OrderConfirmed` -> `order_confirmed`,
//!   `OrderCancelled` -> `order_cancelled` (with the reason);
//! - `ShipmentCreated` -> `order_shipped` (carrier and tracking number), `ShipmentDelivered` ->
//!   `order_delivered`;
//! - `PaymentRefunded` -> `payment_refunded` (with the amount);
//! - anything else (payment approvals and declines, stock movements) -> nothing.
//!
//! Sending the notifications (mail, push) is out of scope: the table is the customer's inbox.
//! The service publishes nothing (its outbox relay runs, as in every service, with nothing to
//! relay).
//!
//! The HTTP API only reads: `GET /api/v1/notifications` (any bearer token; the caller's own,
//! oldest first, optionally `order_id=` one order's, `limit=` 1 to 500, default 100), plus
//! `GET /openapi.json` and the operations routes (`/health`, `/ready`, `/metrics`).
//!
//! # Guarantees
//!
//! - **One notification per event, even if it is delivered twice.** The notification commits
//!   in one transaction with the consumer's inbox record, so a redelivered event is skipped;
//!   and `notifications.event_id` is unique (inserted with `ON CONFLICT (event_id) DO
//!   NOTHING`), so even an event that got past the inbox (another consumer name, an inbox
//!   record purged by retention) cannot make a second one.
//! - **A customer sees only their own.** The list is filtered on the token's `sub`, which must
//!   be the `customer_id` the event carried; there is no way to name another customer.
//! - **In the order things happened.** Notifications carry their event's `occurred_at` and are
//!   listed by it (then by id), not by when the consumer got to them.

#![forbid(unsafe_code)]

pub mod domain;
pub mod events;
mod http;
mod repo;

use anyhow::Context;
use axum::Router;
use axum::extract::FromRef;
use commerce_platform::runtime::{self, Parts};
use commerce_platform::{Authenticator, Config, Running, setup};
use sqlx::PgPool;
use sqlx::migrate::Migrator;

pub use events::{CONSUMER, Notifier};
pub use http::ApiDoc;

/// The service's own migrations (`notifications`).
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

/// Starts the service: its database (created and migrated), the `notification.events`
/// consumer, the outbox relay and the HTTP server on `config.addrs.notification`.
///
/// # Errors
///
/// A message saying what could not be set up.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let pool = setup::database(config, "notification", &MIGRATOR)
        .await
        .context("notification: database")?;
    let events = runtime::consume(
        config,
        &pool,
        CONSUMER,
        &[
            &config.topics.orders,
            &config.topics.payments,
            &config.topics.shipments,
        ],
        Notifier,
    )
    .with_context(|| format!("notification: consumer {CONSUMER}"))?;
    let state = AppState {
        pool: pool.clone(),
        auth: config.authenticator(),
    };
    runtime::start(
        "notification",
        config,
        &pool,
        config.addrs.notification,
        Parts {
            router: app(state),
            consumers: vec![events],
            jobs: Vec::new(),
        },
    )
    .await
}
