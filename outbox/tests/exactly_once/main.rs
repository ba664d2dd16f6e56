//! The exactly-once relay against real PostgreSQL and Apache Kafka, in one process: every event
//! once to a `read_committed` consumer, in per-aggregate order, with progress records that cover
//! exactly the published rows, poison events dead-lettered without holding the shard, and
//! takeovers that settle only what a progress record provably describes (`takeover`).
//! (Crashes, pauses and broker restarts, with real processes, are in `tests/tests/exactly_once_*`.)

mod common;
mod sharing;
mod takeover;

use std::time::Duration;

use common::{
    SHARDS, assert_once_in_order, count, db, enqueue, relay, relay_with, wait_until_empty,
};
use outbox::{NewEvent, Retention};
use rdkafka::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_read_committed_consumers_once_in_order_and_is_marked() {
    let db = db().await;
    let bootstrap = testkit::kafka::bootstrap_servers().await;
    let topic = testkit::kafka::topic(4).await;
    let aggregates: Vec<String> = (0..20).map(|a| format!("agg-{a}")).collect();
    enqueue(&db.pool, &topic, &aggregates, 50).await;
    let name = format!("eos-{}", uuid::Uuid::new_v4().simple());

    let relay = relay(&db.pool, &name).await;
    wait_until_empty(&db.pool).await;
    relay.shutdown().await;

    let messages = testkit::kafka::read_to_end(&bootstrap, &topic, "read_committed").await;
    assert_eq!(messages.len(), 1_000);
    let per_aggregate = assert_once_in_order(&messages);
    assert!(per_aggregate.values().all(|&n| n == 50));

    // One progress partition per shard; together the records cover every row exactly once.
    let progress_topic = format!("{name}.outbox-progress");
    let records = testkit::kafka::read_to_end(&bootstrap, &progress_topic, "read_committed").await;
    let mut covered = Vec::new();
    for record in &records {
        let key = String::from_utf8_lossy(record.key().expect("key")).into_owned();
        assert_eq!(key, format!("{}/{SHARDS}", record.partition()));
        let progress: serde_json::Value =
            serde_json::from_slice(record.payload().expect("payload")).expect("json");
        covered.extend(
            progress["seqs"]
                .as_array()
                .expect("seqs")
                .iter()
                .map(|s| s.as_i64().expect("seq")),
        );
    }
    covered.sort_unstable();
    assert_eq!(covered, (1..=1_000).collect::<Vec<i64>>());

    // A clean shutdown released every shard, and the relay's member lease.
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM leases_named WHERE owner IS NULL"
        )
        .await,
        i64::from(SHARDS) + 1
    );
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM leases_named WHERE owner IS NOT NULL"
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_dead_lettered_and_the_rest_of_its_shard_goes_out_once() {
    let db = db().await;
    let bootstrap = testkit::kafka::bootstrap_servers().await;
    let topic = testkit::kafka::topic(2).await;
    let aggregates: Vec<String> = (0..4).map(|a| format!("agg-{a}")).collect();
    enqueue(&db.pool, &topic, &aggregates, 10).await;
    // Larger than librdkafka's message.max.bytes (1 MB): refused every time.
    let poison = NewEvent::bytes(&topic, "order", "agg-1", "TooLarge", vec![b'x'; 2_000_000]);
    let mut tx = db.pool.begin().await.expect("begin");
    outbox::enqueue(&mut tx, &poison).await.expect("enqueue");
    tx.commit().await.expect("commit");
    let after = NewEvent::bytes(&topic, "order", "agg-1", "Numbered", b"agg-1:10".to_vec());
    let mut tx = db.pool.begin().await.expect("begin");
    outbox::enqueue(&mut tx, &after).await.expect("enqueue");
    tx.commit().await.expect("commit");
    let relay = relay(&db.pool, &format!("eos-{}", uuid::Uuid::new_v4().simple())).await;
    wait_until_empty(&db.pool).await;
    relay.shutdown().await;

    let (reason, aggregate): (String, String) =
        sqlx::query_as("SELECT reason, aggregate_id FROM outbox_dead_letters")
            .fetch_one(&db.pool)
            .await
            .expect("one dead letter");
    assert_eq!(
        (reason.as_str(), aggregate.as_str()),
        ("permanent publish failure", "agg-1")
    );
    let messages = testkit::kafka::read_to_end(&bootstrap, &topic, "read_committed").await;
    assert_eq!(messages.len(), 41, "40 events and the one after the poison");
    let per_aggregate = assert_once_in_order(&messages);
    assert_eq!(
        per_aggregate["agg-1"], 11,
        "the events after the poison went out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keep_retention_published_rows_stay_stamped_and_are_not_published_again() {
    let db = db().await;
    let bootstrap = testkit::kafka::bootstrap_servers().await;
    let topic = testkit::kafka::topic(2).await;
    let aggregates: Vec<String> = (0..5).map(|a| format!("agg-{a}")).collect();
    enqueue(&db.pool, &topic, &aggregates, 20).await;
    let name = format!("eos-{}", uuid::Uuid::new_v4().simple());

    let relay = relay_with(&db.pool, &name, Retention::Keep).await;
    wait_until_empty(&db.pool).await;
    relay.shutdown().await;
    // A second relay over the same outbox finds nothing left to publish.
    let again = relay_with(&db.pool, &name, Retention::Keep).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    again.shutdown().await;

    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM outbox_events
             WHERE published_at IS NOT NULL AND next_attempt_at IS NULL
               AND lease_expires_at IS NULL"
        )
        .await,
        100,
        "every row kept, stamped published"
    );
    let messages = testkit::kafka::read_to_end(&bootstrap, &topic, "read_committed").await;
    assert_eq!(messages.len(), 100, "each once");
    assert_once_in_order(&messages);
}
