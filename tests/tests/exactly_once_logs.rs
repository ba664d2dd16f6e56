//! A healthy exactly-once deployment logs no `ERROR` line through joins, crashes, takeovers and
//! restarts (so an operator can alert on `ERROR`): relay processes `a` and `b` share the shards,
//! `a` is SIGKILLed and `b` takes its shards over, `a` restarts under its stable owner and takes
//! its share back, and both shut down; every event reaches `read_committed` consumers once.

use std::time::Duration;

use sqlx::ConnectOptions as _;
use workspace_tests::relay_process::{
    Mode, RelayProcess, RelaySpec, Wire, enqueue_numbered, wait_for_remaining,
};

const BINARY: &str = env!("CARGO_BIN_EXE_relay-process");
const EVENTS: i64 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_crashes_takeovers_and_restarts_log_no_error() {
    let mut db = testkit::database(&[&outbox::MIGRATOR, &leases::MIGRATOR]).await;
    db.keep_on_failure();
    let bootstrap = testkit::kafka::bootstrap_servers().await;
    let topic = testkit::kafka::topic(4).await;
    enqueue_numbered(&db.pool, &topic, 20, 1_000, 1_000).await;
    let spec = RelaySpec {
        mode: Mode::ExactlyOnce,
        database_url: db.options.to_url_lossy().to_string(),
        bootstrap_servers: bootstrap.clone(),
        name: format!("logs-{}", uuid::Uuid::new_v4().simple()),
        shards: 2,
        lease_ttl: Duration::from_secs(2),
    };
    let limit = Duration::from_secs(120);
    let a = RelayProcess::start(BINARY, &spec, "a");
    wait_for_remaining(&db.pool, EVENTS - 4_000, limit).await;
    let b = RelayProcess::start(BINARY, &spec, "b");
    wait_for_remaining(&db.pool, EVENTS - 8_000, limit).await;
    let mut log = a.log();
    a.kill();
    wait_for_remaining(&db.pool, EVENTS - 12_000, limit).await;
    let a = RelayProcess::start(BINARY, &spec, "a");
    wait_for_remaining(&db.pool, 0, limit).await;
    log.extend(a.log());
    log.extend(b.log());
    a.shutdown();
    b.shutdown();

    assert!(
        log.iter().any(|line| line.contains("named lease acquired")),
        "the relays' logs were read: {log:#?}"
    );
    let errors: Vec<&String> = log.iter().filter(|line| line.contains(" ERROR ")).collect();
    assert!(
        errors.is_empty(),
        "ERROR lines in a healthy run: {errors:#?}"
    );
    let committed =
        Wire::of(&testkit::kafka::read_to_end(&bootstrap, &topic, "read_committed").await);
    assert_eq!(committed.distinct, EVENTS as usize, "every event arrived");
    assert!(committed.consecutive, "once each, in per-aggregate order");
}
