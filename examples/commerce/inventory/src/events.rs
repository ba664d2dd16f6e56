//! The saga's inventory step ([`Saga`], an [`inbox::Handler`]) and what publishes stock
//! levels ([`publish_snapshot`]).
//!
//! Every change here happens in one transaction with the events it publishes (through the
//! outbox) and, under the [`inbox::Consumer`], with the inbox record of the event that
//! caused it: an event has its effect once, however often it is delivered.

use commerce_events::{Envelope, Event, Topics};
use commerce_platform::events::{EventHandler, publish};
use inbox::{HandlerError, Message};
use sqlx::{PgConnection, PgPool};
use tracing::Span;

use crate::Result;
use crate::domain::{Level, MovementKind};
use crate::ledger::{self, Step};
use crate::repo::{self, NewMovement, StockRow};

/// The reason published when a declined payment releases a reservation.
pub const PAYMENT_DECLINED: &str = "payment declined";

/// The inventory consumer of the products, orders and payments topics (run it as
/// `inventory.saga`):
///
/// - `ProductChanged`: sets up the product's stock row (no units) unless it has one.
/// - `OrderPlaced`: reserves every line or none, with the reservations and movements;
///   publishes `StockReserved`. If a product is short or has no stock, publishes
///   `StockReservationFailed` (naming the product) and changes nothing else.
/// - `PaymentApproved`: confirms the order's `RESERVED` reservations (`total -= q`,
///   `reserved -= q`): `StockConfirmed` and `StockLevelChanged`s.
/// - `PaymentDeclined` (reason `payment declined`): releases them (`reserved -= q`):
///   `StockReleased` and `StockLevelChanged`s.
/// - `OrderCancelled` (its reason): gives every unit back to where it belongs: `RESERVED` ones
///   are released as above, `CONFIRMED` (sold) ones are restocked (`total += q`, reservation
///   `RESTOCKED`): `StockRestocked` and `StockLevelChanged`s.
///
/// A batch takes its locks up front ([`EventHandler::lock_batch`]): the reservations of the
/// orders it settles, then the stock rows of every product it touches, each in key order, so
/// concurrent batches of different partitions (and orders) cannot deadlock.
///
/// Each step moves only reservations in the state it starts from, so a redelivered or late event
/// changes nothing: a `PaymentApproved` that arrives after `OrderCancelled` released the units
/// finds nothing `RESERVED` and sells nothing (payment refunds the charge). Other event types are
/// ignored.
#[derive(Debug, Clone)]
pub struct Saga {
    topics: Topics,
}

impl Saga {
    /// A handler publishing on `topics`.
    pub fn new(topics: Topics) -> Self {
        Self { topics }
    }
}

impl EventHandler for Saga {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: Envelope,
    ) -> Result<(), HandlerError> {
        let steps = Step::of(envelope, Span::current()).into_iter().collect();
        Ok(ledger::apply(conn, &self.topics, steps).await?)
    }

    async fn handle_batch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        batch: Vec<(Envelope, &'a Message)>,
    ) -> Result<(), HandlerError> {
        let steps = batch
            .into_iter()
            .filter_map(|(envelope, message)| Step::of(envelope, message.span()))
            .collect();
        Ok(ledger::apply(conn, &self.topics, steps).await?)
    }
}

/// Writes a locked row's new figures and records the movement (an admin's, with `reason` for a
/// removal); returns the new row.
pub(crate) async fn change(
    conn: &mut PgConnection,
    row: StockRow,
    after: Level,
    kind: MovementKind,
    reason: Option<String>,
) -> Result<StockRow> {
    let changed = StockRow {
        product_id: row.product_id,
        level: after,
        version: row.version + 1,
    };
    repo::write_levels(conn, &[(changed, 1)]).await?;
    repo::record_movements(
        conn,
        &[NewMovement {
            product_id: row.product_id,
            order_id: None,
            kind,
            before: row.level,
            after,
            reason,
        }],
    )
    .await?;
    Ok(changed)
}

/// `StockLevelChanged` for a row.
pub(crate) fn level_changed(row: &StockRow) -> Event {
    Event::StockLevelChanged {
        product_id: row.product_id,
        total: row.level.total,
        reserved: row.level.reserved,
        available: row.level.available(),
        version: row.version,
    }
}

/// Enqueues a `StockLevelChanged` with the current figures and version of every product, in one
/// transaction (holding a share lock on the stock rows, so no change commits in between), and
/// returns how many. [`start`](crate::start) calls it, so the product service can rebuild its
/// cache from the inventory topic.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) or [`Error::Outbox`](crate::Error::Outbox) when a statement fails; nothing is enqueued then.
pub async fn publish_snapshot(pool: &PgPool, topics: &Topics) -> Result<u64> {
    let mut tx = pool.begin().await?;
    let rows = repo::all_stock_shared(&mut tx).await?;
    let count = rows.len() as u64;
    publish(&mut tx, topics, None, rows.iter().map(level_changed)).await?;
    tx.commit().await?;
    tracing::info!(products = count, "inventory: stock snapshot published");
    Ok(count)
}
