//! `status`: is anything stuck? The outbox's backlog, in-flight leases, retries, dead letters, the
//! consumer inbox and the idempotency keys, each section skipped when its tables do not exist.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::db::table_exists;
use crate::duration::human;
use crate::failure::Failure;
use crate::table::{Table, cell};

/// Prints the status of the database behind `pool`.
pub(crate) async fn run(pool: &PgPool, json: bool) -> Result<(), Failure> {
    let outbox = if table_exists(pool, "outbox_events").await? {
        Some(outbox(pool).await?)
    } else {
        None
    };
    let dead = if table_exists(pool, "outbox_dead_letters").await? {
        Some(dead_letters(pool).await?)
    } else {
        None
    };
    let inbox = if table_exists(pool, "inbox").await? {
        Some(inbox(pool).await?)
    } else {
        None
    };
    let keys = if table_exists(pool, "idempotency_keys").await? {
        Some(keys(pool).await?)
    } else {
        None
    };
    if json {
        let document = json!({
            "outbox": outbox.as_ref().map(Outbox::to_json),
            "dead_letters": dead.as_ref().map(|d| d.iter().map(DeadGroup::to_json).collect::<Vec<_>>()),
            "inbox": inbox.as_ref().map(Inbox::to_json),
            "idempotency_keys": keys.as_ref().map(Keys::to_json),
        });
        println!("{document:#}");
    } else {
        print_human(
            outbox.as_ref(),
            dead.as_deref(),
            inbox.as_ref(),
            keys.as_ref(),
        );
    }
    Ok(())
}

/// The outbox's backlog.
#[derive(Debug)]
struct Outbox {
    pending: i64,
    oldest_pending_seconds: Option<f64>,
    oldest: Option<OldestPending>,
    waiting_for_retry: i64,
    published_kept: i64,
    leases: Vec<LeaseGroup>,
}

/// The oldest unpublished event: the one holding up the backlog.
#[derive(Debug, sqlx::FromRow)]
struct OldestPending {
    id: Uuid,
    topic: String,
    aggregate_type: String,
    aggregate_id: String,
    attempts: i32,
    last_error: Option<String>,
    lease_owner: Option<String>,
    leased: bool,
}

/// In-flight leases of one owner.
#[derive(Debug, sqlx::FromRow)]
struct LeaseGroup {
    owner: Option<String>,
    events: i64,
    expires_in_seconds: f64,
}

/// Dead letters of one topic and reason.
#[derive(Debug, sqlx::FromRow)]
struct DeadGroup {
    topic: String,
    reason: String,
    count: i64,
    oldest: DateTime<Utc>,
    newest: DateTime<Utc>,
}

/// The consumer inbox.
#[derive(Debug)]
struct Inbox {
    rows: i64,
    oldest_seconds: Option<f64>,
}

/// Idempotency keys.
#[derive(Debug)]
struct Keys {
    rows: i64,
    in_flight: i64,
    expired: i64,
}

async fn outbox(pool: &PgPool) -> sqlx::Result<Outbox> {
    let (pending, oldest_pending_seconds, waiting_for_retry, published_kept): (
        i64,
        Option<f64>,
        i64,
        i64,
    ) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE next_attempt_at IS NOT NULL),
                extract(epoch FROM now() - min(created_at) FILTER (WHERE next_attempt_at IS NOT NULL))::float8,
                count(*) FILTER (WHERE next_attempt_at > now() AND attempts > 0
                                   AND (lease_expires_at IS NULL OR lease_expires_at <= now())),
                count(*) FILTER (WHERE published_at IS NOT NULL)
         FROM outbox_events",
    )
    .fetch_one(pool)
    .await?;
    let oldest = sqlx::query_as(
        "SELECT id, topic, aggregate_type, aggregate_id, attempts, last_error, lease_owner,
                coalesce(lease_expires_at > now(), false) AS leased
         FROM outbox_events WHERE next_attempt_at IS NOT NULL ORDER BY seq LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    let leases = sqlx::query_as(
        "SELECT lease_owner AS owner, count(*) AS events,
                extract(epoch FROM max(lease_expires_at) - now())::float8 AS expires_in_seconds
         FROM outbox_events WHERE lease_expires_at > now()
         GROUP BY lease_owner ORDER BY lease_owner",
    )
    .fetch_all(pool)
    .await?;
    Ok(Outbox {
        pending,
        oldest_pending_seconds,
        oldest,
        waiting_for_retry,
        published_kept,
        leases,
    })
}

async fn dead_letters(pool: &PgPool) -> sqlx::Result<Vec<DeadGroup>> {
    sqlx::query_as(
        "SELECT topic, reason, count(*) AS count, min(dead_at) AS oldest, max(dead_at) AS newest
         FROM outbox_dead_letters GROUP BY topic, reason ORDER BY topic, reason",
    )
    .fetch_all(pool)
    .await
}

async fn inbox(pool: &PgPool) -> sqlx::Result<Inbox> {
    let (rows, oldest_seconds) = sqlx::query_as(
        "SELECT count(*), extract(epoch FROM now() - min(received_at))::float8
         FROM inbox",
    )
    .fetch_one(pool)
    .await?;
    Ok(Inbox {
        rows,
        oldest_seconds,
    })
}

async fn keys(pool: &PgPool) -> sqlx::Result<Keys> {
    let (rows, in_flight, expired) = sqlx::query_as(
        "SELECT count(*),
                count(*) FILTER (WHERE lease_expires_at > now()),
                count(*) FILTER (WHERE retain_until <= now()
                                   AND (lease_expires_at IS NULL OR lease_expires_at <= now()))
         FROM idempotency_keys",
    )
    .fetch_one(pool)
    .await?;
    Ok(Keys {
        rows,
        in_flight,
        expired,
    })
}

impl Outbox {
    fn to_json(&self) -> Value {
        json!({
            "pending": self.pending,
            "oldest_pending_age_seconds": self.oldest_pending_seconds,
            "oldest_pending": self.oldest.as_ref().map(|o| json!({
                "id": o.id,
                "topic": o.topic,
                "aggregate_type": o.aggregate_type,
                "aggregate_id": o.aggregate_id,
                "attempts": o.attempts,
                "last_error": o.last_error,
                "leased_by": if o.leased { o.lease_owner.clone() } else { None },
            })),
            "waiting_for_retry": self.waiting_for_retry,
            "published_kept": self.published_kept,
            "leases": self.leases.iter().map(|l| json!({
                "owner": l.owner,
                "events": l.events,
                "expires_in_seconds": l.expires_in_seconds,
            })).collect::<Vec<_>>(),
        })
    }
}

impl DeadGroup {
    fn to_json(&self) -> Value {
        json!({
            "topic": self.topic,
            "reason": self.reason,
            "count": self.count,
            "oldest": self.oldest.to_rfc3339(),
            "newest": self.newest.to_rfc3339(),
        })
    }
}

impl Inbox {
    fn to_json(&self) -> Value {
        json!({ "rows": self.rows, "oldest_age_seconds": self.oldest_seconds })
    }
}

impl Keys {
    fn to_json(&self) -> Value {
        json!({ "rows": self.rows, "in_flight": self.in_flight, "expired": self.expired })
    }
}

fn print_human(
    outbox: Option<&Outbox>,
    dead: Option<&[DeadGroup]>,
    inbox: Option<&Inbox>,
    keys: Option<&Keys>,
) {
    println!("OUTBOX");
    match outbox {
        None => println!("  (no outbox_events table: skipped)"),
        Some(o) => {
            let mut t = Table::plain();
            t.row(vec!["  pending".into(), o.pending.to_string()]);
            let age = o
                .oldest_pending_seconds
                .map_or_else(|| "-".to_owned(), human);
            t.row(vec!["  oldest pending age".into(), age]);
            if let Some(old) = &o.oldest {
                let mut what = format!(
                    "{} {}:{} on {}, {} attempt(s)",
                    old.id, old.aggregate_type, old.aggregate_id, old.topic, old.attempts
                );
                if old.leased {
                    what.push_str(&format!(
                        ", leased by {}",
                        old.lease_owner.as_deref().unwrap_or("?")
                    ));
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
                    human(lease.expires_in_seconds),
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
    match dead {
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
        let age = i.oldest_seconds.map_or_else(|| "-".to_owned(), human);
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
                k.rows, k.in_flight, k.expired
            ),
        ]);
        print!("{}", t.render());
    }
}
