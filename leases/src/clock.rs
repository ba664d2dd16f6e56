//! Where lease time comes from: the database by default, a manual clock in tests.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::types::PgInterval;

/// The source of "now" for lease arithmetic.
///
/// Every statement computes expiry and due times as `coalesce($now, statement_timestamp())`, so
/// with [`DatabaseClock`] all workers share the database server's clock and worker clock skew
/// does not matter. A test injects a [`ManualClock`] to move time without sleeping.
pub trait Clock: fmt::Debug + Send + Sync + 'static {
    /// The time to use, or `None` to use the database's `statement_timestamp()`.
    fn now(&self) -> Option<DateTime<Utc>>;
}

/// The default clock: the database server's `statement_timestamp()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DatabaseClock;

impl Clock for DatabaseClock {
    fn now(&self) -> Option<DateTime<Utc>> {
        None
    }
}

/// A clock that only moves when told to, for deterministic tests of expiry and backoff.
///
/// Clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use leases::{Clock, ManualClock};
///
/// let clock = ManualClock::new(chrono::Utc::now());
/// let start = clock.now().unwrap();
/// clock.advance(Duration::from_secs(30));
/// assert_eq!(clock.now().unwrap() - start, chrono::TimeDelta::seconds(30));
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now += chrono::TimeDelta::from_std(by).unwrap_or(chrono::TimeDelta::MAX);
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Option<DateTime<Utc>> {
        Some(*self.now.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// `d` as an interval, refused when zero (ttls).
pub(crate) fn positive_interval(what: &str, d: Duration) -> crate::Result<PgInterval> {
    if d.is_zero() {
        return Err(crate::Error::InvalidConfig(format!(
            "{what} must be greater than zero"
        )));
    }
    Ok(crate::pg::interval(d))
}
