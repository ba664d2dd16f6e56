//! The window of the broker-restart test's lost batch, driven on purpose: a transaction's records
//! reach the broker and its commit (`EndTxn`) does not (a proxy holds it back), so the relay
//! resumes the commit again and again. The relay does not take a resumed commit's answer as the
//! outcome (in the broker-restart test's failing run librdkafka reported a success for a
//! transaction the broker had aborted; here the proxy gives that answer itself): it reads the
//! outcome back from the progress topic. Every outcome must reach `read_committed` readers
//! exactly once: an aborted batch published again, a committed one marked and not published
//! twice.

use std::time::Duration;

use outbox::RelayMonitor;
use outbox::exactly_once::{ExactlyOnceConfig, ExactlyOnceRelay};
use sqlx::PgPool;
use testkit::{KafkaProxy, OwnedBroker, TestDb};
use workspace_tests::relay_process::{
    Wire, enqueue_numbers, log_to_test_output, open_transaction, wait_for_remaining,
};

/// A broker behind a proxy, a database and a one-shard relay that has published a first batch
/// of 20 events; the broker aborts transactions older than `transaction_timeout_ms` itself.
struct Setup {
    broker: OwnedBroker,
    proxy: KafkaProxy,
    db: TestDb,
    topic: String,
    monitor: RelayMonitor,
    relay: outbox::Background,
}

impl Setup {
    async fn start(transaction_timeout_ms: u32) -> Self {
        log_to_test_output();
        let proxy_port = testkit::free_port();
        let broker = OwnedBroker::start_advertising(proxy_port).await;
        let upstream = broker.bootstrap_servers().parse().expect("broker address");
        let proxy = KafkaProxy::start(proxy_port, upstream).await;
        let bootstrap = proxy.bootstrap_servers();
        let mut db = testkit::database(&[&outbox::MIGRATOR, &leases::MIGRATOR]).await;
        db.keep_on_failure();
        let topic = testkit::kafka::topic_on(&bootstrap, 4).await;
        let mut kafka = testkit::kafka::producer_config_for(&bootstrap);
        kafka.set("transaction.timeout.ms", transaction_timeout_ms.to_string());
        let config = ExactlyOnceConfig::new(format!("resumed-{}", uuid::Uuid::new_v4().simple()))
            .shards(1)
            .batch_size(200)
            .transaction_timeout(Duration::from_secs(2))
            .poll_interval(Duration::from_millis(200));
        let relay = ExactlyOnceRelay::new(db.pool.clone(), &kafka, config)
            .await
            .expect("relay");
        let monitor = relay.monitor();
        let relay = relay.spawn();
        enqueue_numbers(&db.pool, &topic, 20, 0..1, 20).await;
        wait_for_remaining(&db.pool, 0, Duration::from_secs(60)).await;
        Self {
            broker,
            proxy,
            db,
            topic,
            monitor,
            relay,
        }
    }

    /// Holds back the commits, enqueues 200 events and waits until their transaction's commit
    /// is being resumed, its records on the broker.
    async fn hold_a_commit(&self) {
        self.proxy.hold_commits();
        enqueue_numbers(&self.db.pool, &self.topic, 20, 1..11, 200).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.monitor.stalled().is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the commit never stalled"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            open_transaction(&self.broker.bootstrap_servers(), &self.topic),
            "the batch is on the broker, uncommitted"
        );
    }

    /// Lets the commits through, waits for the outbox to drain and returns what
    /// `read_committed` and `read_uncommitted` readers see.
    async fn finish(self) -> (Wire, Wire) {
        self.proxy.release();
        wait_for_remaining(&self.db.pool, 0, Duration::from_secs(90)).await;
        self.relay.shutdown().await;
        let bootstrap = self.proxy.bootstrap_servers();
        let read = |isolation| testkit::kafka::read_to_end(&bootstrap, &self.topic, isolation);
        let committed = Wire::of(&read("read_committed").await);
        let uncommitted = Wire::of(&read("read_uncommitted").await);
        assert_eq!(
            committed.distinct, 220,
            "every event reached read_committed readers"
        );
        assert!(committed.consecutive, "in per-aggregate order");
        (committed, uncommitted)
    }
}

async fn remaining(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox_events")
        .fetch_one(pool)
        .await
        .expect("count")
}

/// Waits until the held transaction is no longer open on the broker.
async fn wait_for_the_broker_to_abort(setup: &Setup) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while open_transaction(&setup.broker.bootstrap_servers(), &setup.topic) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the held transaction stayed open"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_commit_reported_a_success_the_broker_never_saw_loses_nothing() {
    // The broker-restart test's lost batch: the relay resumes a commit and is told it succeeded
    // while the broker aborts the transaction. Taking that answer for the outcome deletes the
    // batch unpublished.
    let setup = Setup::start(3_000).await;
    setup.hold_a_commit().await;
    setup.proxy.answer_commit();
    wait_for_the_broker_to_abort(&setup).await;
    let (committed, uncommitted) = setup.finish().await;
    assert!(
        uncommitted.messages > committed.messages,
        "the transaction the relay was told had committed was aborted, and its events published again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_held_back_until_the_broker_aborted_its_transaction_loses_nothing() {
    let mut setup = Setup::start(3_000).await;
    setup.hold_a_commit().await;
    // A restart: the broker comes back with the transaction open and, since it is older than
    // its timeout, aborts it (its records stay, marked aborted). Then the commit gets through.
    setup.broker.kill();
    setup.broker.restart().await;
    wait_for_the_broker_to_abort(&setup).await;
    assert_eq!(
        remaining(&setup.db.pool).await,
        200,
        "the aborted batch is not marked"
    );
    let (committed, uncommitted) = setup.finish().await;
    assert!(
        uncommitted.messages > committed.messages,
        "the held transaction was aborted and its events published again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_resumed_until_it_succeeds_is_read_back_and_published_once() {
    // The broker would abort the transaction only after 30 s: the commit gets through first.
    let setup = Setup::start(30_000).await;
    setup.hold_a_commit().await;
    let (committed, _) = setup.finish().await;
    assert_eq!(
        committed.duplicates, 0,
        "the committed batch was marked, not published again"
    );
}
