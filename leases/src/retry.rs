//! Retrying: [`Backoff`] (exponential backoff with full jitter, and the attempt limit: when a
//! released lease may be claimed again, when a consumer retries a message) and
//! [`is_retriable_db_error`] (which database errors are worth a retry). Not about leases: they
//! live here because every crate of the toolkit depends on this one (`outbox` re-exports
//! [`Backoff`]).

use std::time::Duration;

use crate::{Error, Result};

/// When to retry a failed piece of work: attempt `n` (1-based) waits a uniformly random time in
/// `[0, min(max, base * 2^(n-1))]` ("full jitter"), and after `max_attempts` the work is given
/// up (the outbox relay and the consumer runner then dead-letter it). One type for every retry
/// in the workspace: the relay's failed publishes and the consumer runner's failed messages.
///
/// ```
/// use std::time::Duration;
/// use leases::retry::Backoff;
///
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(60), 10)?;
/// assert!(backoff.delay(3) <= Duration::from_millis(400));
/// assert!(Backoff::new(Duration::ZERO, Duration::from_secs(1), 3).is_err());
/// # Ok::<(), leases::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    max_attempts: u32,
}

impl Default for Backoff {
    /// 500 ms base, 5 min cap, 12 attempts.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            max: Duration::from_secs(300),
            max_attempts: 12,
        }
    }
}

impl Backoff {
    /// A policy with the given base delay, cap and attempt limit.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] unless `0 < base <= max` and `max_attempts >= 1`.
    pub fn new(base: Duration, max: Duration, max_attempts: u32) -> Result<Self> {
        if base.is_zero() || base > max || max_attempts == 0 {
            return Err(Error::InvalidConfig(format!(
                "backoff needs 0 < base ({base:?}) <= max ({max:?}) and at least one attempt ({max_attempts})"
            )));
        }
        Ok(Self {
            base,
            max,
            max_attempts,
        })
    }

    /// The attempt limit.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The ceiling of the delay after attempt `attempt`: `min(max, base * 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(31);
        self.base.saturating_mul(1 << exponent).min(self.max)
    }

    /// A random delay in `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.ceiling(attempt).mul_f64(rand::random::<f64>())
    }
}

/// Whether a database error is transient: the classification behind [`Error::is_retriable`], for
/// crates that run their own statements next to leases.
pub fn is_retriable_db_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 40001 serialization_failure, 40P01 deadlock_detected, 08xxx connection exceptions,
            // 57P01..57P03 admin/crash shutdown and cannot_connect_now, 53300 too_many_connections.
            code == "40001"
                || code == "40P01"
                || code.starts_with("08")
                || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 5).expect("valid");
        let ceilings: Vec<u128> = (1..=6).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(1));
        for n in 1..=6 {
            assert!(b.delay(n) <= b.ceiling(n));
        }
    }

    #[test]
    fn rejects_bad_config() {
        let s = Duration::from_secs(1);
        assert!(Backoff::new(Duration::ZERO, s, 1).is_err());
        assert!(Backoff::new(2 * s, s, 1).is_err());
        assert!(Backoff::new(s, s, 0).is_err());
    }
}
