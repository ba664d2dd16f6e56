//! `purge …`: retention deletes of published events, inbox rows and expired idempotency keys.
//! Each needs `--yes`; `--dry-run` only counts.

use std::time::Duration;

use idempotency::PostgresStore;
use serde_json::json;
use sqlx::PgPool;

use crate::cli::{PurgeArgs, PurgeCommand};
use crate::db::require_table;
use crate::failure::Failure;

/// One kind of purge: its name, table, and the library calls that count and delete its rows.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Published(Duration),
    Inbox(Duration),
    IdempotencyKeys,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Published(_) => "published",
            Self::Inbox(_) => "inbox",
            Self::IdempotencyKeys => "idempotency-keys",
        }
    }

    fn table(self) -> (&'static str, &'static str) {
        match self {
            Self::Published(_) => ("outbox_events", "outbox"),
            Self::Inbox(_) => ("inbox", "inbox"),
            Self::IdempotencyKeys => ("idempotency_keys", "idempotency"),
        }
    }

    /// How many rows the purge would delete now: the library's dry run of its purge.
    async fn count(self, pool: &PgPool) -> Result<u64, Failure> {
        Ok(match self {
            Self::Published(older_than) => outbox::count_purgeable(pool, older_than).await?,
            Self::Inbox(older_than) => inbox::count_purgeable(pool, older_than).await?,
            Self::IdempotencyKeys => PostgresStore::new(pool.clone()).count_expired().await?,
        })
    }

    /// Deletes the rows with the library's own purge, `batch_size` rows per statement.
    async fn delete(self, pool: &PgPool, batch_size: u32) -> Result<u64, Failure> {
        Ok(match self {
            Self::Published(older_than) => {
                outbox::purge_published(pool, older_than, batch_size).await?
            }
            Self::Inbox(older_than) => inbox::purge(pool, older_than, batch_size).await?,
            Self::IdempotencyKeys => {
                PostgresStore::new(pool.clone())
                    .purge_expired(batch_size)
                    .await?
            }
        })
    }
}

/// Runs a `purge` command against `pool`.
pub(crate) async fn run(pool: &PgPool, command: PurgeCommand, json: bool) -> Result<(), Failure> {
    let (kind, options) = match command {
        PurgeCommand::Published {
            older_than,
            options,
        } => (Kind::Published(older_than), options),
        PurgeCommand::Inbox {
            older_than,
            options,
        } => (Kind::Inbox(older_than), options),
        PurgeCommand::IdempotencyKeys { options } => (Kind::IdempotencyKeys, options),
    };
    purge(pool, kind, &options, json).await
}

async fn purge(pool: &PgPool, kind: Kind, options: &PurgeArgs, json: bool) -> Result<(), Failure> {
    let (table, migrations) = kind.table();
    require_table(pool, table, migrations).await?;
    if options.dry_run || !options.yes {
        let count = kind.count(pool).await?;
        if options.dry_run {
            if json {
                println!(
                    "{:#}",
                    json!({ "purge": kind.name(), "table": table, "dry_run": true, "rows": count })
                );
            } else {
                println!("dry run: would delete {count} row(s) from {table}; nothing changed");
            }
            return Ok(());
        }
        if json {
            println!(
                "{:#}",
                json!({ "purge": kind.name(), "table": table, "refused": true, "rows": count })
            );
        }
        return Err(Failure::usage(format!(
            "refusing to delete {count} row(s) from {table} without --yes: add --yes (or --dry-run to only count)"
        )));
    }
    let deleted = kind.delete(pool, options.batch_size).await?;
    if json {
        println!(
            "{:#}",
            json!({ "purge": kind.name(), "table": table, "dry_run": false, "rows": deleted })
        );
    } else {
        println!("deleted {deleted} row(s) from {table}");
    }
    Ok(())
}
