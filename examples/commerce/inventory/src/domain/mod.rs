//! Stock arithmetic: plain functions over [`Level`]s, no I/O.
//!
//! Every function returns the new figures or says why the change is refused; none can produce a
//! negative total, a negative reservation or more reserved than owned (the database's `CHECK`
//! constraint backs this up).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use commerce_events::Line;
use uuid::Uuid;

/// The most units one admin request may add.
pub const MAX_ADD: i32 = 1_000_000;

/// A product's stock figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    /// Units owned.
    pub total: i32,
    /// Units held by reservations (at most `total`).
    pub reserved: i32,
}

impl Level {
    /// An empty level (nothing owned, nothing reserved): a product's stock before its first add.
    pub const EMPTY: Level = Level {
        total: 0,
        reserved: 0,
    };

    /// Units that can still be reserved: `total - reserved`.
    pub fn available(self) -> i32 {
        self.total - self.reserved
    }

    /// Whether the figures hold the invariant `0 <= reserved <= total`.
    pub fn is_valid(self) -> bool {
        self.reserved >= 0 && self.reserved <= self.total
    }

    /// `(delta_total, delta_reserved)` from `self` to `after`, as a movement records it.
    pub fn delta_to(self, after: Level) -> (i32, i32) {
        (after.total - self.total, after.reserved - self.reserved)
    }
}

/// Why a change of one product's stock is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StockError {
    /// A quantity that is zero, negative or too large for the operation.
    #[error("invalid quantity {0}")]
    InvalidQuantity(i64),
    /// More units asked for than are available.
    #[error("{requested} requested, {available} available")]
    Insufficient {
        /// Units asked for.
        requested: i32,
        /// Units available.
        available: i32,
    },
    /// Settling (confirming or releasing) more units than are reserved: the data is inconsistent.
    #[error("{requested} units to settle, only {reserved} reserved")]
    NotReserved {
        /// Units to settle.
        requested: i32,
        /// Units reserved.
        reserved: i32,
    },
    /// A new total below what reservations hold.
    #[error("total {total} is below the {reserved} reserved units")]
    BelowReserved {
        /// The requested total.
        total: i64,
        /// Units reserved.
        reserved: i32,
    },
    /// The total would not fit the stock figure's range.
    #[error("the total would exceed {}", i32::MAX)]
    TooLarge,
}

fn positive(quantity: i32) -> Result<(), StockError> {
    if quantity > 0 {
        Ok(())
    } else {
        Err(StockError::InvalidQuantity(quantity.into()))
    }
}

/// Adds `quantity` units (an admin restock): `total += quantity`, `1..=MAX_ADD` at a time.
///
/// # Errors
///
/// [`StockError::InvalidQuantity`] outside `1..=MAX_ADD`, [`StockError::TooLarge`] on overflow.
pub fn add(level: Level, quantity: i32) -> Result<Level, StockError> {
    if !(1..=MAX_ADD).contains(&quantity) {
        return Err(StockError::InvalidQuantity(quantity.into()));
    }
    let total = level
        .total
        .checked_add(quantity)
        .ok_or(StockError::TooLarge)?;
    Ok(Level { total, ..level })
}

/// Takes `quantity` units out (an admin's outbound or write-off): `total -= quantity`,
/// `1..=MAX_ADD` at a time, refused below what is reserved.
///
/// # Errors
///
/// [`StockError::InvalidQuantity`] outside `1..=MAX_ADD`, [`StockError::BelowReserved`] when
/// fewer units than reserved would be left.
pub fn remove(level: Level, quantity: i32) -> Result<Level, StockError> {
    if !(1..=MAX_ADD).contains(&quantity) {
        return Err(StockError::InvalidQuantity(quantity.into()));
    }
    adjust(level, i64::from(level.total) - i64::from(quantity))
}

/// Sets the total (an admin stock count): refused below what is reserved.
///
/// # Errors
///
/// [`StockError::BelowReserved`] when `total < reserved` (including any negative total),
/// [`StockError::TooLarge`] beyond `i32::MAX`.
pub fn adjust(level: Level, total: i64) -> Result<Level, StockError> {
    if total < i64::from(level.reserved) || total < 0 {
        return Err(StockError::BelowReserved {
            total,
            reserved: level.reserved,
        });
    }
    let total = i32::try_from(total).map_err(|_| StockError::TooLarge)?;
    Ok(Level { total, ..level })
}

/// Holds `quantity` units for an order: `reserved += quantity`, refused beyond what is available.
///
/// # Errors
///
/// [`StockError::InvalidQuantity`] for a quantity below one, [`StockError::Insufficient`]
/// when fewer units are available.
pub fn reserve(level: Level, quantity: i32) -> Result<Level, StockError> {
    positive(quantity)?;
    if quantity > level.available() {
        return Err(StockError::Insufficient {
            requested: quantity,
            available: level.available(),
        });
    }
    Ok(Level {
        reserved: level.reserved + quantity,
        ..level
    })
}

/// Turns a reservation of `quantity` units into a sale: `total -= quantity`, `reserved -= quantity`.
///
/// # Errors
///
/// [`StockError::InvalidQuantity`] for a quantity below one, [`StockError::NotReserved`] when
/// fewer units are reserved.
pub fn confirm(level: Level, quantity: i32) -> Result<Level, StockError> {
    positive(quantity)?;
    if quantity > level.reserved {
        return Err(StockError::NotReserved {
            requested: quantity,
            reserved: level.reserved,
        });
    }
    Ok(Level {
        total: level.total - quantity,
        reserved: level.reserved - quantity,
    })
}

/// Gives a reservation of `quantity` units back: `reserved -= quantity`.
///
/// # Errors
///
/// As [`confirm`].
pub fn release(level: Level, quantity: i32) -> Result<Level, StockError> {
    positive(quantity)?;
    if quantity > level.reserved {
        return Err(StockError::NotReserved {
            requested: quantity,
            reserved: level.reserved,
        });
    }
    Ok(Level {
        reserved: level.reserved - quantity,
        ..level
    })
}

/// Puts `quantity` sold units back (a cancelled order's confirmed reservation): `total += quantity`.
///
/// # Errors
///
/// [`StockError::InvalidQuantity`] for a quantity below one, [`StockError::TooLarge`] on overflow.
pub fn restock(level: Level, quantity: i32) -> Result<Level, StockError> {
    positive(quantity)?;
    let total = level
        .total
        .checked_add(quantity)
        .ok_or(StockError::TooLarge)?;
    Ok(Level { total, ..level })
}

/// Why an order cannot be reserved. Its [`Display`](fmt::Display) is the
/// `StockReservationFailed` reason and names the product.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// The order has no lines.
    NoLines,
    /// A line's quantity is below one, or the lines of one product add up past `i32::MAX`.
    InvalidQuantity {
        /// The product.
        product_id: Uuid,
        /// The quantity.
        quantity: i64,
    },
    /// The product has no stock row.
    UnknownProduct {
        /// The product.
        product_id: Uuid,
    },
    /// Fewer units available than the order asks for.
    Insufficient {
        /// The product.
        product_id: Uuid,
        /// Units the order asks for.
        requested: i32,
        /// Units available.
        available: i32,
    },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NoLines => f.write_str("the order has no lines"),
            Rejection::InvalidQuantity {
                product_id,
                quantity,
            } => write!(f, "invalid quantity {quantity} for product {product_id}"),
            Rejection::UnknownProduct { product_id } => {
                write!(f, "no stock for product {product_id}")
            }
            Rejection::Insufficient {
                product_id,
                requested,
                available,
            } => write!(
                f,
                "insufficient stock for product {product_id}: {requested} requested, {available} available"
            ),
        }
    }
}

/// What an order asks for, per product: lines of the same product summed, sorted by product id
/// (the order in which their stock rows are locked).
///
/// # Errors
///
/// [`Rejection::NoLines`] for an empty order, [`Rejection::InvalidQuantity`] for a line below
/// one unit or a product whose lines overflow.
pub fn demand(lines: &[Line]) -> Result<Vec<(Uuid, i32)>, Rejection> {
    if lines.is_empty() {
        return Err(Rejection::NoLines);
    }
    let mut merged: BTreeMap<Uuid, i32> = BTreeMap::new();
    for line in lines {
        let invalid = || Rejection::InvalidQuantity {
            product_id: line.product_id,
            quantity: line.quantity.into(),
        };
        if line.quantity < 1 {
            return Err(invalid());
        }
        let sum = merged.entry(line.product_id).or_insert(0);
        *sum = sum.checked_add(line.quantity).ok_or_else(invalid)?;
    }
    Ok(merged.into_iter().collect())
}

/// One product's part of an accepted reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// The product.
    pub product_id: Uuid,
    /// Units reserved.
    pub quantity: i32,
    /// The figures before.
    pub before: Level,
    /// The figures after.
    pub after: Level,
}

/// All or nothing: reserves every product of `demand` (from [`demand`]) against `levels`, or
/// none. The first product (in `demand`'s order) that is unknown or short is the rejection.
///
/// # Errors
///
/// [`Rejection::UnknownProduct`] or [`Rejection::Insufficient`]; nothing is reserved then.
pub fn can_reserve(
    demand: &[(Uuid, i32)],
    levels: &HashMap<Uuid, Level>,
) -> Result<Vec<Hold>, Rejection> {
    demand
        .iter()
        .map(|&(product_id, quantity)| {
            let before = *levels
                .get(&product_id)
                .ok_or(Rejection::UnknownProduct { product_id })?;
            let after = reserve(before, quantity).map_err(|e| match e {
                StockError::Insufficient {
                    requested,
                    available,
                } => Rejection::Insufficient {
                    product_id,
                    requested,
                    available,
                },
                _ => Rejection::InvalidQuantity {
                    product_id,
                    quantity: quantity.into(),
                },
            })?;
            Ok(Hold {
                product_id,
                quantity,
                before,
                after,
            })
        })
        .collect()
}

/// The state of one product's reservation for one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReservationState {
    /// Units held, waiting for the payment.
    Reserved,
    /// Paid: the units are sold.
    Confirmed,
    /// Given back before they were sold (payment declined, order cancelled).
    Released,
    /// Sold, then put back into stock because the order was cancelled.
    Restocked,
}

impl ReservationState {
    /// The value stored in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationState::Reserved => "RESERVED",
            ReservationState::Confirmed => "CONFIRMED",
            ReservationState::Released => "RELEASED",
            ReservationState::Restocked => "RESTOCKED",
        }
    }

    /// The state stored as `value` in the `state` column.
    pub fn from_column(value: &str) -> Option<Self> {
        [
            ReservationState::Reserved,
            ReservationState::Confirmed,
            ReservationState::Released,
            ReservationState::Restocked,
        ]
        .into_iter()
        .find(|state| state.as_str() == value)
    }
}

/// How a reservation moves on: `RESERVED` to `CONFIRMED` or `RELEASED`, `CONFIRMED` to
/// `RESTOCKED`. Nothing else moves, so settling twice changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// The payment was approved: [`confirm`].
    Confirm,
    /// The payment was declined or the order cancelled before its units were sold: [`release`].
    Release,
    /// The order was cancelled after its units were sold: [`restock`].
    Restock,
}

impl Settlement {
    /// The reservation state it applies to.
    pub fn from(self) -> ReservationState {
        match self {
            Settlement::Confirm | Settlement::Release => ReservationState::Reserved,
            Settlement::Restock => ReservationState::Confirmed,
        }
    }

    /// The reservation state it leads to.
    pub fn target(self) -> ReservationState {
        match self {
            Settlement::Confirm => ReservationState::Confirmed,
            Settlement::Release => ReservationState::Released,
            Settlement::Restock => ReservationState::Restocked,
        }
    }

    /// The movement it records.
    pub fn kind(self) -> MovementKind {
        match self {
            Settlement::Confirm => MovementKind::Confirm,
            Settlement::Release => MovementKind::Release,
            Settlement::Restock => MovementKind::Restock,
        }
    }

    /// Applies it to a product's level for `quantity` units of the reservation.
    ///
    /// # Errors
    ///
    /// As [`confirm`], [`release`] and [`restock`].
    pub fn apply(self, level: Level, quantity: i32) -> Result<Level, StockError> {
        match self {
            Settlement::Confirm => confirm(level, quantity),
            Settlement::Release => release(level, quantity),
            Settlement::Restock => restock(level, quantity),
        }
    }
}

/// What a movement records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MovementKind {
    /// An admin added units.
    Add,
    /// An admin set the total.
    Adjust,
    /// An order reserved units.
    Reserve,
    /// A reservation was sold.
    Confirm,
    /// A reservation was given back.
    Release,
    /// Sold units of a cancelled order went back into stock.
    Restock,
    /// An admin took units out (outbound, write-off), with a reason.
    Remove,
}

impl MovementKind {
    /// The value stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            MovementKind::Add => "add",
            MovementKind::Adjust => "adjust",
            MovementKind::Reserve => "reserve",
            MovementKind::Confirm => "confirm",
            MovementKind::Release => "release",
            MovementKind::Restock => "restock",
            MovementKind::Remove => "remove",
        }
    }
}

#[cfg(test)]
mod tests;
