//! The commerce system's product service: the catalogue (admins create and change products,
//! everyone reads the active ones with their available stock), announced to the other services
//! as `ProductChanged` events, and a Redis cache of stock figures fed by inventory's
//! `StockLevelChanged` events (see `docs/commerce.md`).
//!
//! Run it (with the other services) with `cargo run -p commerce-launcher -- product`; it listens
//! on `PRODUCT_ADDR` (default `127.0.0.1:8084`), keeps its state in the `commerce_product`
//! database and caches stock in Redis at `REDIS_URL`.
//!
//! # Routes
//!
//! | route                                | who                  | what                                      |
//! |--------------------------------------|----------------------|-------------------------------------------|
//! | `POST /api/v1/products`              | admin                | create (201 + `Location`; 409 on a SKU in use) |
//! | `PUT /api/v1/products/{id}`          | admin                | change name, description, price, `active` |
//! | `GET /api/v1/admin/products`         | admin                | every product, with stock                 |
//! | `GET /api/v1/products`               | anyone               | active products, with stock               |
//! | `GET /api/v1/products/{id}`          | anyone               | an active product, with stock             |
//! | `GET /openapi.json`                  | anyone               | the OpenAPI document                      |
//!
//! # What it publishes
//!
//! `ProductChanged { product_id, sku, name, price_cents, active, version }` on
//! `<prefix>.products`, in the transaction that creates or changes the product (the version is 1
//! at creation and grows with every change), and for every product at start-up. The order
//! service prices orders from its copy of these events, and inventory sets up a product's stock
//! row from the first one.
//!
//! Lists take `?limit=` (1 to 500, default 100) and `?offset=`, ordered by SKU. Bodies reject
//! unknown fields; every error is problem+json and writes nothing. `POST /api/v1/products`
//! requires an `Idempotency-Key`: a retry with the same key replays the first answer and the
//! product is created once.
//!
//! # Stock figures and how stale they can be
//!
//! Inventory publishes `StockLevelChanged { product_id, total, reserved, available, version }`
//! on every change, the version growing per product, and a snapshot of every product at its
//! start-up. The `product.stock` consumer ([`StockLevels`]) stores each one in `stock_levels`
//! (in its transaction, only when the version is newer) and in Redis, key
//! `<prefix>:stock:<product id>` = hash `{available, version}`, through a Lua script that writes
//! only a newer version. Redeliveries and reordering therefore never move either copy backwards,
//! and both converge on the newest figure once the last event of a product is consumed.
//!
//! The figure served lags the truth in inventory by: the outbox relay's latency (milliseconds
//! after the commit through `LISTEN/NOTIFY`, at worst its 500 ms poll interval, longer if the
//! relay or the broker is down), plus the consumer's lag (how far behind the inventory topic it
//! is, unbounded while this service or Redis is down: the consumer retries the same event until
//! Redis answers). It is a display figure: reservations are decided by inventory, never from it.
//!
//! Reads take the figure from Redis; when the key is missing (Redis flushed or restarted) they
//! fall back to `stock_levels` in PostgreSQL and write it back to Redis (version-guarded); when
//! Redis cannot be reached they read PostgreSQL alone; a product neither knows has
//! `"available": null`. Redis is not part of `/ready`: the service serves without it.
//!
//! Versions must only grow: if inventory's data is ever reset so that versions start again,
//! clear the cache keys and `stock_levels` too.
//!
//! `<prefix>` is the stack's topic prefix (`COMMERCE_TOPIC_PREFIX`, default `commerce`, which
//! also keeps the stacks' consumer groups apart), so stacks sharing a Redis server keep separate
//! keys.

#![forbid(unsafe_code)]

mod admin;
mod announce;
pub mod cache;
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

pub use announce::publish_snapshot;
pub use cache::StockCache;
pub use events::{CONSUMER, StockLevels};
pub use http::ApiDoc;

/// The service's own migrations (`products`, `stock_levels`).
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// What the HTTP handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The service's database.
    pub pool: PgPool,
    /// Where `ProductChanged` is published.
    pub topics: Topics,
    /// Verifies bearer tokens.
    pub auth: Authenticator,
    /// The Redis stock cache.
    pub stock: StockCache,
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

/// Starts the service: its database (created and migrated), the catalogue snapshot
/// ([`publish_snapshot`]), the `product.stock` consumer, the outbox relay and the HTTP server on
/// `config.addrs.product`. Redis is connected on first use.
///
/// # Errors
///
/// A message saying what could not be set up.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let pool = setup::database(config, "product", &MIGRATOR)
        .await
        .context("product: database")?;
    let stock = StockCache::open(&config.redis_url, config.topics.prefix.as_str())
        .context("product: REDIS_URL")?;
    let consumer = runtime::consume(
        config,
        &pool,
        CONSUMER,
        &[&config.topics.inventory],
        StockLevels::new(stock.clone()),
    )
    .with_context(|| format!("product: consumer {CONSUMER}"))?;
    publish_snapshot(&pool, &config.topics)
        .await
        .context("product: catalogue snapshot")?;
    let state = AppState {
        pool: pool.clone(),
        topics: config.topics.clone(),
        auth: config.authenticator(),
        stock,
    };
    runtime::start(
        "product",
        config,
        &pool,
        config.addrs.product,
        Parts {
            router: app(state),
            consumers: vec![consumer],
            jobs: Vec::new(),
        },
    )
    .await
}
