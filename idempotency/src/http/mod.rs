//! The HTTP side (feature `http`): the `Idempotency-Key` layer, its stores, the same-transaction
//! extractor and the problem+json responses.

mod body;
mod checks;
mod config;
mod fingerprint;
mod handler;
mod key;
mod layer;
mod mode;
mod outcome;
pub mod problem;
mod replay;
mod service;
mod shared;
mod store;
mod tx;

pub use config::{KeyPolicy, stores_by_default, stores_server_errors_too};
pub use fingerprint::{Fingerprint, FingerprintOptions};
pub use key::{IDEMPOTENCY_KEY, IdempotencyKey, KeyError, MAX_KEY_LEN};
pub use layer::IdempotencyLayer;
pub use problem::Problem;
pub use replay::IDEMPOTENT_REPLAYED;
pub use service::{Idempotency, ResponseFuture};
pub use store::memory::MemoryStore;
pub use store::postgres::{KeysStatus, PostgresStore};
pub use store::{
    Acquire, Record, RecordState, ScopedKey, Store, StoredResponse, TakenIn, TransactionalStore,
};
pub use tx::Tx;
