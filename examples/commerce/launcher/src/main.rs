//! The `commerce` binary: `commerce all` runs the six services in one process, `commerce <name>`
//! runs one, `commerce demo` runs the scripted scenario against a fresh stack, and
//! `commerce token <subject> --role admin` prints a bearer token for calling the API by hand.

use clap::{Parser, Subcommand};
use commerce_launcher::{Service, Stack, demo};
use commerce_platform::{Claims, Config};

/// Runs the commerce reference system. Configuration comes from the environment (see
/// docs/operations.md); `JWT_SECRET` and `SERVICE_API_KEY` are required unless
/// `COMMERCE_DEV_MODE=true`.
#[derive(Debug, Parser)]
#[command(name = "commerce")]
struct Cli {
    /// What to run (default: all).
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
enum Command {
    /// All six services in one process, until Ctrl-C.
    All,
    /// The scripted scenario against a fresh stack, then exit.
    Demo,
    /// The product service alone, until Ctrl-C.
    Product,
    /// The inventory service alone, until Ctrl-C.
    Inventory,
    /// The payment service alone, until Ctrl-C.
    Payment,
    /// The shipping service alone, until Ctrl-C.
    Shipping,
    /// The notification service alone, until Ctrl-C.
    Notification,
    /// The order service alone, until Ctrl-C.
    Order,
    /// Prints a bearer token signed with this configuration's JWT_SECRET, for calling the API
    /// with curl: `curl -H "Authorization: Bearer $(commerce token admin --role admin)" ...`.
    Token {
        /// The token's subject (a customer id, or an admin's name).
        subject: String,
        /// A role to grant (`admin` or `customer`); repeat for several.
        #[arg(long = "role", default_value = "customer")]
        roles: Vec<String>,
        /// How long the token is valid, in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: i64,
    },
}

impl Command {
    /// The service a single-service command runs.
    fn service(&self) -> Option<Service> {
        Some(match self {
            Command::Product => Service::Product,
            Command::Inventory => Service::Inventory,
            Command::Payment => Service::Payment,
            Command::Shipping => Service::Shipping,
            Command::Notification => Service::Notification,
            Command::Order => Service::Order,
            Command::All | Command::Demo | Command::Token { .. } => return None,
        })
    }
}

#[tokio::main]
async fn main() {
    let command = Cli::parse().command.unwrap_or(Command::All);
    // The demo prints its own story; its logs stay quiet unless RUST_LOG asks for more.
    let quiet = matches!(command, Command::Demo | Command::Token { .. });
    commerce_platform::telemetry::init(if quiet { "warn" } else { "info" });
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("configuration error: {e:#}");
            std::process::exit(2);
        }
    };
    if config.dev_mode {
        eprintln!(
            "DEVELOPMENT MODE (COMMERCE_DEV_MODE=true): unset secrets use public development \
             values; never run like this outside your own machine"
        );
    }
    tracing::info!(?config, ?command, "starting");
    let config = &config;
    let outcome = match command {
        Command::Demo => demo::run(config).await,
        Command::All => run_until_ctrl_c(Stack::start(config).await).await,
        Command::Token {
            subject,
            roles,
            ttl_secs,
        } => {
            let token = config.authenticator().issue(&Claims {
                sub: subject,
                roles,
                exp: chrono::Utc::now().timestamp() + ttl_secs,
            });
            println!("{token}");
            Ok(())
        }
        single => {
            let service = single
                .service()
                .unwrap_or_else(|| unreachable!("every other command is a service"));
            let single = async {
                commerce_launcher::create_topics(config).await?;
                let running = service.start(config).await?;
                Ok(Stack {
                    config: config.clone(),
                    services: vec![running],
                })
            };
            run_until_ctrl_c(single.await).await
        }
    };
    if let Err(e) = outcome {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run_until_ctrl_c(stack: anyhow::Result<Stack>) -> anyhow::Result<()> {
    let stack = stack?;
    for running in &stack.services {
        println!("{:<12} http://{}", running.name, running.addr);
    }
    println!("running; Ctrl-C stops gracefully");
    tokio::signal::ctrl_c().await?;
    stack.shutdown().await;
    Ok(())
}
