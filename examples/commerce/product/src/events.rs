//! The stock consumer (`product.stock`, on the inventory topic): keeps `stock_levels` and the
//! Redis cache at the newest `StockLevelChanged` of each product.

use commerce_events::{Envelope, Event};
use commerce_platform::events::EventHandler;
use inbox::HandlerError;
use sqlx::PgConnection;

use crate::cache::StockCache;
use crate::repo;

/// The consumer's name: its consumer group and its inbox records.
pub const CONSUMER: &str = "product.stock";

/// Applies `StockLevelChanged`: upserts `stock_levels` when the version is newer (in the
/// consumer's transaction), then sets the Redis copy when its version is newer. Other events
/// are ignored.
///
/// Redis is written before the runner commits. If Redis fails, the handler fails retriably: the
/// transaction rolls back and the same event is retried (holding its partition), so no event is
/// ever done without having reached both copies. If the commit fails after Redis was written,
/// the retry finds Redis already at that version and writes nothing. Either way both copies only
/// move forward, whatever the order and number of deliveries.
#[derive(Debug, Clone)]
pub struct StockLevels {
    cache: StockCache,
}

impl StockLevels {
    /// A handler writing to `cache`.
    pub fn new(cache: StockCache) -> Self {
        Self { cache }
    }
}

impl EventHandler for StockLevels {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: Envelope,
    ) -> Result<(), HandlerError> {
        let Event::StockLevelChanged {
            product_id,
            total,
            reserved,
            available,
            version,
        } = envelope.event
        else {
            return Ok(());
        };
        let stored =
            repo::upsert_stock_level(conn, product_id, total, reserved, available, version).await?;
        let cached = self
            .cache
            .apply(product_id, i64::from(available), version)
            .await
            .map_err(|error| HandlerError::retriable(format!("redis: {error}")))?;
        tracing::info!(
            %product_id,
            event_id = %envelope.event_id,
            version,
            available,
            stored,
            cached,
            "product: stock level"
        );
        Ok(())
    }
}
