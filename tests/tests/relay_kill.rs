//! A relay process SIGKILLed again and again after the broker took its batches and before it
//! marked them, over 100,000 events, in each relay mode side by side: the exactly-once relay puts
//! every event on the wire once (to `read_committed` consumers) in per-aggregate order; the
//! default at-least-once relay loses nothing and keeps per-aggregate order, but publishes the
//! killed batches again.
//!
//! How a kill lands in that window: the test takes `LOCK TABLE outbox_events IN SHARE MODE`,
//! which lets the batches in flight reach Kafka (publishing needs no table lock) and blocks the
//! statements that mark them; it then SIGKILLs the process, ends its database sessions (so the
//! blocked marks never run) and releases the lock.

use std::time::Duration;

use sqlx::ConnectOptions as _;
use workspace_tests::relay_process::{
    APPLICATION_NAME, Mode, RelayProcess, RelaySpec, Wire, enqueue_numbered, remaining,
    wait_for_remaining,
};

const BINARY: &str = env!("CARGO_BIN_EXE_relay-process");
const AGGREGATES: usize = 1_000;
const PER_AGGREGATE: usize = 100;
const EVENTS: usize = AGGREGATES * PER_AGGREGATE;
const KILLS: usize = 8;
/// How many events each relay publishes before it is held and killed.
const PER_LIFE: i64 = 6_000;

/// Runs `mode` through the kills; returns what a `read_committed` consumer saw, and how many
/// events new exactly-once owners found committed but unmarked and marked.
async fn killed_again_and_again(mode: Mode) -> (Wire, usize) {
    let started = std::time::Instant::now();
    let db = testkit::database(&[&outbox::MIGRATOR, &leases::MIGRATOR]).await;
    let bootstrap = testkit::kafka::bootstrap_servers().await;
    let topic = testkit::kafka::topic(4).await;
    enqueue_numbered(&db.pool, &topic, AGGREGATES, PER_AGGREGATE, 1_000).await;
    let spec = RelaySpec {
        mode,
        database_url: db.options.to_url_lossy().to_string(),
        bootstrap_servers: bootstrap.clone(),
        name: format!("kill-{}", uuid::Uuid::new_v4().simple()),
        shards: 4,
        // The default relay's lease must outlast its publisher's delivery timeout (2 s + 5 s).
        lease_ttl: match mode {
            Mode::ExactlyOnce => Duration::from_secs(2),
            Mode::AtLeastOnce => Duration::from_secs(8),
        },
    };
    let mut recovered = 0;
    for life in 0..KILLS {
        let relay = RelayProcess::start(BINARY, &spec, &format!("{mode}-{life}"));
        let target = remaining(&db.pool).await - PER_LIFE;
        wait_for_remaining(&db.pool, target.max(0), Duration::from_secs(120)).await;
        let mut lock = db.pool.begin().await.expect("begin");
        sqlx::query("LOCK TABLE outbox_events IN SHARE MODE")
            .execute(&mut *lock)
            .await
            .expect("lock");
        tokio::time::sleep(Duration::from_millis(500)).await;
        recovered += marked_for_previous_owner(&relay);
        relay.kill();
        testkit::postgres::end_sessions(&db.pool, APPLICATION_NAME).await;
        lock.rollback().await.expect("unlock");
    }
    let relay = RelayProcess::start(BINARY, &spec, &format!("{mode}-last"));
    wait_for_remaining(&db.pool, 0, Duration::from_secs(300)).await;
    recovered += marked_for_previous_owner(&relay);
    relay.shutdown();
    println!(
        "{mode}: {KILLS} kills and the drain took {:.0?}",
        started.elapsed()
    );
    let messages = testkit::kafka::read_to_end(&bootstrap, &topic, "read_committed").await;
    (Wire::of(&messages), recovered)
}

/// The events a relay's log says it marked for the previous owner of a shard.
fn marked_for_previous_owner(relay: &RelayProcess) -> usize {
    relay
        .log()
        .iter()
        .filter(|line| line.contains("previous owner's last transaction"))
        .filter_map(|line| line.split("events=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<usize>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_publish_and_mark_the_exactly_once_relay_puts_no_duplicate_on_the_wire() {
    let (exactly_once, recovered) = killed_again_and_again(Mode::ExactlyOnce).await;
    let (at_least_once, _) = killed_again_and_again(Mode::AtLeastOnce).await;
    println!(
        "{KILLS} kills over {EVENTS} events: duplicates on the wire: at-least-once {}, \
         exactly-once {}; events committed to Kafka but not marked when killed, then marked by \
         the next owner: {recovered}",
        at_least_once.duplicates, exactly_once.duplicates
    );

    assert_eq!(exactly_once.distinct, EVENTS, "every event arrived");
    assert_eq!(exactly_once.duplicates, 0, "none twice");
    assert!(
        exactly_once.consecutive,
        "each aggregate's events in order, once"
    );
    assert!(
        recovered > 0,
        "the kills landed between the Kafka commit and the mark"
    );

    assert_eq!(at_least_once.distinct, EVENTS, "every event arrived");
    assert!(
        at_least_once.in_order,
        "each aggregate's events first arrived in order"
    );
    assert!(
        at_least_once.duplicates > 0,
        "the default relay publishes a killed batch again"
    );
}
