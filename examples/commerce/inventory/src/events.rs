//! The saga's inventory step ([`Saga`], an [`inbox::Handler`]) and what publishes stock
//! levels ([`publish_snapshot`]).
//!
//! Every change here happens in one transaction with the events it publishes (through the
//! outbox) and, under the [`inbox::Consumer`], with the inbox record of the event that
//! caused it: an event has its effect once, however often it is delivered.

use std::collections::HashMap;

use commerce_events::{Cause, Envelope, Event, Line, Topics};
use commerce_platform::events::{EventHandler, publish};
use inbox::HandlerError;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{self, Level, MovementKind, Settlement};
use crate::repo::{self, NewMovement, StockRow};
use crate::{Error, Result};

/// The reason published when a declined payment releases a reservation.
pub const PAYMENT_DECLINED: &str = "payment declined";

/// The inventory consumer of the products, orders and payments topics (run it as
/// `inventory.saga`):
///
/// - `ProductChanged`: sets up the product's stock row (no units) unless it has one.
/// - `OrderPlaced`: reserves every line or none. The stock rows are locked `FOR UPDATE` in
///   `product_id` order, checked, then updated together
///   with the reservations and movements; publishes `StockReserved` and one
///   `StockLevelChanged` per product. If a product is short or has no stock, publishes
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
        let cause = envelope.cause();
        let event_id = cause.event_id;
        match envelope.event {
            Event::OrderPlaced {
                order_id,
                customer_id,
                lines,
                total_cents,
            } => {
                let placed = Placed {
                    order_id,
                    customer_id,
                    lines,
                    total_cents,
                };
                reserve(conn, &self.topics, cause, placed).await?;
            }
            Event::PaymentApproved { order_id, .. } => {
                settle(
                    conn,
                    &self.topics,
                    cause,
                    order_id,
                    Settlement::Confirm,
                    None,
                )
                .await?;
            }
            Event::PaymentDeclined { order_id, .. } => {
                let reason = Some(PAYMENT_DECLINED.to_owned());
                settle(
                    conn,
                    &self.topics,
                    cause,
                    order_id,
                    Settlement::Release,
                    reason,
                )
                .await?;
            }
            Event::OrderCancelled {
                order_id, reason, ..
            } => {
                for settlement in [Settlement::Release, Settlement::Restock] {
                    settle(
                        conn,
                        &self.topics,
                        cause,
                        order_id,
                        settlement,
                        Some(reason.clone()),
                    )
                    .await?;
                }
            }
            Event::ProductChanged { product_id, .. } => {
                repo::ensure_stock(conn, product_id)
                    .await
                    .map_err(Error::from)?;
            }
            other => {
                tracing::debug!(%event_id, event_type = other.event_type(), "inventory: ignoring event");
            }
        }
        Ok(())
    }

    /// Locks the reservations of the orders the batch settles, then the stock rows of every
    /// product it reserves or settles, each in one statement and in key order: batches of the
    /// orders and the payments topics' partitions share these rows, and take them in that order.
    async fn lock_batch(
        &self,
        conn: &mut PgConnection,
        envelopes: Vec<&Envelope>,
    ) -> Result<(), HandlerError> {
        let mut products = Vec::new();
        let mut orders = Vec::new();
        for envelope in envelopes {
            match &envelope.event {
                Event::OrderPlaced { lines, .. } => {
                    products.extend(lines.iter().map(|line| line.product_id));
                }
                Event::PaymentApproved { order_id, .. }
                | Event::PaymentDeclined { order_id, .. }
                | Event::OrderCancelled { order_id, .. } => orders.push(*order_id),
                _ => {}
            }
        }
        products.extend(
            repo::lock_orders_reservations(conn, &orders)
                .await
                .map_err(Error::from)?,
        );
        products.sort_unstable();
        products.dedup();
        repo::lock_stock(conn, &products)
            .await
            .map_err(Error::from)?;
        Ok(())
    }
}

/// An `OrderPlaced` payload.
struct Placed {
    order_id: Uuid,
    customer_id: String,
    lines: Vec<Line>,
    total_cents: i64,
}

/// All or nothing: see [`Saga`].
async fn reserve(
    conn: &mut PgConnection,
    topics: &Topics,
    cause: Cause,
    placed: Placed,
) -> Result<()> {
    let (order_id, event_id) = (placed.order_id, cause.event_id);
    if repo::has_reservations(conn, order_id).await? {
        tracing::info!(%order_id, %event_id, "inventory: order already reserved; ignoring");
        return Ok(());
    }
    let demand = match domain::demand(&placed.lines) {
        Ok(demand) => demand,
        Err(rejection) => {
            return reservation_failed(conn, topics, cause, order_id, rejection).await;
        }
    };
    let product_ids: Vec<Uuid> = demand.iter().map(|&(product_id, _)| product_id).collect();
    let rows = repo::lock_stock(conn, &product_ids).await?;
    let levels: HashMap<Uuid, Level> = rows.iter().map(|r| (r.product_id, r.level)).collect();
    let holds = match domain::can_reserve(&demand, &levels) {
        Ok(holds) => holds,
        Err(rejection) => {
            return reservation_failed(conn, topics, cause, order_id, rejection).await;
        }
    };
    let mut events = vec![Event::StockReserved {
        order_id,
        total_cents: placed.total_cents,
        customer_id: placed.customer_id,
    }];
    for hold in &holds {
        let row = StockRow {
            product_id: hold.product_id,
            level: hold.before,
            version: 0,
        };
        let changed = change(conn, row, hold.after, MovementKind::Reserve, Some(order_id)).await?;
        events.push(level_changed(&changed));
    }
    if let Err(e) = repo::insert_reservations(conn, order_id, &demand).await {
        // A concurrent OrderPlaced for the same order (another event id) committed first: retry,
        // and the retry finds its reservations and does nothing.
        if e.as_database_error()
            .is_some_and(|d| d.is_unique_violation())
        {
            return Err(Error::Contention(format!(
                "order {order_id} was reserved concurrently"
            )));
        }
        return Err(e.into());
    }
    publish(conn, topics, Some(cause), events).await?;
    tracing::info!(%order_id, %event_id, products = holds.len(), "inventory: stock reserved");
    Ok(())
}

async fn reservation_failed(
    conn: &mut PgConnection,
    topics: &Topics,
    cause: Cause,
    order_id: Uuid,
    rejection: domain::Rejection,
) -> Result<()> {
    let (event_id, reason) = (cause.event_id, rejection.to_string());
    tracing::info!(%order_id, %event_id, %reason, "inventory: reservation failed");
    let failed = Event::StockReservationFailed { order_id, reason };
    publish(conn, topics, Some(cause), [failed]).await?;
    Ok(())
}

/// Moves an order's reservations in `settlement.from()` on (confirm, release or restock): see
/// [`Saga`].
async fn settle(
    conn: &mut PgConnection,
    topics: &Topics,
    cause: Cause,
    order_id: Uuid,
    settlement: Settlement,
    reason: Option<String>,
) -> Result<()> {
    let event_id = cause.event_id;
    let held = repo::lock_reservations(conn, order_id, settlement.from()).await?;
    if held.is_empty() {
        tracing::info!(%order_id, %event_id, ?settlement, "inventory: no reservation of the order to settle; nothing to do");
        return Ok(());
    }
    let product_ids: Vec<Uuid> = held.iter().map(|&(product_id, _)| product_id).collect();
    let rows: HashMap<Uuid, StockRow> = repo::lock_stock(conn, &product_ids)
        .await?
        .into_iter()
        .map(|row| (row.product_id, row))
        .collect();
    let reason = reason.unwrap_or_default();
    let mut events = vec![match settlement {
        Settlement::Confirm => Event::StockConfirmed { order_id },
        Settlement::Release => Event::StockReleased { order_id, reason },
        Settlement::Restock => Event::StockRestocked { order_id, reason },
    }];
    for (product_id, quantity) in held {
        // The foreign key keeps a reservation's stock row.
        let row = *rows.get(&product_id).ok_or(sqlx::Error::RowNotFound)?;
        let after = settlement.apply(row.level, quantity)?;
        let changed = change(conn, row, after, settlement.kind(), Some(order_id)).await?;
        events.push(level_changed(&changed));
    }
    repo::set_reservations_state(conn, order_id, settlement.from(), settlement.target()).await?;
    publish(conn, topics, Some(cause), events).await?;
    tracing::info!(%order_id, %event_id, ?settlement, "inventory: reservation settled");
    Ok(())
}

/// Writes a locked row's new figures and records the movement; returns the new row.
pub(crate) async fn change(
    conn: &mut PgConnection,
    row: StockRow,
    after: Level,
    kind: MovementKind,
    order_id: Option<Uuid>,
) -> Result<StockRow> {
    let version = repo::write_level(conn, row.product_id, after).await?;
    repo::record_movement(
        conn,
        &NewMovement {
            product_id: row.product_id,
            order_id,
            kind,
            before: row.level,
            after,
        },
    )
    .await?;
    Ok(StockRow {
        product_id: row.product_id,
        level: after,
        version,
    })
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
/// [`Error::Database`] or [`Error::Outbox`] when a statement fails; nothing is enqueued then.
pub async fn publish_snapshot(pool: &PgPool, topics: &Topics) -> Result<u64> {
    let mut tx = pool.begin().await?;
    let rows = repo::all_stock_shared(&mut tx).await?;
    let count = rows.len() as u64;
    publish(&mut tx, topics, None, rows.iter().map(level_changed)).await?;
    tx.commit().await?;
    tracing::info!(products = count, "inventory: stock snapshot published");
    Ok(count)
}
