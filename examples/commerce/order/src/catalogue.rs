//! The order service's copy of the catalogue: what the product service announces
//! (`ProductChanged`), kept by the `order.catalogue` consumer ([`Catalogue`]) at the newest
//! version of each product, and read when an order is placed, in the order's own transaction.
//!
//! Why a copy and not a call: placing an order runs in the idempotency layer's transaction, and
//! a call to the product service inside it would hold that transaction, its connection and the
//! key's lock for as long as the product service takes to answer (or fail), and make every order
//! depend on the product service being up. The copy costs staleness instead: a product can be
//! ordered once its announcement is consumed (milliseconds after the admin's change commits, at
//! worst the relay's and the consumer's lag), and a price change applies to orders placed after
//! it is consumed. The order keeps the price it was placed at.

use commerce_events::{Envelope, Event};
use commerce_platform::events::EventHandler;
use inbox::HandlerError;
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

/// The consumer's name: its consumer group and its inbox records.
pub const CONSUMER: &str = "order.catalogue";

/// A product as the order service knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, ToSchema)]
pub struct Product {
    /// The product.
    pub product_id: Uuid,
    /// Its unit price, in cents.
    pub price_cents: i64,
    /// Whether it can be ordered.
    pub active: bool,
    /// The version of the newest `ProductChanged` applied.
    pub version: i64,
}

/// Why a product cannot be ordered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PriceError {
    /// No announcement of it has been consumed (yet).
    #[error("unknown product {0}")]
    Unknown(Uuid),
    /// It exists but is not for sale.
    #[error("product {0} is not for sale")]
    Inactive(Uuid),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Applies `ProductChanged` to the copy (only a newer version replaces what is there); other
/// events are ignored.
#[derive(Debug, Clone, Copy, Default)]
pub struct Catalogue;

impl EventHandler for Catalogue {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: Envelope,
    ) -> Result<(), HandlerError> {
        let Event::ProductChanged {
            product_id,
            price_cents,
            active,
            version,
            ..
        } = envelope.event
        else {
            return Ok(());
        };
        let product = Product {
            product_id,
            price_cents,
            active,
            version,
        };
        let stored = apply(conn, &product).await?;
        tracing::info!(%product_id, event_id = %envelope.event_id, version, stored, "order: catalogue");
        Ok(())
    }
}

/// Stores `product` unless the copy already has its version or a newer one. Returns whether it
/// was stored.
///
/// # Errors
///
/// The failed statement's.
pub async fn apply(conn: &mut PgConnection, product: &Product) -> sqlx::Result<bool> {
    let stored = sqlx::query(
        "INSERT INTO catalogue (product_id, price_cents, active, version)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (product_id) DO UPDATE SET
             price_cents = EXCLUDED.price_cents, active = EXCLUDED.active,
             version = EXCLUDED.version, updated_at = now()
         WHERE catalogue.version < EXCLUDED.version",
    )
    .bind(product.product_id)
    .bind(product.price_cents)
    .bind(product.active)
    .bind(product.version)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(stored == 1)
}

/// The product `id` as the copy has it.
///
/// # Errors
///
/// The failed statement's.
pub async fn find(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Product>> {
    sqlx::query_as(
        "SELECT product_id, price_cents, active, version FROM catalogue WHERE product_id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// The products `ids`, in that order, each known and for sale.
pub(crate) async fn for_sale(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<Product>, PriceError> {
    let found: Vec<Product> = sqlx::query_as(
        "SELECT product_id, price_cents, active, version FROM catalogue
         WHERE product_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    ids.iter()
        .map(|&id| {
            let product = found
                .iter()
                .find(|p| p.product_id == id)
                .ok_or(PriceError::Unknown(id))?;
            if product.active {
                Ok(product.clone())
            } else {
                Err(PriceError::Inactive(id))
            }
        })
        .collect()
}
