//! The Redis copy of each product's available stock: `HSET <prefix>:stock:<product id>
//! available <n> version <v>`, only ever replaced by a newer version.

use std::sync::{Arc, Mutex, PoisonError};

use redis::aio::MultiplexedConnection;
use redis::{RedisError, Script};
use uuid::Uuid;

/// Sets `{available, version}` unless the key already holds this version or a newer one, in one
/// atomic step. Returns 1 when it wrote, 0 when the stored figure is as new or newer.
const SET_IF_NEWER: &str = r"
local current = redis.call('HGET', KEYS[1], 'version')
if current and tonumber(current) >= tonumber(ARGV[2]) then
    return 0
end
redis.call('HSET', KEYS[1], 'available', ARGV[1], 'version', ARGV[2])
return 1
";

/// The stock cache: a Redis client with one shared multiplexed connection, opened on first use
/// and opened again after it breaks (so the service starts, and keeps serving from PostgreSQL,
/// while Redis is down). Cheap to clone.
#[derive(Clone)]
pub struct StockCache {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    connection: Mutex<Option<MultiplexedConnection>>,
    prefix: String,
    set_if_newer: Script,
}

impl std::fmt::Debug for StockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StockCache")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl StockCache {
    /// A cache on `client`, its keys named `<prefix>:stock:<product id>`. Does not connect yet.
    pub fn new(client: redis::Client, prefix: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                connection: Mutex::new(None),
                prefix: prefix.into(),
                set_if_newer: Script::new(SET_IF_NEWER),
            }),
        }
    }

    /// A cache on the Redis server at `url` (`redis://host:port`). Does not connect yet.
    ///
    /// # Errors
    ///
    /// When `url` is not a Redis URL.
    pub fn open(url: &str, prefix: impl Into<String>) -> Result<Self, RedisError> {
        Ok(Self::new(redis::Client::open(url)?, prefix))
    }

    /// The key holding `product_id`'s figures.
    pub fn key(&self, product_id: Uuid) -> String {
        format!("{}:stock:{product_id}", self.inner.prefix)
    }

    async fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        let cached = self
            .inner
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(connection) = cached {
            return Ok(connection);
        }
        let connection = self.inner.client.get_multiplexed_async_connection().await?;
        *self
            .inner
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(connection.clone());
        Ok(connection)
    }

    /// Forgets the connection after an error that may have broken it.
    fn check<T>(&self, result: Result<T, RedisError>) -> Result<T, RedisError> {
        let broken = result.as_ref().err().is_some_and(|error| {
            error.is_io_error() || error.is_connection_dropped() || error.is_unrecoverable_error()
        });
        if broken {
            *self
                .inner
                .connection
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
        }
        result
    }

    /// The cached available stock of each of `product_ids` (in the same order), `None` where the
    /// key is missing. One round trip.
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached or answers with an error.
    pub async fn available(&self, product_ids: &[Uuid]) -> Result<Vec<Option<i64>>, RedisError> {
        if product_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for &id in product_ids {
            pipe.hget(self.key(id), "available");
        }
        let result = async { pipe.query_async(&mut self.connection().await?).await }.await;
        self.check(result)
    }

    /// Stores `available` at `version` for `product_id` unless Redis holds that version or a
    /// newer one ([`is_newer`](crate::domain::is_newer), evaluated atomically in Redis by a Lua
    /// script). Returns whether it wrote.
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached or answers with an error.
    pub async fn apply(
        &self,
        product_id: Uuid,
        available: i64,
        version: i64,
    ) -> Result<bool, RedisError> {
        let result = async {
            let mut connection = self.connection().await?;
            self.inner
                .set_if_newer
                .key(self.key(product_id))
                .arg(available)
                .arg(version)
                .invoke_async::<i64>(&mut connection)
                .await
        }
        .await;
        self.check(result).map(|written| written == 1)
    }
}
