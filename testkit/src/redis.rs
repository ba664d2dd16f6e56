//! A Redis connection for tests.

use crate::docker::Service;

/// The server's URL: `REDIS_URL`, or a container.
pub async fn redis_url() -> String {
    crate::service_url("REDIS_URL", Service::Redis).await
}

/// A multiplexed connection to the test Redis server.
///
/// Tests share the server: prefix keys with something unique to the test.
///
/// # Panics
///
/// When the server cannot be reached: this is a test fixture.
pub async fn connection() -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(redis_url().await)
        .expect("REDIS_URL is a valid Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis")
}
