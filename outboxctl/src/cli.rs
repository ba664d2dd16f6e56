//! The command line: commands, their arguments and how arguments are parsed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use uuid::Uuid;

/// Operator CLI for the outbox toolkit: is anything stuck, what died, and fix it without SQL.
///
/// Exit codes: 0 done, 1 runtime or database error, 2 usage error or refused (add --yes).
#[derive(Debug, Parser)]
#[command(name = "outboxctl", version)]
pub(crate) struct Cli {
    /// The PostgreSQL database of the outbox (and idempotency) tables. Required.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub(crate) database_url: Option<String>,

    /// Print one JSON document instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Backlog, oldest pending event, retries, in-flight leases per owner, dead letters by topic
    /// and reason, idempotency tables (tables that do not exist are skipped).
    Status,
    /// Inspect, replay or discard dead letters (events that failed permanently).
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// Delete rows past their retention (requires --yes; --dry-run only counts).
    #[command(subcommand)]
    Purge(PurgeCommand),
}

/// `dead-letters …`.
#[derive(Debug, Subcommand)]
pub(crate) enum DeadLetterCommand {
    /// List dead letters, oldest first.
    List {
        /// Which dead letters.
        #[command(flatten)]
        filter: FilterArgs,
        /// Show at most this many.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
    },
    /// Show everything about one dead letter, payload included.
    Show {
        /// The dead letter's (the event's) id.
        id: Uuid,
    },
    /// Put dead letters back in the outbox; the relay then publishes them.
    Replay(ActionArgs),
    /// Delete dead letters for good.
    Discard(ActionArgs),
}

/// Conditions on dead letters; every one given must hold.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct FilterArgs {
    /// Only this topic.
    #[arg(long)]
    pub(crate) topic: Option<String>,
    /// Only this aggregate.
    #[arg(long, value_name = "TYPE:ID", value_parser = parse_aggregate,
          conflicts_with_all = ["aggregate_id", "aggregate_type"])]
    pub(crate) aggregate: Option<(String, String)>,
    /// Only this aggregate type.
    #[arg(long, value_name = "TYPE")]
    pub(crate) aggregate_type: Option<String>,
    /// Only this aggregate id, whatever the aggregate type.
    #[arg(long, value_name = "ID")]
    pub(crate) aggregate_id: Option<String>,
    /// Only reasons containing this text, ignoring case (`exhausted`, `permanent`).
    #[arg(long, value_name = "SUBSTRING")]
    pub(crate) reason: Option<String>,
    /// Only dead-lettered at or after this time: RFC 3339, or a duration ago (`2h`).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub(crate) since: Option<DateTime<Utc>>,
    /// Only dead-lettered before this time: RFC 3339, or a duration ago (`30m`).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub(crate) until: Option<DateTime<Utc>>,
}

impl FilterArgs {
    /// The filter of the `outbox` crate.
    pub(crate) fn to_filter(&self) -> outbox::dead_letters::Filter {
        let mut filter = outbox::dead_letters::Filter::new();
        if let Some(topic) = &self.topic {
            filter = filter.topic(topic);
        }
        if let Some((kind, id)) = &self.aggregate {
            filter = filter.aggregate(kind, id);
        }
        if let Some(kind) = &self.aggregate_type {
            filter = filter.aggregate_type(kind);
        }
        if let Some(id) = &self.aggregate_id {
            filter = filter.aggregate_id(id);
        }
        if let Some(reason) = &self.reason {
            filter = filter.reason_contains(reason);
        }
        if let Some(since) = self.since {
            filter = filter.since(since);
        }
        if let Some(until) = self.until {
            filter = filter.until(until);
        }
        filter
    }
}

/// The target of `replay` or `discard`: one id, or the dead letters a filter (or `--all`) selects.
#[derive(Debug, Args)]
pub(crate) struct ActionArgs {
    /// One dead letter's id (otherwise give filters, or --all).
    #[arg(conflicts_with_all = ["topic", "aggregate", "aggregate_type", "aggregate_id", "reason",
                                "since", "until", "all"])]
    pub(crate) id: Option<Uuid>,
    /// Which dead letters, for a bulk action.
    #[command(flatten)]
    pub(crate) filter: FilterArgs,
    /// Every dead letter (a bulk action with no filter).
    #[arg(long)]
    pub(crate) all: bool,
    /// Only print what would happen; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Confirm a bulk action (without it, a bulk action is refused with exit code 2).
    #[arg(long)]
    pub(crate) yes: bool,
}

/// `purge …`.
#[derive(Debug, Subcommand)]
pub(crate) enum PurgeCommand {
    /// Published events kept by `Retention::Keep`, published more than --older-than ago.
    Published {
        /// Age of the rows to delete (`7d`, `12h`).
        #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
        older_than: Duration,
        /// Confirmation and batching.
        #[command(flatten)]
        options: PurgeArgs,
    },
    /// Consumer inbox rows received more than --older-than ago.
    Inbox {
        /// Age of the rows to delete (`7d`, `12h`).
        #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
        older_than: Duration,
        /// Confirmation and batching.
        #[command(flatten)]
        options: PurgeArgs,
    },
    /// Idempotency keys past their retention and not in flight.
    IdempotencyKeys {
        /// Confirmation and batching.
        #[command(flatten)]
        options: PurgeArgs,
    },
}

/// Options every purge takes.
#[derive(Debug, Clone, Args)]
pub(crate) struct PurgeArgs {
    /// Only count the rows that would be deleted.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Confirm the delete (without it, a purge is refused with exit code 2).
    #[arg(long)]
    pub(crate) yes: bool,
    /// Rows per DELETE statement.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) batch_size: u32,
}

/// `TYPE:ID`, split at the first colon (ids may contain colons, types do not).
fn parse_aggregate(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((kind, id)) if !kind.is_empty() && !id.is_empty() => Ok((kind.into(), id.into())),
        _ => Err(format!("expected TYPE:ID (like order:42), got {text:?}")),
    }
}

/// An RFC 3339 time, or a duration before now (`2h` is two hours ago).
fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let ago = crate::duration::parse(text).map_err(|_| {
        format!(
            "expected an RFC 3339 time (2026-03-01T02:00:00Z) or a duration ago (2h), got {text:?}"
        )
    })?;
    let ago = chrono::Duration::from_std(ago).map_err(|e| e.to_string())?;
    Ok(Utc::now() - ago)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn aggregates_split_at_the_first_colon() {
        assert_eq!(
            parse_aggregate("order:eu:42"),
            Ok(("order".into(), "eu:42".into()))
        );
        assert!(parse_aggregate("order").is_err());
        assert!(parse_aggregate(":42").is_err());
    }

    #[test]
    fn times_are_rfc3339_or_a_duration_ago() {
        let time = parse_time("2026-03-01T02:00:00+01:00").expect("rfc3339");
        assert_eq!(time.to_rfc3339(), "2026-03-01T01:00:00+00:00");
        let ago = parse_time("2h").expect("duration");
        let expected = Utc::now() - chrono::Duration::hours(2);
        assert!((ago - expected).num_seconds().abs() < 5);
        assert!(parse_time("yesterday").is_err());
    }
}
