//! `outboxctl`: the operator CLI of the outbox toolkit.
//!
//! It talks to the database named by `DATABASE_URL` (or `--database-url`) and answers, without
//! SQL: where is this event, is anything stuck, what died — and fixes it.
//!
//! - `status`: pending events and the oldest one's age, events waiting for a retry, in-flight
//!   leases per relay, dead letters by topic and reason, and the inbox and the idempotency keys
//!   when their tables exist.
//! - `dead-letters list | show | replay | discard`, with filters (`--topic`, `--aggregate`,
//!   `--aggregate-id`, `--reason`, `--since`, `--until`).
//! - `purge published | inbox | idempotency-keys`: retention deletes.
//!
//! Output is aligned tables, or one JSON document with `--json`. Anything that changes data
//! honours `--dry-run` (print what would happen, change nothing); bulk actions and purges are
//! refused without `--yes`.
//!
//! Exit codes: `0` done, `1` runtime or database error, `2` usage error or refused.

#![forbid(unsafe_code)]

mod cli;
mod db;
mod dead_letters;
mod duration;
mod failure;
mod purge;
mod status;
mod table;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::failure::Failure;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return Failure::from(anyhow::Error::from(error)).report(),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let Some(url) = cli.database_url.as_deref() else {
        return Err(Failure::usage(
            "no database: set DATABASE_URL or pass --database-url",
        ));
    };
    let pool = db::connect(url).await?;
    let json = cli.json;
    let outcome = match cli.command {
        Command::Status => status::run(&pool, json).await,
        Command::DeadLetters(command) => dead_letters::run(&pool, command, json).await,
        Command::Purge(command) => purge::run(&pool, command, json).await,
    };
    pool.close().await;
    outcome
}
