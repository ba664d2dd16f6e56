//! The crate's error type.

/// A `Result` whose error defaults to this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong enqueueing, relaying or operating the outbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// An event payload could not be encoded.
    #[error("cannot encode the payload: {0}")]
    Encode(#[from] serde_json::Error),
    /// A lease operation failed.
    #[error(transparent)]
    Lease(#[from] leases::Error),
    /// The database returned an error or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A table the call needs is missing: the migrator named has not been run on the database.
    #[error("{tables} missing: run {migrator} on this database first")]
    NotMigrated {
        /// The missing tables.
        tables: &'static str,
        /// The migrator that creates them.
        migrator: &'static str,
    },
    /// The Kafka client could not be created.
    #[error("kafka client error: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

impl Error {
    /// Whether retrying the same operation may succeed (transient database failures).
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Lease(e) => e.is_retriable(),
            Error::Database(e) => leases::retry::is_retriable_db_error(e),
            Error::InvalidConfig(_)
            | Error::Encode(_)
            | Error::NotMigrated { .. }
            | Error::Kafka(_) => false,
        }
    }
}
