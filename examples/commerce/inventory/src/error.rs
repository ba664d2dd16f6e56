//! The crate's error type.

use commerce_platform::ApiError;
use inbox::HandlerError;

use crate::domain::StockError;

/// A `Result` whose error defaults to this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong changing stock.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database returned an error or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// An event could not be enqueued.
    #[error("outbox error: {0}")]
    Outbox(#[from] outbox::Error),
    /// A concurrent transaction made the same change first; retrying finds it done.
    #[error("contention: {0}")]
    Contention(String),
    /// The change would break the stock invariant (refused, nothing written).
    #[error(transparent)]
    Stock(#[from] StockError),
}

impl Error {
    /// Whether retrying may succeed: transient database failures (deadlock, serialization
    /// failure, lost connection, pool timeout).
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Database(e) => leases::retry::is_retriable_db_error(e),
            Error::Outbox(e) => e.is_retriable(),
            Error::Contention(_) => true,
            Error::Stock(_) => false,
        }
    }
}

/// Transient failures are retried; a refused change means the stored data contradicts the event
/// (dead-lettered for a person to look at).
impl From<Error> for HandlerError {
    fn from(error: Error) -> Self {
        if error.is_retriable() {
            HandlerError::retriable(error)
        } else {
            HandlerError::permanent(error)
        }
    }
}

/// A refused change is a 409; transient failures 503; anything else is internal.
impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match error {
            Error::Stock(e) => ApiError::Conflict(e.to_string()),
            e if e.is_retriable() => ApiError::Unavailable("the database is unavailable".into()),
            e => ApiError::Internal(e.to_string()),
        }
    }
}
