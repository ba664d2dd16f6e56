//! Binding values to PostgreSQL the one way this toolkit does. Not about leases: it lives here
//! because every crate of the toolkit depends on this one.

use std::time::Duration;

use sqlx::postgres::types::PgInterval;

/// A duration as a PostgreSQL `interval`: the one way this toolkit binds a duration (bind it and
/// write `$n::interval` in the statement). Exact to the microsecond, PostgreSQL's precision
/// (anything finer is dropped), and capped at a century, so `now() ± interval` is always a valid
/// timestamp.
///
/// ```
/// use std::time::Duration;
///
/// let ttl = leases::pg::interval(Duration::from_millis(1500));
/// assert_eq!((ttl.months, ttl.days, ttl.microseconds), (0, 0, 1_500_000));
/// assert_eq!(leases::pg::interval(Duration::MAX), leases::pg::interval(Duration::from_secs(100 * 366 * 86_400)));
/// ```
pub fn interval(d: Duration) -> PgInterval {
    const CENTURY_MICROS: i64 = 100 * 366 * 24 * 60 * 60 * 1_000_000;
    PgInterval {
        months: 0,
        days: 0,
        microseconds: i64::try_from(d.as_micros())
            .unwrap_or(i64::MAX)
            .min(CENTURY_MICROS),
    }
}
