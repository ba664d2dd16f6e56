//! What the product service publishes: `ProductChanged`, the product's whole state at its new
//! version, written to the outbox in the transaction that creates or changes the product, and a
//! snapshot of every product at start-up (so a consumer that started after a product was
//! created, or whose copy was reset, converges without a replay).

use commerce_events::{Event, Topics};
use commerce_platform::events::publish;
use sqlx::{PgConnection, PgPool};

use crate::repo::{self, Product};

/// `product` as the event announcing its state.
fn changed(product: &Product) -> Event {
    Event::ProductChanged {
        product_id: product.id,
        sku: product.sku.clone(),
        name: product.name.clone(),
        price_cents: product.price_cents,
        active: product.active,
        version: product.version,
    }
}

/// Enqueues `ProductChanged` for `product` on the connection's transaction: published if and
/// only if it commits.
///
/// # Errors
///
/// The [`outbox::Error`] of the failed statement.
pub(crate) async fn announce(
    conn: &mut PgConnection,
    topics: &Topics,
    product: &Product,
) -> Result<(), outbox::Error> {
    publish(conn, topics, None, [changed(product)]).await
}

/// Publishes `ProductChanged` for every product at its current version, in one transaction.
/// Consumers keep the newest version, so the copies already up to date ignore it. Returns how
/// many products were announced.
///
/// # Errors
///
/// A failed statement; nothing is enqueued then.
pub async fn publish_snapshot(pool: &PgPool, topics: &Topics) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    let products = repo::all(&mut tx).await?;
    publish(&mut tx, topics, None, products.iter().map(changed)).await?;
    tx.commit().await?;
    tracing::info!(
        products = products.len(),
        "product: catalogue snapshot published"
    );
    Ok(products.len() as u64)
}
