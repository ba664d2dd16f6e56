//! The crate's error type.

/// A `Result` whose error defaults to this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the inbox or the consumer runner.
///
/// A message that cannot be applied is not an error of the runner: its handler says so with a
/// [`HandlerError`](crate::HandlerError), and the runner retries or dead-letters it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range (no topics, a zero batch size, ...).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The database returned an error or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A Kafka client could not be created or subscribed.
    #[error("kafka client error: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

impl Error {
    /// Whether retrying the same operation may succeed: transient database failures
    /// (serialization failure, deadlock, lost connection, pool timeout, server shutdown).
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Database(e) => leases::retry::is_retriable_db_error(e),
            Error::InvalidConfig(_) | Error::Kafka(_) => false,
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
