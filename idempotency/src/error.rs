//! The crate's error type.

/// A `Result` whose error defaults to this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a store or the layer's configuration.
///
/// Errors a *client* caused (a malformed key, a reused key, a body too large) are not here: the
/// layer answers those with a [`Problem`](crate::Problem) response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range (zero ttl, zero batch size, ...).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A lease operation failed.
    #[error(transparent)]
    Lease(#[from] leases::Error),
    /// The database returned an error or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored record could not be decoded (a status or header that is not valid HTTP).
    #[error("corrupt stored record: {0}")]
    Corrupt(String),
}

impl Error {
    /// Whether retrying the same operation may succeed: transient database failures
    /// (serialization failure, deadlock, lost connection, pool timeout, server shutdown).
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Lease(e) => e.is_retriable(),
            Error::Database(e) => leases::retry::is_retriable_db_error(e),
            Error::InvalidConfig(_) | Error::Corrupt(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_errors() {
        assert!(Error::Database(sqlx::Error::PoolTimedOut).is_retriable());
        assert!(Error::Lease(leases::Error::Database(sqlx::Error::PoolTimedOut)).is_retriable());
        assert!(!Error::Database(sqlx::Error::RowNotFound).is_retriable());
        assert!(!Error::InvalidConfig("x".into()).is_retriable());
    }
}
