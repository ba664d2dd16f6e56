//! The service's error type for its storage and jobs (HTTP errors are problem+json, see `http`).

use commerce_platform::ApiError;
use inbox::HandlerError;

/// What can go wrong below the HTTP layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A database statement failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// An event could not be enqueued.
    #[error("outbox: {0}")]
    Outbox(#[from] outbox::Error),
    /// A lease for a singleton job could not be kept.
    #[error("lease: {0}")]
    Lease(#[from] leases::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether trying again may succeed (a transient database failure).
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Database(e) => leases::retry::is_retriable_db_error(e),
            Error::Outbox(e) => e.is_retriable(),
            Error::Lease(e) => e.is_retriable(),
        }
    }
}

/// Transient failures are retried by the consumer; others dead-letter the event.
impl From<Error> for HandlerError {
    fn from(error: Error) -> Self {
        if error.is_retriable() {
            HandlerError::retriable(error)
        } else {
            HandlerError::permanent(error)
        }
    }
}

/// A 500 whose detail is logged, never sent.
impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        ApiError::Internal(error.to_string())
    }
}
