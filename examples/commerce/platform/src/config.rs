//! Configuration from environment variables, with defaults that work with `scripts/services`.

use anyhow::Context;
use std::net::SocketAddr;

/// Everything a service reads from the environment.
#[derive(Clone)]
pub struct Config {
    /// `DATABASE_URL`: a server URL; each service uses its own database `<prefix>_<service>` on it.
    pub database_url: String,
    /// `COMMERCE_DB_PREFIX` (default `commerce`).
    pub db_prefix: String,
    /// `KAFKA_BOOTSTRAP_SERVERS` (default `127.0.0.1:9092`).
    pub kafka: String,
    /// `COMMERCE_TOPIC_PREFIX` (default `commerce`): topics are `<prefix>.orders` and so on.
    pub topics: commerce_events::Topics,
    /// `REDIS_URL` (default `redis://127.0.0.1:6379`).
    pub redis_url: String,
    /// `JWT_SECRET`: HS256 key for bearer tokens (a development default is used, with a warning).
    pub jwt_secret: String,
    /// `SERVICE_API_KEY`: the key services present to each other (development default, with a warning).
    pub api_key: String,
    /// `ORDER_ADDR`, `INVENTORY_ADDR`, `PAYMENT_ADDR`, `PRODUCT_ADDR` (defaults 127.0.0.1:8081..8084).
    pub addrs: Addrs,
    /// `RESERVATION_TIMEOUT_SECS`: how long a reservation may wait for payment (default 30).
    pub reservation_timeout_secs: u64,
    /// `COMMERCE_INSTANCE_ID` (default unset): when set, every consumer joins its group as a static
    /// member (`group.instance.id = <group>.<instance id>`), so a restarted process gets its
    /// partitions back at once instead of after the session timeout. Each running process needs
    /// its own value: two live members with one id fence each other.
    pub instance_id: Option<String>,
}

/// Where each service listens.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    /// The order service.
    pub order: SocketAddr,
    /// The inventory service.
    pub inventory: SocketAddr,
    /// The payment service.
    pub payment: SocketAddr,
    /// The product service.
    pub product: SocketAddr,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &self.database_url)
            .field("db_prefix", &self.db_prefix)
            .field("kafka", &self.kafka)
            .field("topics", &self.topics)
            .field("redis_url", &self.redis_url)
            .field("jwt_secret", &"<redacted>")
            .field("api_key", &"<redacted>")
            .field("addrs", &self.addrs)
            .field("reservation_timeout_secs", &self.reservation_timeout_secs)
            .field("instance_id", &self.instance_id)
            .finish()
    }
}

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn addr(name: &str, default: &str) -> anyhow::Result<SocketAddr> {
    var(name, default)
        .parse()
        .with_context(|| format!("{name} is not a socket address"))
}

impl Config {
    /// Reads the environment.
    ///
    /// # Errors
    ///
    /// A message naming the variable whose value does not parse.
    pub fn from_env() -> anyhow::Result<Self> {
        let secret = |name: &str, default: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                tracing::warn!("{name} is not set; using the development default");
                default.to_owned()
            })
        };
        Ok(Self {
            database_url: var(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ),
            db_prefix: var("COMMERCE_DB_PREFIX", "commerce"),
            kafka: var("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            topics: commerce_events::Topics::new(&var("COMMERCE_TOPIC_PREFIX", "commerce")),
            redis_url: var("REDIS_URL", "redis://127.0.0.1:6379"),
            jwt_secret: secret("JWT_SECRET", "development-jwt-secret-change-me"),
            api_key: secret("SERVICE_API_KEY", "development-service-key-change-me"),
            addrs: Addrs {
                order: addr("ORDER_ADDR", "127.0.0.1:8081")?,
                inventory: addr("INVENTORY_ADDR", "127.0.0.1:8082")?,
                payment: addr("PAYMENT_ADDR", "127.0.0.1:8083")?,
                product: addr("PRODUCT_ADDR", "127.0.0.1:8084")?,
            },
            reservation_timeout_secs: var("RESERVATION_TIMEOUT_SECS", "30")
                .parse()
                .context("RESERVATION_TIMEOUT_SECS")?,
            instance_id: std::env::var("COMMERCE_INSTANCE_ID")
                .ok()
                .filter(|id| !id.is_empty()),
        })
    }

    /// Client settings for producers (the outbox relay, dead-letter producers): librdkafka's
    /// batching, with the Java client's partitioner (`murmur2_random`).
    pub fn producer_config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", &self.kafka)
            .set("partitioner", "murmur2_random");
        config
    }

    /// Client settings for a consumer in `group` (the runner sets `group.id` itself): static
    /// membership when an instance id is set.
    pub fn consumer_config(&self, group: &str) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", &self.kafka);
        if let Some(instance) = &self.instance_id {
            config.set("group.instance.id", format!("{group}.{instance}"));
        }
        config
    }

    /// The authenticator for this configuration's secrets.
    pub fn authenticator(&self) -> crate::auth::Authenticator {
        crate::auth::Authenticator::new(self.jwt_secret.as_bytes(), &self.api_key)
    }
}
