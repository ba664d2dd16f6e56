//! Runs the commerce services: all six in one process (the demo, tests), or one by name
//! (deployment); prints development tokens. `cargo run -p commerce-launcher -- --help`.

#![forbid(unsafe_code)]

pub mod client;
pub mod demo;

use std::net::SocketAddr;

use anyhow::Context;
use commerce_events::Topics;
use commerce_platform::{Addrs, Config, Running, setup};

/// A commerce service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    /// The catalogue and its stock cache.
    Product,
    /// Stock, reservations and movements.
    Inventory,
    /// Charges and refunds.
    Payment,
    /// Shipments of confirmed orders.
    Shipping,
    /// Notifications to customers.
    Notification,
    /// Orders and the saga's decisions.
    Order,
}

impl Service {
    /// Every service, in start order: the product service first (it announces the catalogue the
    /// others copy), the order service, which takes customers' orders, last.
    pub const ALL: [Self; 6] = [
        Self::Product,
        Self::Inventory,
        Self::Payment,
        Self::Shipping,
        Self::Notification,
        Self::Order,
    ];

    /// Starts the service.
    ///
    /// # Errors
    ///
    /// The service's start-up error.
    pub async fn start(self, config: &Config) -> anyhow::Result<Running> {
        match self {
            Self::Order => commerce_order::start(config).await,
            Self::Inventory => commerce_inventory::start(config).await,
            Self::Payment => commerce_payment::start(config).await,
            Self::Product => commerce_product::start(config).await,
            Self::Shipping => commerce_shipping::start(config).await,
            Self::Notification => commerce_notification::start(config).await,
        }
    }

    /// Its name, as its HTTP server and logs know it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Order => "order",
            Self::Inventory => "inventory",
            Self::Payment => "payment",
            Self::Product => "product",
            Self::Shipping => "shipping",
            Self::Notification => "notification",
        }
    }

    /// Records where the service listens, so the services started after it reach it there.
    fn listens_on(self, addrs: &mut Addrs, addr: SocketAddr) {
        match self {
            Self::Order => addrs.order = addr,
            Self::Inventory => addrs.inventory = addr,
            Self::Payment => addrs.payment = addr,
            Self::Product => addrs.product = addr,
            Self::Shipping => addrs.shipping = addr,
            Self::Notification => addrs.notification = addr,
        }
    }
}

/// Every consumer of the stack, by name (`<service>.<purpose>`, its consumer group is
/// `<topic prefix>.<name>`), with the topics it reads: what tests and operators check for lag.
pub fn consumers(topics: &Topics) -> Vec<(&'static str, Vec<&str>)> {
    vec![
        ("order.catalogue", vec![&topics.products]),
        (
            "order.saga",
            vec![&topics.inventory, &topics.payments, &topics.shipments],
        ),
        (
            "inventory.saga",
            vec![&topics.products, &topics.orders, &topics.payments],
        ),
        ("payment.saga", vec![&topics.orders, &topics.inventory]),
        ("product.stock", vec![&topics.inventory]),
        ("shipping.saga", vec![&topics.orders]),
        (
            "notification.events",
            vec![&topics.orders, &topics.payments, &topics.shipments],
        ),
    ]
}

/// Creates the stack's topics (the broker does not create them on first use).
///
/// # Errors
///
/// When the broker cannot be reached.
pub async fn create_topics(config: &Config) -> anyhow::Result<()> {
    setup::topics(&config.kafka, &config.topics.all(), 3).await
}

/// Services in one process: all six, or some of them.
#[derive(Debug)]
pub struct Stack {
    /// The configuration they run with, with the addresses they actually bound (port 0 resolved).
    pub config: Config,
    /// The running services, in start order.
    pub services: Vec<Running>,
}

impl Stack {
    /// Creates the topics and starts the services, in [`Service::ALL`]'s order; the stack's
    /// configuration records where each really listens.
    ///
    /// # Errors
    ///
    /// The first start-up error (services already started are stopped).
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        Self::start_only(config, &Service::ALL).await
    }

    /// Creates the topics and starts `services`, in the order given. A stack without shipping
    /// keeps paid orders `CONFIRMED`, for tests of what happens before an order ships.
    ///
    /// # Errors
    ///
    /// The first start-up error (services already started are stopped).
    pub async fn start_only(
        config: &Config,
        services_to_start: &[Service],
    ) -> anyhow::Result<Self> {
        create_topics(config).await?;
        let mut config = config.clone();
        let mut services: Vec<Running> = Vec::new();
        for &service in services_to_start {
            match service.start(&config).await {
                Ok(running) => {
                    service.listens_on(&mut config.addrs, running.addr);
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

    /// Stops every service gracefully, then drops the stack's databases
    /// ([`setup::drop_databases`]): for a test or a benchmark that started a stack of its own.
    ///
    /// # Errors
    ///
    /// When a database cannot be dropped.
    pub async fn discard(self) -> anyhow::Result<()> {
        let config = self.config.clone();
        self.shutdown().await;
        setup::drop_databases(&config).await?;
        Ok(())
    }

    /// Replaces `service` by a new instance after stopping the old one abruptly (a crash), for
    /// fault tests.
    ///
    /// # Errors
    ///
    /// The restarted service's start-up error.
    pub async fn crash_and_restart(&mut self, service: Service) -> anyhow::Result<()> {
        let index = self
            .services
            .iter()
            .position(|running| running.name == service.name())
            .with_context(|| format!("{} is not running in this stack", service.name()))?;
        let old = self.services.remove(index);
        old.kill();
        let restarted = service.start(&self.config).await?;
        self.services.insert(index, restarted);
        Ok(())
    }
}
