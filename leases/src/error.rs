//! The crate's error type.

/// A `Result` whose error defaults to this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when claiming, renewing, completing or releasing a lease.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A table or column name is not a plain SQL identifier.
    #[error(
        "invalid {what} {value:?}: identifiers must match [A-Za-z_][A-Za-z0-9_]* and be at most 63 bytes (a table may be schema-qualified)"
    )]
    InvalidIdentifier {
        /// Which identifier was rejected (`"table"`, `"id column"`, ...).
        what: &'static str,
        /// The rejected value.
        value: String,
    },
    /// A configuration value is out of range (zero ttl, renew interval not shorter than the ttl, ...).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The caller's SQL handed to a statement builder is malformed: its parameters are not
    /// exactly `$1` to `$n` for the `n` values bound to it.
    #[error("invalid statement: {0}")]
    InvalidStatement(String),
    /// The database returned an error or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl Error {
    /// Whether retrying the same operation may succeed: serialization failures, deadlocks, lost or
    /// refused connections, pool timeouts and server shutdowns.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Database(e) => crate::retry::is_retriable_db_error(e),
            Error::InvalidIdentifier { .. }
            | Error::InvalidConfig(_)
            | Error::InvalidStatement(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_errors() {
        assert!(Error::Database(sqlx::Error::PoolTimedOut).is_retriable());
        assert!(!Error::Database(sqlx::Error::RowNotFound).is_retriable());
        assert!(!Error::InvalidConfig("x".into()).is_retriable());
    }
}
