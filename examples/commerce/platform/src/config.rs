//! Configuration from environment variables, with defaults that work with `scripts/services`.

use crate::limits::RateLimits;
use anyhow::Context;
use axum::http::{HeaderValue, Uri};
use std::net::SocketAddr;
use std::time::Duration;

/// Everything a service reads from the environment.
#[derive(Clone)]
pub struct Config {
    /// `DATABASE_URL`: a server URL; each service uses its own database `<prefix>_<service>` on it.
    pub database_url: String,
    /// `COMMERCE_DB_PREFIX` (default `commerce`).
    pub db_prefix: String,
    /// `COMMERCE_DB_POOL_SIZE` (default 10): the most connections each service opens to its
    /// database. Keep `services x pool size` under the server's `max_connections`.
    pub db_pool_size: u32,
    /// `KAFKA_BOOTSTRAP_SERVERS` (default `127.0.0.1:9092`).
    pub kafka: String,
    /// `COMMERCE_TOPIC_PREFIX` (default `commerce`): topics are `<prefix>.orders` and so on.
    pub topics: commerce_events::Topics,
    /// `REDIS_URL` (default `redis://127.0.0.1:6379`).
    pub redis_url: String,
    /// `JWT_SECRET`: HS256 key for bearer tokens; required, at least [`MIN_SECRET_LEN`] characters
    /// (in development mode, [`DEV_JWT_SECRET`] when unset).
    pub jwt_secret: String,
    /// `SERVICE_API_KEY`: the key services present to each other; required, at least
    /// [`MIN_SECRET_LEN`] characters (in development mode, [`DEV_API_KEY`] when unset).
    pub api_key: String,
    /// `COMMERCE_DEV_MODE` (`true` or `1`; default off): unset secrets fall back to the public
    /// development values instead of stopping the service. Never on outside a developer's machine.
    pub dev_mode: bool,
    /// `ORDER_ADDR`, `INVENTORY_ADDR`, `PAYMENT_ADDR`, `PRODUCT_ADDR`, `SHIPPING_ADDR`,
    /// `NOTIFICATION_ADDR` (defaults 127.0.0.1:8081..8086).
    pub addrs: Addrs,
    /// `RESERVATION_TIMEOUT_SECS`: how long a reservation may wait for payment (default 30).
    pub reservation_timeout: Duration,
    /// `COMMERCE_INSTANCE_ID` (default unset): when set, every consumer joins its group as a static
    /// member (`group.instance.id = <group>.<instance id>`), so a restarted process gets its
    /// partitions back at once instead of after the session timeout. Each running process needs
    /// its own value: two live members with one id fence each other.
    pub instance_id: Option<String>,
    /// `COMMERCE_CORS_ORIGINS` (default none): the origins whose pages may call the public API
    /// from a browser, comma-separated (`https://shop.example,http://localhost:3000`). With none,
    /// browsers refuse every cross-origin call.
    pub cors_origins: Vec<HeaderValue>,
    /// `COMMERCE_RATE_PER_ADDRESS`, `COMMERCE_RATE_PER_USER`: the public routes' rate limits
    /// ([`RateLimits::from_vars`]).
    pub rate_limits: RateLimits,
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
    /// The shipping service.
    pub shipping: SocketAddr,
    /// The notification service.
    pub notification: SocketAddr,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &self.database_url)
            .field("db_prefix", &self.db_prefix)
            .field("db_pool_size", &self.db_pool_size)
            .field("kafka", &self.kafka)
            .field("topics", &self.topics)
            .field("redis_url", &self.redis_url)
            .field("jwt_secret", &"<redacted>")
            .field("api_key", &"<redacted>")
            .field("dev_mode", &self.dev_mode)
            .field("addrs", &self.addrs)
            .field("reservation_timeout", &self.reservation_timeout)
            .field("instance_id", &self.instance_id)
            .field("cors_origins", &self.cors_origins)
            .field("rate_limits", &self.rate_limits)
            .finish()
    }
}

/// The origins of `list` (comma-separated; blanks ignored), each `scheme://host[:port]`.
fn origins(list: &str) -> anyhow::Result<Vec<HeaderValue>> {
    list.split(',')
        .map(str::trim)
        .filter(|origin| !origin.is_empty())
        .map(|origin| {
            let is_origin = origin.parse::<Uri>().is_ok_and(|uri| {
                uri.scheme().is_some()
                    && uri.host().is_some()
                    && uri
                        .path_and_query()
                        .is_none_or(|p| matches!(p.as_str(), "" | "/"))
            });
            anyhow::ensure!(
                is_origin && !origin.ends_with('/'),
                "COMMERCE_CORS_ORIGINS: {origin:?} is not an origin (scheme://host[:port])"
            );
            Ok(HeaderValue::from_str(origin)?)
        })
        .collect()
}

/// The shortest secret the services accept.
pub const MIN_SECRET_LEN: usize = 32;
/// The JWT secret of development mode when `JWT_SECRET` is unset: public, so anyone can mint
/// tokens for a service running with it.
pub const DEV_JWT_SECRET: &str = "development-only-jwt-secret-never-use-in-production";
/// The service API key of development mode when `SERVICE_API_KEY` is unset: public.
pub const DEV_API_KEY: &str = "development-only-service-key-never-use-in-production";

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
    /// secret anyone can read here. Only with `COMMERCE_DEV_MODE=true` do unset secrets fall back
    /// to [`DEV_JWT_SECRET`] and [`DEV_API_KEY`]. (`scripts/services` prints development values
    /// made once per machine, which need no development mode.)
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
        let dev_mode = match lookup("COMMERCE_DEV_MODE").as_deref() {
            None | Some("" | "0" | "false") => false,
            Some("1" | "true") => true,
            Some(other) => anyhow::bail!("COMMERCE_DEV_MODE must be true or false, not {other:?}"),
        };
        let secret = |name: &str, development: &str| -> anyhow::Result<String> {
            let value = match lookup(name) {
                Some(value) => value,
                None if dev_mode => development.to_owned(),
                None => anyhow::bail!(
                    "{name} is not set: the services have no default secret. Set it to at least \
                     {MIN_SECRET_LEN} random characters (`openssl rand -hex 32`); for a local run, \
                     `eval \"$(scripts/services up)\"` sets development values, or \
                     COMMERCE_DEV_MODE=true uses public ones"
                ),
            };
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
            db_pool_size: match var("COMMERCE_DB_POOL_SIZE", "10").parse() {
                Ok(size @ 1..) => size,
                _ => anyhow::bail!("COMMERCE_DB_POOL_SIZE must be a whole number of at least 1"),
            },
            kafka: var("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            topics: commerce_events::Topics::new(&var("COMMERCE_TOPIC_PREFIX", "commerce")),
            redis_url: var("REDIS_URL", "redis://127.0.0.1:6379"),
            jwt_secret: secret("JWT_SECRET", DEV_JWT_SECRET)?,
            api_key: secret("SERVICE_API_KEY", DEV_API_KEY)?,
            dev_mode,
            addrs: Addrs {
                order: addr("ORDER_ADDR", "127.0.0.1:8081")?,
                inventory: addr("INVENTORY_ADDR", "127.0.0.1:8082")?,
                payment: addr("PAYMENT_ADDR", "127.0.0.1:8083")?,
                product: addr("PRODUCT_ADDR", "127.0.0.1:8084")?,
                shipping: addr("SHIPPING_ADDR", "127.0.0.1:8085")?,
                notification: addr("NOTIFICATION_ADDR", "127.0.0.1:8086")?,
            },
            reservation_timeout: Duration::from_secs(
                var("RESERVATION_TIMEOUT_SECS", "30")
                    .parse()
                    .context("RESERVATION_TIMEOUT_SECS")?,
            ),
            instance_id: lookup("COMMERCE_INSTANCE_ID").filter(|id| !id.is_empty()),
            cors_origins: origins(&var("COMMERCE_CORS_ORIGINS", ""))?,
            rate_limits: RateLimits::from_vars(&lookup)?,
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
        assert!(!config.dev_mode);
        assert_eq!(config.db_pool_size, 10);
        assert!(config.cors_origins.is_empty());
    }

    #[test]
    fn cors_origins_are_a_list_of_origins() {
        let config = config(&[
            ("JWT_SECRET", JWT),
            ("SERVICE_API_KEY", KEY),
            (
                "COMMERCE_CORS_ORIGINS",
                "https://shop.example, http://localhost:3000",
            ),
        ])
        .expect("config");
        assert_eq!(
            config.cors_origins,
            ["https://shop.example", "http://localhost:3000"]
        );
        for wrong in ["shop.example", "https://shop.example/cart", "*"] {
            let error = super::origins(wrong).expect_err(wrong);
            assert!(
                error.to_string().contains("COMMERCE_CORS_ORIGINS"),
                "{error}"
            );
        }
    }

    #[test]
    fn development_mode_falls_back_to_public_secrets_only_when_asked() {
        let dev = config(&[("COMMERCE_DEV_MODE", "true")]).expect("development mode");
        assert!(dev.dev_mode);
        assert_eq!(dev.jwt_secret, DEV_JWT_SECRET);
        assert_eq!(dev.api_key, DEV_API_KEY);
        // Secrets that are set win, and are still checked.
        let dev = config(&[("COMMERCE_DEV_MODE", "1"), ("JWT_SECRET", JWT)]).expect("config");
        assert_eq!(dev.jwt_secret, JWT);
        assert!(config(&[("COMMERCE_DEV_MODE", "1"), ("JWT_SECRET", "short")]).is_err());
        assert!(config(&[("COMMERCE_DEV_MODE", "false")]).is_err());
        let error = config(&[("COMMERCE_DEV_MODE", "yes")]).expect_err("not a boolean");
        assert!(error.to_string().contains("COMMERCE_DEV_MODE"), "{error}");
        assert!(DEV_JWT_SECRET.len() >= MIN_SECRET_LEN && DEV_API_KEY.len() >= MIN_SECRET_LEN);
    }
}
