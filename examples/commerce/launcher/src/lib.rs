//! Runs the commerce services: all four in one process (the demo, tests), or one by name
//! (deployment). `cargo run -p commerce-launcher -- all|order|inventory|payment|product|demo`.

#![forbid(unsafe_code)]

pub mod client;
pub mod demo;

use commerce_platform::{Config, Running, setup};

/// The services, by name.
pub const SERVICES: [&str; 4] = ["product", "inventory", "payment", "order"];

/// Creates the stack's topics (the test broker does not create them on first use).
///
/// # Errors
///
/// When the broker cannot be reached.
pub async fn create_topics(config: &Config) -> Result<(), String> {
    setup::topics(&config.kafka, &config.topics.all(), 3).await
}

/// Starts one service by name.
///
/// # Errors
///
/// An unknown name, or the service's start-up error.
pub async fn start(name: &str, config: &Config) -> Result<Running, String> {
    match name {
        "order" => commerce_order::start(config).await,
        "inventory" => commerce_inventory::start(config).await,
        "payment" => commerce_payment::start(config).await,
        "product" => commerce_product::start(config).await,
        other => Err(format!(
            "unknown service {other:?}; expected one of {SERVICES:?}"
        )),
    }
}

/// All four services in one process.
#[derive(Debug)]
pub struct Stack {
    /// The configuration they run with, with the addresses they actually bound (port 0 resolved).
    pub config: Config,
    /// The running services, in [`SERVICES`] order.
    pub services: Vec<Running>,
}

impl Stack {
    /// Creates the topics and starts the services. The order service starts last, told where the
    /// product service really listens.
    ///
    /// # Errors
    ///
    /// The first start-up error (services already started are stopped).
    pub async fn start(config: &Config) -> Result<Self, String> {
        create_topics(config).await?;
        let mut config = config.clone();
        let mut services: Vec<Running> = Vec::new();
        for name in SERVICES {
            match start(name, &config).await {
                Ok(running) => {
                    match name {
                        "product" => config.addrs.product = running.addr,
                        "inventory" => config.addrs.inventory = running.addr,
                        "payment" => config.addrs.payment = running.addr,
                        _ => config.addrs.order = running.addr,
                    }
                    services.push(running);
                }
                Err(e) => {
                    for running in services {
                        running.shutdown().await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(Self { config, services })
    }

    /// Stops every service gracefully.
    pub async fn shutdown(self) {
        for running in self.services.into_iter().rev() {
            running.shutdown().await;
        }
    }

    /// Replaces the service `name` by a new instance after stopping the old one abruptly (a crash),
    /// for fault tests.
    ///
    /// # Errors
    ///
    /// The restarted service's start-up error.
    pub async fn crash_and_restart(&mut self, name: &str) -> Result<(), String> {
        let index = SERVICES
            .iter()
            .position(|s| *s == name)
            .ok_or_else(|| format!("unknown service {name:?}"))?;
        let old = self.services.remove(index);
        old.kill();
        let restarted = start(name, &self.config).await?;
        self.services.insert(index, restarted);
        Ok(())
    }
}
