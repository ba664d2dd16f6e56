//! The saga's events applied as a batch: every row the batch touches is locked and read in two
//! statements, the events are worked out in memory in partition order with the [`domain`]
//! arithmetic, and the results are written in a few set-based statements. One event is a batch
//! of one, so there is one way to apply them.
//!
//! A batch holds its stock rows from its first statement to its commit, and every order of
//! every partition needs one of them: the shorter that transaction, the more orders inventory
//! settles. Each product touched gets one `StockLevelChanged` per batch, with its figures and
//! version after the batch (the version counts every change, so it grows by as many).

use std::collections::{BTreeMap, HashMap};

use commerce_events::{Cause, Envelope, Event, Line, Topics};
use commerce_platform::events::{enqueue, to_outbox};
use sqlx::PgConnection;
use tracing::Span;
use uuid::Uuid;

use crate::domain::{self, Level, MovementKind, ReservationState, Settlement};
use crate::events::{PAYMENT_DECLINED, level_changed};
use crate::repo::{self, NewMovement, StockRow};
use crate::{Error, Result};

/// One saga event to apply, with the span its effects are traced in.
pub(crate) struct Step {
    cause: Cause,
    span: Span,
    action: Action,
}

enum Action {
    /// `OrderPlaced`: reserve every line or none.
    Reserve {
        order_id: Uuid,
        customer_id: String,
        lines: Vec<Line>,
        total_cents: i64,
    },
    /// Move the order's reservations on.
    Settle {
        order_id: Uuid,
        settlements: Vec<Settlement>,
        reason: String,
    },
    /// `ProductChanged`: the product gets a stock row.
    Announce { product_id: Uuid },
}

impl Step {
    /// What `envelope` asks of inventory, traced in `span`; `None` for events it ignores.
    pub(crate) fn of(envelope: Envelope, span: Span) -> Option<Self> {
        let cause = envelope.cause();
        let settle = |order_id, settlements: &[Settlement], reason: &str| Action::Settle {
            order_id,
            settlements: settlements.to_vec(),
            reason: reason.to_owned(),
        };
        let action = match envelope.event {
            Event::OrderPlaced {
                order_id,
                customer_id,
                lines,
                total_cents,
            } => Action::Reserve {
                order_id,
                customer_id,
                lines,
                total_cents,
            },
            Event::PaymentApproved { order_id, .. } => settle(order_id, &[Settlement::Confirm], ""),
            Event::PaymentDeclined { order_id, .. } => {
                settle(order_id, &[Settlement::Release], PAYMENT_DECLINED)
            }
            Event::OrderCancelled {
                order_id, reason, ..
            } => settle(
                order_id,
                &[Settlement::Release, Settlement::Restock],
                &reason,
            ),
            Event::ProductChanged { product_id, .. } => Action::Announce { product_id },
            other => {
                tracing::debug!(event_id = %cause.event_id, event_type = other.event_type(), "inventory: ignoring event");
                return None;
            }
        };
        Some(Self {
            cause,
            span,
            action,
        })
    }

    fn order_id(&self) -> Option<Uuid> {
        match &self.action {
            Action::Reserve { order_id, .. } | Action::Settle { order_id, .. } => Some(*order_id),
            Action::Announce { .. } => None,
        }
    }
}

/// What an `OrderPlaced` came to.
enum Reservation {
    Made,
    Refused(domain::Rejection),
    /// The order has reservations already (its `OrderPlaced` again, with another event id).
    Already,
}

/// One product's reservation for one order: its state now, and as stored (`None`: new).
struct Held {
    quantity: i32,
    state: ReservationState,
    stored: Option<ReservationState>,
}

/// The batch's working copy of the rows it locked, and what it will write.
struct Ledger<'t> {
    topics: &'t Topics,
    stock: HashMap<Uuid, StockRow>,
    /// Per product changed: how many changes, and the step that made the last one.
    changed: BTreeMap<Uuid, (i64, usize)>,
    reservations: BTreeMap<(Uuid, Uuid), Held>,
    movements: Vec<NewMovement>,
    events: Vec<outbox::NewEvent>,
}

/// Applies `steps` in order on `conn`, inside the consumer's transaction.
///
/// # Errors
///
/// A failed statement; [`Error::Stock`] when a settlement would break the stock invariant
/// (permanent: the runner then applies the batch's events one by one and dead-letters that
/// one); [`Error::Contention`] when another transaction reserved one of the orders first.
pub(crate) async fn apply(
    conn: &mut PgConnection,
    topics: &Topics,
    steps: Vec<Step>,
) -> Result<()> {
    let announced: Vec<Uuid> = steps
        .iter()
        .filter_map(|step| match step.action {
            Action::Announce { product_id } => Some(product_id),
            _ => None,
        })
        .collect();
    repo::ensure_stocks(conn, &announced).await?;
    let mut orders: Vec<Uuid> = steps.iter().filter_map(Step::order_id).collect();
    orders.sort_unstable();
    orders.dedup();
    if orders.is_empty() {
        return Ok(());
    }
    // The lock order of every transaction here: reservations, then stock rows by product.
    let stored = repo::lock_orders_reservations(conn, &orders).await?;
    let mut products: Vec<Uuid> = stored.iter().map(|r| r.product_id).collect();
    for step in &steps {
        if let Action::Reserve { lines, .. } = &step.action {
            products.extend(lines.iter().map(|line| line.product_id));
        }
    }
    products.sort_unstable();
    products.dedup();
    let stock = repo::lock_stock(conn, &products).await?;
    let mut ledger = Ledger {
        topics,
        stock: stock.into_iter().map(|row| (row.product_id, row)).collect(),
        changed: BTreeMap::new(),
        reservations: stored
            .into_iter()
            .map(|r| {
                let held = Held {
                    quantity: r.quantity,
                    state: r.state,
                    stored: Some(r.state),
                };
                ((r.order_id, r.product_id), held)
            })
            .collect(),
        movements: Vec::new(),
        events: Vec::new(),
    };
    for (index, step) in steps.iter().enumerate() {
        ledger.step(index, step)?;
    }
    ledger.write(conn, &steps).await
}

impl Ledger<'_> {
    fn step(&mut self, index: usize, step: &Step) -> Result<()> {
        let _traced = step.span.enter();
        match &step.action {
            Action::Reserve {
                order_id,
                customer_id,
                lines,
                total_cents,
            } => {
                let (order_id, event_id) = (*order_id, step.cause.event_id);
                let event = match self.reserve(index, order_id, lines) {
                    Reservation::Made => {
                        tracing::info!(%order_id, %event_id, "inventory: stock reserved");
                        Event::StockReserved {
                            order_id,
                            total_cents: *total_cents,
                            customer_id: customer_id.clone(),
                        }
                    }
                    Reservation::Refused(rejection) => {
                        tracing::info!(%order_id, %event_id, %rejection, "inventory: reservation failed");
                        Event::StockReservationFailed {
                            order_id,
                            reason: rejection.to_string(),
                        }
                    }
                    Reservation::Already => {
                        tracing::info!(%order_id, %event_id, "inventory: order already reserved; ignoring");
                        return Ok(());
                    }
                };
                self.publish(step.cause, event);
            }
            Action::Settle {
                order_id,
                settlements,
                reason,
            } => {
                for &settlement in settlements {
                    if self.settle(index, *order_id, settlement)? {
                        tracing::info!(%order_id, event_id = %step.cause.event_id, ?settlement, "inventory: reservation settled");
                        let (order_id, reason) = (*order_id, reason.clone());
                        self.publish(
                            step.cause,
                            match settlement {
                                Settlement::Confirm => Event::StockConfirmed { order_id },
                                Settlement::Release => Event::StockReleased { order_id, reason },
                                Settlement::Restock => Event::StockRestocked { order_id, reason },
                            },
                        );
                    }
                }
            }
            Action::Announce { .. } => {}
        }
        Ok(())
    }

    /// Reserves every line of `order_id` or none.
    fn reserve(&mut self, index: usize, order_id: Uuid, lines: &[Line]) -> Reservation {
        if self.has_reservations(order_id) {
            return Reservation::Already;
        }
        let levels: HashMap<Uuid, Level> = self
            .stock
            .iter()
            .map(|(&product_id, row)| (product_id, row.level))
            .collect();
        let holds = domain::demand(lines).and_then(|demand| domain::can_reserve(&demand, &levels));
        let holds = match holds {
            Ok(holds) => holds,
            Err(rejection) => return Reservation::Refused(rejection),
        };
        for hold in holds {
            self.change(
                index,
                hold.product_id,
                hold.after,
                MovementKind::Reserve,
                order_id,
            );
            self.reservations.insert(
                (order_id, hold.product_id),
                Held {
                    quantity: hold.quantity,
                    state: ReservationState::Reserved,
                    stored: None,
                },
            );
        }
        Reservation::Made
    }

    fn has_reservations(&self, order_id: Uuid) -> bool {
        self.reservations
            .range((order_id, Uuid::nil())..=(order_id, Uuid::max()))
            .next()
            .is_some()
    }

    /// Moves `order_id`'s reservations in `settlement.from()` on; `false` when it has none.
    fn settle(&mut self, index: usize, order_id: Uuid, settlement: Settlement) -> Result<bool> {
        let held: Vec<(Uuid, i32)> = self
            .reservations
            .range_mut((order_id, Uuid::nil())..=(order_id, Uuid::max()))
            .filter(|(_, held)| held.state == settlement.from())
            .map(|(&(_, product_id), held)| {
                held.state = settlement.target();
                (product_id, held.quantity)
            })
            .collect();
        for &(product_id, quantity) in &held {
            // The foreign key keeps a reservation's stock row, and it was locked with the others.
            let row = self
                .stock
                .get(&product_id)
                .ok_or(sqlx::Error::RowNotFound)?;
            let after = settlement.apply(row.level, quantity)?;
            self.change(index, product_id, after, settlement.kind(), order_id);
        }
        Ok(!held.is_empty())
    }

    fn change(
        &mut self,
        index: usize,
        product_id: Uuid,
        after: Level,
        kind: MovementKind,
        order_id: Uuid,
    ) {
        if let Some(row) = self.stock.get_mut(&product_id) {
            self.movements.push(NewMovement {
                product_id,
                order_id: Some(order_id),
                kind,
                before: row.level,
                after,
                reason: None,
            });
            row.level = after;
            let changes = self.changed.entry(product_id).or_insert((0, index));
            *changes = (changes.0 + 1, index);
        }
    }

    /// Enqueues `event`, caused by `cause`, in the current step's span.
    fn publish(&mut self, cause: Cause, event: Event) {
        let envelope = event.caused_by(cause);
        self.events
            .push(to_outbox(&envelope, self.topics).with_trace_context());
    }

    /// Writes what the steps did: stock figures, movements, reservations, then the events (the
    /// steps' in order, then one `StockLevelChanged` per product changed, in the span of the
    /// step that changed it last).
    async fn write(mut self, conn: &mut PgConnection, steps: &[Step]) -> Result<()> {
        let levels: Vec<(StockRow, i64)> = self
            .changed
            .iter()
            .filter_map(|(product_id, &(changes, _))| {
                let row = self.stock.get(product_id)?;
                Some((*row, changes))
            })
            .collect();
        repo::write_levels(conn, &levels).await?;
        repo::record_movements(conn, &self.movements).await?;
        let mut new = Vec::new();
        let mut moved = Vec::new();
        for (&(order_id, product_id), held) in &self.reservations {
            match held.stored {
                None => new.push((order_id, product_id, held.quantity, held.state)),
                Some(stored) if stored != held.state => {
                    moved.push((order_id, product_id, held.state));
                }
                Some(_) => {}
            }
        }
        if let Err(e) = repo::insert_reservations(conn, &new).await {
            // A concurrent OrderPlaced of one of these orders (another event id) committed
            // first: retry, and the retry finds its reservations and does nothing.
            if e.as_database_error()
                .is_some_and(|d| d.is_unique_violation())
            {
                return Err(Error::Contention(
                    "an order of the batch was reserved concurrently".into(),
                ));
            }
            return Err(e.into());
        }
        repo::set_reservations_states(conn, &moved).await?;
        for (row, changes) in levels {
            let step = &steps[self.changed[&row.product_id].1];
            let _traced = step.span.enter();
            let row = StockRow {
                version: row.version + changes,
                ..row
            };
            self.publish(step.cause, level_changed(&row));
        }
        enqueue(conn, &self.events).await?;
        Ok(())
    }
}
