//! The `commerce` binary: `commerce all` runs the four services in one process, `commerce <name>`
//! runs one, `commerce demo` runs the scripted scenario against a fresh stack.

use clap::{Parser, ValueEnum};
use commerce_launcher::{Service, Stack, demo};
use commerce_platform::Config;

/// Runs the commerce reference system. Configuration comes from the environment (see
/// docs/operations.md).
#[derive(Debug, Parser)]
#[command(name = "commerce")]
struct Cli {
    /// What to run.
    #[arg(value_enum, default_value_t = Command::All)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Command {
    /// All four services in one process, until Ctrl-C.
    All,
    /// The scripted scenario against a fresh stack, then exit.
    Demo,
    /// The product service alone.
    Product,
    /// The inventory service alone.
    Inventory,
    /// The payment service alone.
    Payment,
    /// The order service alone.
    Order,
}

#[tokio::main]
async fn main() {
    let Cli { command } = Cli::parse();
    // The demo prints its own story; its logs stay quiet unless RUST_LOG asks for more.
    commerce_platform::ops::init_logging(if command == Command::Demo {
        "warn"
    } else {
        "info"
    });
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("configuration error: {e:#}");
            std::process::exit(2);
        }
    };
    tracing::info!(?config, ?command, "starting");
    let config = &config;
    let single = |service: Service| async move {
        commerce_launcher::create_topics(config).await?;
        let running = service.start(config).await?;
        Ok(Stack {
            config: config.clone(),
            services: vec![running],
        })
    };
    let outcome = match command {
        Command::Demo => demo::run(config).await,
        Command::All => run_until_ctrl_c(Stack::start(config).await).await,
        Command::Product => run_until_ctrl_c(single(Service::Product).await).await,
        Command::Inventory => run_until_ctrl_c(single(Service::Inventory).await).await,
        Command::Payment => run_until_ctrl_c(single(Service::Payment).await).await,
        Command::Order => run_until_ctrl_c(single(Service::Order).await).await,
    };
    if let Err(e) = outcome {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run_until_ctrl_c(stack: anyhow::Result<Stack>) -> anyhow::Result<()> {
    let stack = stack?;
    for running in &stack.services {
        println!("{:<10} http://{}", running.name, running.addr);
    }
    println!("running; Ctrl-C stops gracefully");
    tokio::signal::ctrl_c().await?;
    stack.shutdown().await;
    Ok(())
}
