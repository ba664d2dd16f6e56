//! Apache Kafka stopped (SIGTERM) and later killed (SIGKILL) while a relay publishes and a consumer
//! runner consumes. The broker is one this test owns (`testkit::OwnedBroker`, its own ports and
//! data), so tests running beside it are never hit.

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::Message as _;
use rdkafka::message::Headers;
use testkit::OwnedBroker;
use workspace_tests::pipeline;

const EVENTS: usize = 6_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stopped_then_killed_loses_no_event_and_applies_each_once() {
    let mut broker = OwnedBroker::start().await;
    let bootstrap = broker.bootstrap_servers();
    let topic = testkit::kafka::topic_on(&bootstrap, 3).await;
    let dead_letters = testkit::kafka::topic_on(&bootstrap, 1).await;
    let source = testkit::database(&[&outbox::MIGRATOR]).await;
    let sink = testkit::database(&[&inbox::MIGRATOR]).await;
    pipeline::create_effects(&sink.pool).await.expect("effects");

    let relay = pipeline::spawn_relay(&source.pool, &bootstrap, 500);
    let consumer = pipeline::spawn_consumer(&sink.pool, &bootstrap, &topic, &dead_letters);

    let writer = {
        let (pool, topic) = (source.pool.clone(), topic.clone());
        tokio::spawn(async move {
            pipeline::write(&pool, &topic, EVENTS, 20, Duration::from_millis(40)).await
        })
    };

    // The outages last a few seconds each, while the writer keeps committing events.
    let outage = Duration::from_secs(3);
    wait_for_some(&sink.pool, 500).await;
    broker.stop();
    tokio::time::sleep(outage).await;
    broker.restart().await;
    wait_for_some(&sink.pool, 2_000).await;
    broker.kill();
    tokio::time::sleep(outage).await;
    broker.restart().await;

    let written = writer.await.expect("writer").expect("events written");
    assert_eq!(written.len(), EVENTS);
    pipeline::assert_settled(
        &source.pool,
        &sink.pool,
        EVENTS as i64,
        Duration::from_secs(180),
    )
    .await;

    let on_wire = testkit::kafka::read_all_from(&bootstrap, &topic).await;
    let ids: HashSet<String> = on_wire
        .iter()
        .filter_map(|m| {
            m.headers()?
                .iter()
                .find(|h| h.key == "event-id")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
        .collect();
    let expected: HashSet<String> = written.iter().map(ToString::to_string).collect();
    assert_eq!(ids, expected, "the wire holds exactly the committed events");
    let stats = consumer.shutdown().await;
    relay.shutdown().await;
    assert_eq!(stats.dead_lettered, 0);
    println!(
        "broker stop + kill: {EVENTS} events, {} messages on the wire ({} duplicates), the inbox skipped {}",
        on_wire.len(),
        on_wire.len() - EVENTS,
        stats.duplicates
    );
    assert!(on_wire.iter().all(|m| m.topic() == topic));
}

async fn wait_for_some(pool: &sqlx::PgPool, count: i64) {
    let (_, distinct) = pipeline::wait_applied(pool, count, Duration::from_secs(120)).await;
    assert!(distinct >= count, "only {distinct} events applied");
}
