//! The `commerce` binary: `commerce all` runs the four services in one process, `commerce <name>`
//! runs one, `commerce demo` runs the scripted scenario against a fresh stack.

use commerce_launcher::{SERVICES, Stack, demo};
use commerce_platform::Config;

#[tokio::main]
async fn main() {
    let command = std::env::args().nth(1).unwrap_or_else(|| "all".to_owned());
    // The demo prints its own story; its logs stay quiet unless RUST_LOG asks for more.
    commerce_platform::ops::init_logging(if command == "demo" { "warn" } else { "info" });
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("configuration error: {e}");
            std::process::exit(2);
        }
    };
    tracing::info!(?config, command, "starting");
    let outcome = match command.as_str() {
        "demo" => demo::run(&config).await,
        "all" => run_until_ctrl_c(Stack::start(&config).await).await,
        name if SERVICES.contains(&name) => {
            let single = async {
                commerce_launcher::create_topics(&config).await?;
                let running = commerce_launcher::start(name, &config).await?;
                Ok(Stack {
                    config: config.clone(),
                    services: vec![running],
                })
            };
            run_until_ctrl_c(single.await).await
        }
        other => Err(format!(
            "unknown command {other:?}; use all, demo, or one of {SERVICES:?}"
        )),
    };
    if let Err(e) = outcome {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run_until_ctrl_c(stack: Result<Stack, String>) -> Result<(), String> {
    let stack = stack?;
    for running in &stack.services {
        println!("{:<10} http://{}", running.name, running.addr);
    }
    println!("running; Ctrl-C stops gracefully");
    tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
    stack.shutdown().await;
    Ok(())
}
