//! Running a service: its outbox relay, its consumers, its background jobs (the retention job
//! every service runs among them) and its HTTP server, each a [`Background`] task, and stopping
//! them all gracefully or all at once.

use anyhow::Context;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use idempotency::PostgresStore;
use inbox::{Consumer, ConsumerConfig, ConsumerHandle};
use outbox::{Background, Backoff, KafkaPublisher, Relay, RelayConfig};
use sqlx::PgPool;

use crate::Config;
use crate::events::{EventHandler, Events};

/// A running service. [`shutdown`](Self::shutdown) stops it gracefully: the HTTP server finishes
/// in-flight requests, consumers commit what they processed, the relay finishes its batch.
#[derive(Debug)]
pub struct Running {
    /// The service's name.
    pub name: &'static str,
    /// Where the HTTP server listens (useful with port 0).
    pub addr: SocketAddr,
    server: Background,
    relay: Background,
    consumers: Vec<Consuming>,
    jobs: Vec<Background>,
}

/// A started consumer and its name (for readiness and logs), from [`consume`].
#[derive(Debug)]
pub struct Consuming {
    /// Its name (its inbox name, `<service>.<purpose>`).
    pub name: String,
    /// The running consumer.
    pub handle: ConsumerHandle,
}

/// What a service is made of, handed to [`start`].
#[derive(Debug)]
pub struct Parts {
    /// The HTTP API (operations routes are added by [`start`]).
    pub router: Router,
    /// Started consumers: each must hold a partition for the service to be ready.
    pub consumers: Vec<Consuming>,
    /// The service's own background jobs (the runtime adds the retention job).
    pub jobs: Vec<Background>,
}

/// How long inbox records are kept: longer than the broker may redeliver an event.
pub const INBOX_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// How often the retention job runs (first at start).
pub const RETENTION_EVERY: Duration = Duration::from_secs(60 * 60);

/// Starts a consumer of `topics` named `name` (its inbox name; use `<service>.<purpose>`), in the
/// consumer group `<topic prefix>.<name>`, dead-lettering to the stack's dead-letter topic.
///
/// # Errors
///
/// When the consumer cannot be created.
pub fn consume<H: EventHandler>(
    config: &Config,
    pool: &PgPool,
    name: &str,
    topics: &[&str],
    handler: H,
) -> Result<Consuming, inbox::Error> {
    let group = format!("{}.{name}", config.topics.prefix);
    let mut consumer = ConsumerConfig::new(name, config.consumer_config(&group))
        .group_id(group)
        .dead_letter_topic(&config.topics.dead_letters)
        .dead_letter_producer(config.producer_config())
        .backoff(
            Backoff::new(Duration::from_millis(100), Duration::from_secs(5), u32::MAX)
                .expect("a valid backoff"),
        );
    for topic in topics {
        consumer = consumer.topic(*topic);
    }
    Ok(Consuming {
        name: name.to_owned(),
        handle: Consumer::new(pool.clone(), consumer, Events(handler))?.spawn(),
    })
}

/// Starts the relay for `pool`'s outbox and serves `parts.router` (with the operations routes) on
/// `addr`.
///
/// # Errors
///
/// When the relay cannot be created or the address cannot be bound.
pub async fn start(
    name: &'static str,
    config: &Config,
    pool: &PgPool,
    addr: SocketAddr,
    parts: Parts,
) -> anyhow::Result<Running> {
    let publisher = KafkaPublisher::from_config(&config.producer_config())?;
    let relay = Relay::new(
        pool.clone(),
        publisher,
        RelayConfig::default()
            .name(name)
            .owner(format!("{name}-relay-{}", uuid::Uuid::now_v7()))
            .poll_interval(Duration::from_millis(500)),
    )?;
    let mut checks = vec![
        crate::ops::database_check(pool.clone()),
        crate::ops::broker_check(&config.kafka)?,
        crate::ops::relay_check(relay.monitor()),
    ];
    let relay = relay.spawn();
    checks.extend(
        parts
            .consumers
            .iter()
            .map(|c| crate::ops::consumer_check(c.name.clone(), c.handle.monitor())),
    );
    let (limited, forget) =
        crate::limits::apply(parts.router, &config.rate_limits, &config.authenticator())?;
    let public = limited
        .layer(axum::middleware::from_fn(crate::problem::stamp))
        .layer(crate::cors::layer(&config.cors_origins));
    let app = crate::ops::with_operations(name, public, checks);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("{name}: cannot listen on {addr}"))?;
    let addr = listener.local_addr()?;
    let server = Background::spawn(move |stop| async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(service = name, %error, "http server failed");
        }
    });
    let mut jobs = parts.jobs;
    jobs.push(retention(name, pool.clone()));
    jobs.push(forget);
    tracing::info!(service = name, %addr, "service started");
    Ok(Running {
        name,
        addr,
        server,
        relay,
        consumers: parts.consumers,
        jobs,
    })
}

/// The retention job every service runs: inbox records past [`INBOX_RETENTION`] and idempotency
/// keys past their retention are deleted, every [`RETENTION_EVERY`]. (The outbox keeps nothing:
/// the relay deletes what it published.)
fn retention(name: &'static str, pool: PgPool) -> Background {
    Background::spawn(move |stop| async move {
        let keys = PostgresStore::new(pool.clone());
        let mut every = tokio::time::interval(RETENTION_EVERY);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            match inbox::purge(&pool, INBOX_RETENTION, 1000).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(service = name, deleted, "retention: inbox purged"),
                Err(error) => {
                    tracing::warn!(service = name, %error, "retention: inbox purge failed")
                }
            }
            match keys.purge_expired(1000).await {
                Ok(0) => {}
                Ok(deleted) => {
                    tracing::info!(
                        service = name,
                        deleted,
                        "retention: idempotency keys purged"
                    );
                }
                Err(error) => {
                    tracing::warn!(service = name, %error, "retention: idempotency key purge failed");
                }
            }
        }
    })
}

impl Running {
    /// Stops the service gracefully and waits until everything has stopped: the HTTP server
    /// finishes in-flight requests, consumers commit what they processed, jobs release their
    /// leases, and the relay finishes its batch.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
        for consumer in self.consumers {
            consumer.handle.shutdown().await;
        }
        for job in self.jobs {
            job.shutdown().await;
        }
        self.relay.shutdown().await;
        tracing::info!(service = self.name, "service stopped");
    }

    /// Stops everything at once, as a crash would (leases expire, uncommitted offsets are redelivered).
    pub fn kill(self) {
        self.server.abort();
        for consumer in self.consumers {
            consumer.handle.abort();
        }
        for job in self.jobs {
            job.abort();
        }
        self.relay.abort();
    }
}
