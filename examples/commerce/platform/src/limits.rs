//! Rate limits on every service's public routes ([`tower_governor`]): per client address on
//! every request, and per user (the verified token's subject) on writes. Over a limit, the answer
//! is `429` problem+json (`too-many-requests`) with `Retry-After`. Limits are configuration
//! ([`RateLimits::from_vars`], in [`Config`](crate::Config)); the operations routes are not
//! limited.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, header};
use axum::response::{IntoResponse, Response};
use governor::middleware::NoOpMiddleware;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::KeyExtractor;
use tower_governor::{GovernorError, GovernorLayer};

use crate::auth::Authenticator;
use crate::problem::ApiError;
use outbox::Background;

/// A sustained rate and the burst allowed above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per second, sustained.
    pub per_second: u32,
    /// Requests allowed at once above that (the bucket's size).
    pub burst: u32,
}

/// The limits of the public routes; `None` turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// `COMMERCE_RATE_PER_ADDRESS` (default 100 requests/s, burst 200): every request, per
    /// client address (the connection's peer: put the services behind a proxy that keeps
    /// addresses apart, or turn this off there).
    pub per_address: Option<Rate>,
    /// `COMMERCE_RATE_PER_USER` (default 10 writes/s, burst 20): `POST`, `PUT`, `PATCH` and
    /// `DELETE`, per token subject (requests without a valid token share one bucket; they are
    /// refused anyway).
    pub per_user: Option<Rate>,
}

impl RateLimits {
    /// No limits (load tests, which send everything from one address).
    pub fn off() -> Self {
        Self {
            per_address: None,
            per_user: None,
        }
    }

    /// Reads `COMMERCE_RATE_PER_ADDRESS` and `COMMERCE_RATE_PER_USER` through `lookup`: a
    /// number of requests per second (the burst is twice as many), `0` for no limit.
    ///
    /// # Errors
    ///
    /// A message naming the variable that is not a whole number.
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let rate = |name: &str, default: u32| -> anyhow::Result<Option<Rate>> {
            let per_second = match lookup(name) {
                Some(value) => value.parse::<u32>().with_context(|| {
                    format!("{name} must be a whole number of requests per second (0: no limit)")
                })?,
                None => default,
            };
            Ok((per_second > 0).then(|| Rate {
                per_second,
                burst: per_second.saturating_mul(2),
            }))
        };
        Ok(Self {
            per_address: rate("COMMERCE_RATE_PER_ADDRESS", 100)?,
            per_user: rate("COMMERCE_RATE_PER_USER", 10)?,
        })
    }
}

/// A request's client address: the connection's peer (unspecified when the server was not
/// started with connect info, as in tests calling a router directly).
#[derive(Debug, Clone, Copy)]
struct Address;

impl KeyExtractor for Address {
    type Key = IpAddr;

    fn extract<T>(&self, request: &Request<T>) -> Result<IpAddr, GovernorError> {
        Ok(request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(peer)| {
                peer.ip()
            }))
    }
}

/// A request's user: its bearer token's subject when the token is valid, else `""`.
#[derive(Debug, Clone)]
struct User(Authenticator);

impl KeyExtractor for User {
    type Key = String;

    fn extract<T>(&self, request: &Request<T>) -> Result<String, GovernorError> {
        Ok(request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .and_then(|token| self.0.verify(token).ok())
            .map(|claims| claims.sub)
            .unwrap_or_default())
    }
}

/// `429` problem+json with `Retry-After` for a request over its limit.
fn refuse(error: GovernorError) -> Response {
    match error {
        GovernorError::TooManyRequests { wait_time, .. } => ApiError::TooManyRequests {
            retry_after: wait_time.max(1),
        }
        .into_response(),
        other => ApiError::Internal(format!("rate limit: {other}")).into_response(),
    }
}

fn config<K: KeyExtractor>(
    key: K,
    rate: Rate,
    methods: Option<Vec<Method>>,
) -> anyhow::Result<Arc<GovernorConfig<K, NoOpMiddleware>>> {
    let mut builder = GovernorConfigBuilder::default().key_extractor(key);
    builder
        .period(Duration::from_secs(1) / rate.per_second.max(1))
        .burst_size(rate.burst.max(1));
    if let Some(methods) = methods {
        builder.methods(methods);
    }
    let config = builder
        .finish()
        .context("a rate limit needs a positive rate and burst")?;
    Ok(Arc::new(config))
}

/// How often the limiters forget the clients they have not seen for a while.
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// `router` with `limits`, and the job that keeps the limiters' memory bounded (to run with the
/// service's other jobs).
///
/// # Errors
///
/// When a limit is zero.
pub fn apply(
    router: Router,
    limits: &RateLimits,
    auth: &Authenticator,
) -> anyhow::Result<(Router, Background)> {
    let mut router = router;
    let mut forget: Vec<Box<dyn Fn() + Send + Sync>> = Vec::new();
    if let Some(rate) = limits.per_user {
        let writes = vec![Method::POST, Method::PUT, Method::PATCH, Method::DELETE];
        let config = config(User(auth.clone()), rate, Some(writes))?;
        let limiter = Arc::clone(config.limiter());
        forget.push(Box::new(move || limiter.retain_recent()));
        router = router.layer(GovernorLayer::new(config).error_handler(refuse));
    }
    if let Some(rate) = limits.per_address {
        let config = config(Address, rate, None)?;
        let limiter = Arc::clone(config.limiter());
        forget.push(Box::new(move || limiter.retain_recent()));
        router = router.layer(GovernorLayer::new(config).error_handler(refuse));
    }
    let job = Background::spawn(move |stop| async move {
        let mut every = tokio::time::interval(FORGET_EVERY);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => forget.iter().for_each(|f| f()),
            }
        }
    });
    Ok((router, job))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_configuration_with_defaults_and_zero_turns_one_off() {
        let defaults = RateLimits::from_vars(|_| None).expect("defaults");
        assert_eq!(
            defaults.per_address,
            Some(Rate {
                per_second: 100,
                burst: 200
            })
        );
        assert_eq!(
            defaults.per_user,
            Some(Rate {
                per_second: 10,
                burst: 20
            })
        );
        let set = RateLimits::from_vars(|name| {
            (name == "COMMERCE_RATE_PER_ADDRESS").then(|| "0".to_owned())
        })
        .expect("set");
        assert_eq!(set.per_address, None);
        let error = RateLimits::from_vars(|_| Some("fast".to_owned())).expect_err("refused");
        assert!(
            error.to_string().contains("COMMERCE_RATE_PER_ADDRESS"),
            "{error}"
        );
    }
}
