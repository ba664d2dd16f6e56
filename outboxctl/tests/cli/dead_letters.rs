//! `dead-letters list | show | replay | discard`.

use rdkafka::Message as _;
use rdkafka::message::Headers as _;
use uuid::Uuid;

use super::*;

/// Three dead letters: two permanent failures on `orders` (order:poison-1, order:poison-2) and
/// one exhausted retry on `payments` (payment:flaky-1).
async fn three_dead(db: &TestDb) -> [NewEvent; 3] {
    let events = [
        NewEvent::bytes(
            "orders",
            "order",
            "poison-1",
            "OrderPlaced",
            b"{\"n\":1}".to_vec(),
        ),
        NewEvent::bytes(
            "orders",
            "order",
            "poison-2",
            "OrderPlaced",
            b"{\"n\":2}".to_vec(),
        ),
        NewEvent::bytes(
            "payments",
            "payment",
            "flaky-1",
            "PaymentTaken",
            b"p".to_vec(),
        ),
    ];
    bury(db, &events).await;
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_prints_a_table_and_json_and_filters() {
    let db = full_db().await;
    let url = url_of(&db).await;
    let [p1, p2, f1] = three_dead(&db).await;

    let table = ctl_ok(&url, &["dead-letters", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID "), "{table}");
    assert!(
        lines[0].contains("REASON") && lines[0].contains("LAST ERROR"),
        "{table}"
    );
    for event in [&p1, &p2, &f1] {
        assert!(table.contains(&event.id.to_string()), "{table}");
    }
    assert!(table.contains("permanent publish failure"), "{table}");
    assert!(table.contains("attempts exhausted (2)"), "{table}");
    assert!(table.contains("order:poison-1"), "{table}");
    // Columns line up: every row has its reason where the header has REASON.
    let column = lines[0].find("REASON").expect("REASON");
    for line in &lines[1..4] {
        let reason = &line[column..];
        assert!(
            reason.starts_with("permanent") || reason.starts_with("attempts"),
            "{line}"
        );
    }

    let all = ctl_json(&url, &["dead-letters", "list"]);
    assert_eq!(all["total"], 3);
    let flaky = &all["dead_letters"].as_array().expect("array")[2];
    assert_eq!(flaky["id"], f1.id.to_string());
    assert_eq!(flaky["topic"], "payments");
    assert_eq!(flaky["aggregate_type"], "payment");
    assert_eq!(flaky["aggregate_id"], "flaky-1");
    assert_eq!(flaky["attempts"], 2);
    assert_eq!(flaky["reason"], "attempts exhausted (2)");
    assert!(
        flaky["last_error"]
            .as_str()
            .expect("error")
            .contains("timed out")
    );

    let only = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["dead-letters", "list"];
        all.extend_from_slice(args);
        ids(&ctl_json(&url, &all), "dead_letters")
    };
    let (p1, p2, f1) = (p1.id.to_string(), p2.id.to_string(), f1.id.to_string());
    assert_eq!(only(&["--topic", "payments"]), std::slice::from_ref(&f1));
    assert_eq!(only(&["--topic", "orders"]), [p1.clone(), p2.clone()]);
    assert_eq!(
        only(&["--aggregate", "order:poison-2"]),
        std::slice::from_ref(&p2)
    );
    assert_eq!(
        only(&["--aggregate", "payment:poison-2"]),
        Vec::<String>::new()
    );
    assert_eq!(
        only(&["--aggregate-id", "poison-1"]),
        std::slice::from_ref(&p1)
    );
    assert_eq!(
        only(&["--aggregate-type", "order"]),
        [p1.clone(), p2.clone()]
    );
    assert_eq!(only(&["--reason", "EXHAUSTED"]), std::slice::from_ref(&f1));
    assert_eq!(
        only(&["--reason", "permanent", "--topic", "orders"]).len(),
        2
    );
    assert_eq!(only(&["--since", "1h"]).len(), 3);
    assert_eq!(only(&["--until", "1h"]).len(), 0);
    assert_eq!(
        only(&[
            "--since",
            "2020-01-01T00:00:00Z",
            "--until",
            "2999-01-01T00:00:00Z"
        ])
        .len(),
        3
    );
    let limited = ctl_json(&url, &["dead-letters", "list", "--limit", "1"]);
    assert_eq!(
        (ids(&limited, "dead_letters"), &limited["total"]),
        (vec![p1], &Value::from(3))
    );
    let limited = ctl_ok(&url, &["dead-letters", "list", "--limit", "1"]);
    assert!(limited.contains("showing 1 of 3"), "{limited}");

    assert_eq!(
        ctl_ok(&url, &["dead-letters", "list", "--topic", "nope"]),
        "no dead letters match\n"
    );
    // Malformed filters are usage errors.
    for bad in [
        &["dead-letters", "list", "--aggregate", "no-colon"][..],
        &["dead-letters", "list", "--since", "yesterday"],
        &[
            "dead-letters",
            "list",
            "--aggregate",
            "a:b",
            "--aggregate-id",
            "b",
        ],
    ] {
        let run = ctl(&url, bad);
        assert_eq!(run.code, 2, "{bad:?}: {run:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_prints_everything_with_the_payload_as_text_or_base64() {
    let db = full_db().await;
    let url = url_of(&db).await;
    let text = NewEvent::bytes(
        "orders",
        "order",
        "o-1",
        "OrderPlaced",
        "{\"total\":990,\"note\":\"café\"}",
    )
    .header("traceparent", "00-abc-def-01")
    .dedup_key("request-7");
    let binary = NewEvent::bytes(
        "orders",
        "order",
        "o-2",
        "OrderPlaced",
        vec![0xff, 0x00, 0xfe],
    );
    bury(&db, &[text.clone(), binary.clone()]).await;

    let shown = ctl_json(&url, &["dead-letters", "show", &text.id.to_string()]);
    assert_eq!(shown["id"], text.id.to_string());
    assert_eq!(shown["event_type"], "OrderPlaced");
    assert_eq!(shown["aggregate_id"], "o-1");
    assert_eq!(shown["reason"], "permanent publish failure");
    assert_eq!(shown["last_error"], "injected: message rejected as invalid");
    assert_eq!(shown["headers"]["traceparent"], "00-abc-def-01");
    assert_eq!(shown["dedup_key"], "request-7");
    assert_eq!(shown["payload_encoding"], "utf-8");
    assert_eq!(shown["payload"], "{\"total\":990,\"note\":\"café\"}");
    assert!(shown["created_at"].is_string() && shown["dead_at"].is_string());

    let human = ctl_ok(&url, &["dead-letters", "show", &text.id.to_string()]);
    for expected in [
        "aggregate:",
        "order:o-1",
        "traceparent: 00-abc-def-01",
        "request-7",
        "injected: message rejected as invalid",
        "utf-8",
        "café",
    ] {
        assert!(human.contains(expected), "{expected} missing in\n{human}");
    }

    let shown = ctl_json(&url, &["dead-letters", "show", &binary.id.to_string()]);
    assert_eq!(shown["payload_encoding"], "base64");
    assert_eq!(shown["payload"], "/wD+");
    assert_eq!(shown["headers"], serde_json::json!({}));
    assert_eq!(shown["dedup_key"], Value::Null);

    let missing = ctl(&url, &["dead-letters", "show", &Uuid::now_v7().to_string()]);
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(missing.stderr.contains("no dead letter"), "{missing:?}");
    assert_eq!(ctl(&url, &["dead-letters", "show", "not-a-uuid"]).code, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_letter_is_published_by_a_real_relay() {
    let db = full_db().await;
    let url = url_of(&db).await;
    let topic = testkit::kafka::topic(1).await;
    let dead = NewEvent::bytes(&topic, "order", "o-1", "OrderPlaced", b"hello".to_vec());
    let other = NewEvent::bytes(&topic, "order", "o-2", "OrderPlaced", b"stays".to_vec());
    bury(&db, &[dead.clone(), other.clone()]).await;

    let out = ctl_ok(&url, &["dead-letters", "replay", &dead.id.to_string()]);
    assert!(out.contains(&format!("replayed {}", dead.id)), "{out}");
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox_events").await,
        1
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox_dead_letters").await,
        1
    );
    // Replaying it again: it is no longer a dead letter.
    let again = ctl(&url, &["dead-letters", "replay", &dead.id.to_string()]);
    assert_eq!(again.code, 1, "{again:?}");

    let publisher = outbox::KafkaPublisher::from_config(&testkit::kafka::producer_config().await)
        .expect("publisher");
    let relay = Relay::new(db.pool.clone(), publisher, RelayConfig::default()).expect("relay");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while count(&db.pool, "SELECT count(*) FROM outbox_events").await > 0 {
        relay.run_once().await.expect("batch");
        assert!(
            tokio::time::Instant::now() < deadline,
            "replay not published"
        );
    }
    let messages = testkit::kafka::read_all(&topic).await;
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message.key(), Some(&b"o-1"[..]));
    assert_eq!(message.payload(), Some(&b"hello"[..]));
    let event_id = message
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == "event-id").and_then(|h| h.value))
        .expect("event-id header");
    assert_eq!(event_id, dead.id.to_string().as_bytes());
    let left = ctl_json(&url, &["dead-letters", "list"]);
    assert_eq!(ids(&left, "dead_letters"), [other.id.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_deletes_one_dead_letter() {
    let db = full_db().await;
    let url = url_of(&db).await;
    let [p1, p2, f1] = three_dead(&db).await;

    let done = ctl_json(&url, &["dead-letters", "discard", &p1.id.to_string()]);
    assert_eq!(done["action"], "discard");
    assert_eq!(done["count"], 1);
    assert_eq!(done["ids"], serde_json::json!([p1.id.to_string()]));
    let left = ctl_json(&url, &["dead-letters", "list"]);
    assert_eq!(
        ids(&left, "dead_letters"),
        [p2.id.to_string(), f1.id.to_string()]
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox_events").await,
        0
    );
    let again = ctl(&url, &["dead-letters", "discard", &p1.id.to_string()]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.contains("no dead letter"), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_actions_are_refused_without_yes_and_done_with_it() {
    let db = full_db().await;
    let url = url_of(&db).await;
    let [p1, p2, f1] = three_dead(&db).await;

    let refused = ctl(&url, &["dead-letters", "replay", "--topic", "orders"]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("2 dead letter(s)"), "{refused:?}");
    assert!(refused.stderr.contains("--yes"), "{refused:?}");
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox_dead_letters").await,
        3
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox_events").await,
        0
    );

    // Neither an id nor a filter nor --all: a usage error, nothing touched.
    let vague = ctl(&url, &["dead-letters", "discard", "--yes"]);
    assert_eq!(vague.code, 2, "{vague:?}");
    // An id and filters together make no sense.
    let both = ctl(
        &url,
        &[
            "dead-letters",
            "discard",
            &p1.id.to_string(),
            "--topic",
            "orders",
        ],
    );
    assert_eq!(both.code, 2, "{both:?}");
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox_dead_letters").await,
        3
    );

    let done = ctl_json(
        &url,
        &["dead-letters", "replay", "--topic", "orders", "--yes"],
    );
    assert_eq!(done["count"], 2);
    let mut replayed: Vec<String> = done["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|id| id.as_str().expect("id").to_owned())
        .collect();
    replayed.sort();
    let mut expected = vec![p1.id.to_string(), p2.id.to_string()];
    expected.sort();
    assert_eq!(replayed, expected);
    let pending: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM outbox_events ORDER BY seq")
        .fetch_all(&db.pool)
        .await
        .expect("pending");
    assert_eq!(pending, [p1.id, p2.id], "replayed oldest first");

    let refused = ctl(&url, &["--json", "dead-letters", "discard", "--all"]);
    assert_eq!(refused.code, 2, "{refused:?}");
    let document: Value = serde_json::from_str(&refused.stdout).expect("json");
    assert_eq!(
        (document["refused"].clone(), document["count"].clone()),
        (Value::from(true), Value::from(1))
    );
    let out = ctl_ok(&url, &["dead-letters", "discard", "--all", "--yes"]);
    assert!(out.contains(&format!("discarded {}", f1.id)), "{out}");
    assert!(out.contains("discarded 1 dead letter(s)"), "{out}");
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM outbox_dead_letters").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_change_nothing() {
    let db = full_db().await;
    let url = url_of(&db).await;
    let [p1, p2, f1] = three_dead(&db).await;
    let snapshot = || async {
        (
            count(&db.pool, "SELECT count(*) FROM outbox_dead_letters").await,
            count(&db.pool, "SELECT count(*) FROM outbox_events").await,
        )
    };
    let before = snapshot().await;

    let one = ctl_json(
        &url,
        &["dead-letters", "replay", &p1.id.to_string(), "--dry-run"],
    );
    assert_eq!(
        (one["dry_run"].clone(), one["count"].clone()),
        (Value::from(true), Value::from(1))
    );
    assert_eq!(ids(&one, "dead_letters"), [p1.id.to_string()]);
    let bulk = ctl_json(
        &url,
        &[
            "dead-letters",
            "replay",
            "--reason",
            "permanent",
            "--dry-run",
        ],
    );
    assert_eq!(
        ids(&bulk, "dead_letters"),
        [p1.id.to_string(), p2.id.to_string()]
    );
    let out = ctl_ok(&url, &["dead-letters", "discard", "--all", "--dry-run"]);
    assert!(out.contains("would discard 3 dead letter(s)"), "{out}");
    assert!(out.contains(&f1.id.to_string()), "{out}");
    let out = ctl_ok(
        &url,
        &["dead-letters", "discard", &f1.id.to_string(), "--dry-run"],
    );
    assert!(out.contains("would discard 1 dead letter(s)"), "{out}");
    // --dry-run wins over --yes.
    ctl_ok(
        &url,
        &["dead-letters", "discard", "--all", "--dry-run", "--yes"],
    );
    ctl_ok(
        &url,
        &[
            "purge",
            "published",
            "--older-than",
            "0s",
            "--dry-run",
            "--yes",
        ],
    );

    assert_eq!(snapshot().await, before);
}
