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
    /// `JWT_SECRET`: HS256 key for bearer tokens; required, at least [`MIN_SECRET_LEN`] characters.
    pub jwt_secret: String,
    /// `SERVICE_API_KEY`: the key services present to each other; required, at least
    /// [`MIN_SECRET_LEN`] characters.
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

/// The shortest secret the services accept.
pub const MIN_SECRET_LEN: usize = 32;

impl Config {
    /// Reads the environment (see [`from_vars`](Self::from_vars)).
    ///
    /// # Errors
    ///
    /// As [`from_vars`](Self::from_vars).
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (a variable's value, if set). Every setting has a
    /// development default except the secrets: `JWT_SECRET` and `SERVICE_API_KEY` must be set,
    /// to at least [`MIN_SECRET_LEN`] characters, so a misconfigured service never starts with a
    /// secret anyone can read here. (`scripts/services` prints development values made once per
    /// machine.)
    ///
    /// # Errors
    ///
    /// A message naming the variable that is missing or does not parse.
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let var = |name: &str, default: &str| lookup(name).unwrap_or_else(|| default.to_owned());
        let addr = |name: &str, default: &str| -> anyhow::Result<SocketAddr> {
            var(name, default)
                .parse()
                .with_context(|| format!("{name} is not a socket address"))
        };
        let secret = |name: &str| -> anyhow::Result<String> {
            let value = lookup(name).with_context(|| {
                format!(
                    "{name} is not set: the services have no default secret. Set it to at least \
                     {MIN_SECRET_LEN} random characters (`openssl rand -hex 32`); for a local run, \
                     `eval \"$(scripts/services up)\"` sets development values"
                )
            })?;
            if value.len() < MIN_SECRET_LEN {
                anyhow::bail!("{name} must be at least {MIN_SECRET_LEN} characters long");
            }
            Ok(value)
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
            jwt_secret: secret("JWT_SECRET")?,
            api_key: secret("SERVICE_API_KEY")?,
            addrs: Addrs {
                order: addr("ORDER_ADDR", "127.0.0.1:8081")?,
                inventory: addr("INVENTORY_ADDR", "127.0.0.1:8082")?,
                payment: addr("PAYMENT_ADDR", "127.0.0.1:8083")?,
                product: addr("PRODUCT_ADDR", "127.0.0.1:8084")?,
            },
            reservation_timeout_secs: var("RESERVATION_TIMEOUT_SECS", "30")
                .parse()
                .context("RESERVATION_TIMEOUT_SECS")?,
            instance_id: lookup("COMMERCE_INSTANCE_ID").filter(|id| !id.is_empty()),
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> anyhow::Result<Config> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_vars(|name| vars.get(name).cloned())
    }

    const JWT: &str = "0123456789abcdef0123456789abcdef";
    const KEY: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn refuses_to_start_without_secrets_or_with_short_ones() {
        let error = config(&[("SERVICE_API_KEY", KEY)]).expect_err("no JWT_SECRET");
        assert!(
            error.to_string().contains("JWT_SECRET is not set"),
            "{error}"
        );
        let error = config(&[("JWT_SECRET", JWT)]).expect_err("no SERVICE_API_KEY");
        assert!(error.to_string().contains("SERVICE_API_KEY"), "{error}");
        let error =
            config(&[("JWT_SECRET", "short"), ("SERVICE_API_KEY", KEY)]).expect_err("short");
        assert!(error.to_string().contains("at least 32"), "{error}");
    }

    #[test]
    fn everything_else_has_a_development_default() {
        let config = config(&[("JWT_SECRET", JWT), ("SERVICE_API_KEY", KEY)]).expect("config");
        assert_eq!(config.jwt_secret, JWT);
        assert_eq!(config.addrs.order, "127.0.0.1:8081".parse().expect("addr"));
        assert_eq!(config.topics.orders, "commerce.orders");
        assert_eq!(config.instance_id, None);
    }
}
