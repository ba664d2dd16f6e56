//! `status`: is anything stuck? The outbox's backlog, in-flight leases, retries, dead letters, the
//! consumer inbox and the idempotency keys, each section skipped when its tables do not exist.
//! The numbers are the libraries' own ([`outbox::status`], [`inbox::status`],
//! [`idempotency::PostgresStore::status`]); this module only prints them.

use idempotency::{KeysStatus, PostgresStore};
use inbox::InboxStatus;
use outbox::{DeadLetterGroup, OutboxStatus};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::db::table_exists;
use crate::duration::human;
use crate::failure::Failure;
use crate::table::{Table, cell};

/// Prints the status of the database behind `pool`.
pub(crate) async fn run(pool: &PgPool, json: bool) -> Result<(), Failure> {
    let outbox = if table_exists(pool, "outbox_events").await? {
        Some(outbox::status(pool).await?)
    } else {
        None
    };
    let inbox = if table_exists(pool, "inbox").await? {
        Some(inbox::status(pool).await?)
    } else {
        None
    };
    let keys = if table_exists(pool, "idempotency_keys").await? {
        Some(PostgresStore::new(pool.clone()).status().await?)
    } else {
        None
    };
    if json {
        let document = json!({
            "outbox": outbox.as_ref().map(outbox_json),
            "dead_letters": outbox.as_ref().map(|o| o.dead_letters.iter().map(dead_group_json).collect::<Vec<_>>()),
            "inbox": inbox.as_ref().map(inbox_json),
            "idempotency_keys": keys.as_ref().map(keys_json),
        });
        println!("{document:#}");
    } else {
        print_human(outbox.as_ref(), inbox.as_ref(), keys.as_ref());
    }
    Ok(())
}

fn outbox_json(o: &OutboxStatus) -> Value {
    json!({
        "pending": o.pending,
        "oldest_pending_age_seconds": o.oldest_pending_age.map(|age| age.as_secs_f64()),
        "oldest_pending": o.oldest_pending.as_ref().map(|e| json!({
            "id": e.id,
            "topic": e.topic,
            "aggregate_type": e.aggregate_type,
            "aggregate_id": e.aggregate_id,
            "attempts": e.attempts,
            "last_error": e.last_error,
            "leased_by": e.leased_by,
        })),
        "waiting_for_retry": o.waiting_for_retry,
        "published_kept": o.published_kept,
        "leases": o.leases.iter().map(|l| json!({
            "owner": l.owner,
            "events": l.events,
            "expires_in_seconds": l.last_expires_in.as_secs_f64(),
        })).collect::<Vec<_>>(),
    })
}

fn dead_group_json(g: &DeadLetterGroup) -> Value {
    json!({
        "topic": g.topic,
        "reason": g.reason,
        "count": g.count,
        "oldest": g.oldest.to_rfc3339(),
        "newest": g.newest.to_rfc3339(),
    })
}

fn inbox_json(i: &InboxStatus) -> Value {
    json!({ "rows": i.rows, "oldest_age_seconds": i.oldest_age.map(|age| age.as_secs_f64()) })
}

fn keys_json(k: &KeysStatus) -> Value {
    json!({ "rows": k.keys, "in_flight": k.in_flight, "expired": k.expired })
}

fn print_human(
    outbox: Option<&OutboxStatus>,
    inbox: Option<&InboxStatus>,
    keys: Option<&KeysStatus>,
) {
    println!("OUTBOX");
    match outbox {
        None => println!("  (no outbox_events table: skipped)"),
        Some(o) => {
            let mut t = Table::plain();
            t.row(vec!["  pending".into(), o.pending.to_string()]);
            let age = o
                .oldest_pending_age
                .map_or_else(|| "-".to_owned(), |age| human(age.as_secs_f64()));
            t.row(vec!["  oldest pending age".into(), age]);
            if let Some(old) = &o.oldest_pending {
                let mut what = format!(
                    "{} {}:{} on {}, {} attempt(s)",
                    old.id, old.aggregate_type, old.aggregate_id, old.topic, old.attempts
                );
                if let Some(owner) = &old.leased_by {
                    what.push_str(&format!(", leased by {owner}"));
                }
                t.row(vec!["  oldest pending event".into(), what]);
                if let Some(error) = &old.last_error {
                    t.row(vec!["  its last error".into(), cell(error, 100)]);
                }
            }
            t.row(vec![
                "  waiting for retry".into(),
                o.waiting_for_retry.to_string(),
            ]);
            t.row(vec![
                "  published (kept)".into(),
                o.published_kept.to_string(),
            ]);
            print!("{}", t.render());
            println!();
            println!("IN-FLIGHT LEASES");
            let mut leases = Table::new(["OWNER", "EVENTS", "LAST EXPIRES IN"]);
            for lease in &o.leases {
                leases.row(vec![
                    lease.owner.clone().unwrap_or_else(|| "-".into()),
                    lease.events.to_string(),
                    human(lease.last_expires_in.as_secs_f64()),
                ]);
            }
            if leases.is_empty() {
                println!("  none");
            } else {
                print!("{}", leases.render());
            }
        }
    }
    println!();
    println!("DEAD LETTERS");
    match outbox.map(|o| o.dead_letters.as_slice()) {
        None => println!("  (no outbox_dead_letters table: skipped)"),
        Some([]) => println!("  none"),
        Some(groups) => {
            let mut t = Table::new(["TOPIC", "REASON", "COUNT", "OLDEST", "NEWEST"]);
            for g in groups {
                t.row(vec![
                    g.topic.clone(),
                    g.reason.clone(),
                    g.count.to_string(),
                    g.oldest.format("%Y-%m-%d %H:%M:%S").to_string(),
                    g.newest.format("%Y-%m-%d %H:%M:%S").to_string(),
                ]);
            }
            print!("{}", t.render());
        }
    }
    if let Some(i) = inbox {
        println!();
        println!("INBOX");
        let mut t = Table::plain();
        let age = i
            .oldest_age
            .map_or_else(|| "-".to_owned(), |age| human(age.as_secs_f64()));
        t.row(vec!["  rows".into(), format!("{} (oldest {age})", i.rows)]);
        print!("{}", t.render());
    }
    if let Some(k) = keys {
        println!();
        println!("IDEMPOTENCY");
        let mut t = Table::plain();
        t.row(vec![
            "  keys".into(),
            format!(
                "{} ({} in flight, {} expired)",
                k.keys, k.in_flight, k.expired
            ),
        ]);
        print!("{}", t.render());
    }
}
