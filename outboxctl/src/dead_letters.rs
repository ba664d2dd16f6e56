//! `dead-letters …`: what died, and fixing it: list, show, replay, discard.

use base64::Engine as _;
use outbox::dead_letters::{self as store, DeadLetter, DeadLetterDetail};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::cli::{ActionArgs, DeadLetterCommand, FilterArgs};
use crate::db::require_table;
use crate::failure::Failure;
use crate::table::{Table, cell};

/// Runs a `dead-letters` command against `pool`.
pub(crate) async fn run(
    pool: &PgPool,
    command: DeadLetterCommand,
    json: bool,
) -> Result<(), Failure> {
    require_table(pool, "outbox_dead_letters", "outbox").await?;
    match command {
        DeadLetterCommand::List { filter, limit } => list(pool, &filter, limit, json).await,
        DeadLetterCommand::Show { id } => show(pool, id, json).await,
        DeadLetterCommand::Replay(args) => act(pool, Action::Replay, args, json).await,
        DeadLetterCommand::Discard(args) => act(pool, Action::Discard, args, json).await,
    }
}

async fn list(pool: &PgPool, args: &FilterArgs, limit: i64, json: bool) -> Result<(), Failure> {
    let filter = args.to_filter();
    let letters = store::list_matching(pool, &filter, limit).await?;
    let total = store::count_matching(pool, &filter).await?;
    if json {
        let document = json!({
            "total": total,
            "dead_letters": letters.iter().map(summary_json).collect::<Vec<_>>(),
        });
        println!("{document:#}");
        return Ok(());
    }
    if letters.is_empty() {
        println!("no dead letters match");
        return Ok(());
    }
    print!("{}", summary_table(&letters).render());
    if total > letters.len() as u64 {
        println!(
            "showing {} of {total} (oldest first); raise --limit or narrow the filters",
            letters.len()
        );
    } else {
        println!("{total} dead letter(s)");
    }
    Ok(())
}

async fn show(pool: &PgPool, id: Uuid, json: bool) -> Result<(), Failure> {
    let Some(detail) = store::get(pool, id).await? else {
        return Err(anyhow::anyhow!("no dead letter with id {id}").into());
    };
    if json {
        println!("{:#}", detail_json(&detail));
        return Ok(());
    }
    let d = &detail.letter;
    let mut t = Table::plain();
    let mut line = |name: &str, value: String| t.row(vec![format!("{name}:"), value]);
    line("id", d.id.to_string());
    line("topic", d.topic.clone());
    line(
        "aggregate",
        format!("{}:{}", d.aggregate_type, d.aggregate_id),
    );
    line("event type", d.event_type.clone());
    line("created at", d.created_at.to_rfc3339());
    line("dead at", d.dead_at.to_rfc3339());
    line("attempts", d.attempts.to_string());
    line("reason", d.reason.clone());
    line(
        "dedup key",
        detail.dedup_key.clone().unwrap_or_else(|| "-".into()),
    );
    if detail.headers.is_empty() {
        line("headers", "-".into());
    }
    for (name, value) in detail.headers.iter() {
        line("header", format!("{name}: {value}"));
    }
    print!("{}", t.render());
    println!("last error:\n{}", d.last_error);
    let (encoding, text) = payload(&d.payload);
    println!("payload ({} bytes, {encoding}):\n{text}", d.payload.len());
    Ok(())
}

/// What `replay` and `discard` do.
#[derive(Debug, Clone, Copy)]
enum Action {
    Replay,
    Discard,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Self::Replay => "replay",
            Self::Discard => "discard",
        }
    }

    fn past(self) -> &'static str {
        match self {
            Self::Replay => "replayed",
            Self::Discard => "discarded",
        }
    }

    fn effect(self) -> &'static str {
        match self {
            Self::Replay => "back into the outbox, for the relay to publish",
            Self::Discard => "deleted for good",
        }
    }
}

async fn act(pool: &PgPool, action: Action, args: ActionArgs, json: bool) -> Result<(), Failure> {
    if let Some(id) = args.id {
        return act_on_one(pool, action, id, args.dry_run, json).await;
    }
    let filter = args.filter.to_filter();
    if filter.is_empty() && !args.all {
        return Err(Failure::usage(format!(
            "{} what? give a dead letter's id, filters (--topic, --aggregate, --aggregate-type, \
             --aggregate-id, --reason, --since, --until), or --all",
            action.verb()
        )));
    }
    if args.dry_run {
        let letters = store::list_matching(pool, &filter, i64::MAX).await?;
        report_dry_run(action, &letters, json);
        return Ok(());
    }
    if !args.yes {
        let count = store::count_matching(pool, &filter).await?;
        if json {
            println!(
                "{:#}",
                json!({ "action": action.verb(), "refused": true, "count": count })
            );
        }
        return Err(Failure::usage(format!(
            "refusing to {} {count} dead letter(s) without --yes: check them with \
             `dead-letters list` (same filters) or --dry-run, then add --yes",
            action.verb()
        )));
    }
    let ids = match action {
        Action::Replay => store::replay_matching(pool, &filter).await?,
        Action::Discard => store::discard_matching(pool, &filter).await?,
    };
    report_done(action, &ids, json);
    Ok(())
}

async fn act_on_one(
    pool: &PgPool,
    action: Action,
    id: Uuid,
    dry_run: bool,
    json: bool,
) -> Result<(), Failure> {
    if dry_run {
        let Some(detail) = store::get(pool, id).await? else {
            return Err(anyhow::anyhow!("no dead letter with id {id}").into());
        };
        report_dry_run(action, std::slice::from_ref(&detail.letter), json);
        return Ok(());
    }
    let done = match action {
        Action::Replay => store::replay(pool, id).await?,
        Action::Discard => store::discard(pool, id).await?,
    };
    if !done {
        return Err(anyhow::anyhow!("no dead letter with id {id}").into());
    }
    report_done(action, &[id], json);
    Ok(())
}

fn report_dry_run(action: Action, letters: &[DeadLetter], json: bool) {
    if json {
        let document = json!({
            "action": action.verb(),
            "dry_run": true,
            "count": letters.len(),
            "dead_letters": letters.iter().map(summary_json).collect::<Vec<_>>(),
        });
        println!("{document:#}");
        return;
    }
    if !letters.is_empty() {
        print!("{}", summary_table(letters).render());
    }
    println!(
        "dry run: would {} {} dead letter(s) ({}); nothing changed",
        action.verb(),
        letters.len(),
        action.effect()
    );
}

fn report_done(action: Action, ids: &[Uuid], json: bool) {
    if json {
        let document = json!({
            "action": action.verb(),
            "dry_run": false,
            "count": ids.len(),
            "ids": ids,
        });
        println!("{document:#}");
        return;
    }
    for id in ids {
        println!("{} {id}", action.past());
    }
    println!(
        "{} {} dead letter(s) ({})",
        action.past(),
        ids.len(),
        action.effect()
    );
}

fn summary_table(letters: &[DeadLetter]) -> Table {
    let mut t = Table::new([
        "ID",
        "DEAD AT",
        "TOPIC",
        "AGGREGATE",
        "EVENT TYPE",
        "ATTEMPTS",
        "REASON",
        "LAST ERROR",
    ]);
    for d in letters {
        t.row(vec![
            d.id.to_string(),
            d.dead_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            d.topic.clone(),
            cell(&format!("{}:{}", d.aggregate_type, d.aggregate_id), 40),
            d.event_type.clone(),
            d.attempts.to_string(),
            d.reason.clone(),
            cell(&d.last_error, 60),
        ]);
    }
    t
}

fn summary_json(d: &DeadLetter) -> Value {
    json!({
        "id": d.id,
        "topic": d.topic,
        "aggregate_type": d.aggregate_type,
        "aggregate_id": d.aggregate_id,
        "event_type": d.event_type,
        "created_at": d.created_at.to_rfc3339(),
        "dead_at": d.dead_at.to_rfc3339(),
        "attempts": d.attempts,
        "reason": d.reason,
        "last_error": d.last_error,
        "payload_bytes": d.payload.len(),
    })
}

fn detail_json(detail: &DeadLetterDetail) -> Value {
    let mut document = summary_json(&detail.letter);
    let (encoding, text) = payload(&detail.letter.payload);
    if let Value::Object(fields) = &mut document {
        fields.insert("headers".into(), json!(detail.headers.0));
        fields.insert("dedup_key".into(), json!(detail.dedup_key));
        fields.insert("payload_encoding".into(), json!(encoding));
        fields.insert("payload".into(), json!(text));
    }
    document
}

/// The payload as text: UTF-8 when it is, else base64.
fn payload(bytes: &[u8]) -> (&'static str, String) {
    match std::str::from_utf8(bytes) {
        Ok(text) => ("utf-8", text.to_owned()),
        Err(_) => (
            "base64",
            base64::engine::general_purpose::STANDARD.encode(bytes),
        ),
    }
}
