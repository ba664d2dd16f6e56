//! Chaos against real OS processes: each service runs as its own `commerce <service>` process
//! (its own database, the shared broker and Redis), four clients place a steady stream of
//! orders and retry them with the same `Idempotency-Key` like real clients, and the test
//! SIGKILLs processes while orders are in flight. Once the stream stops and the stack has
//! settled, the books are read from each service's database and must be exact.
//!
//! - Every service SIGKILLed in turn and restarted at once under the same instance id (static
//!   group membership: it gets its partitions back without waiting for the session timeout).
//! - Two inventory instances in one consumer group, one SIGKILLed for good: the other takes
//!   over its partitions once the broker gives up on it (the consumers' 45 s session timeout).
//!
//! Run with `cargo test -p commerce-launcher --test chaos -- --nocapture` after
//! `eval "$(scripts/services up)"`; the table it prints is in docs/chaos.md.

#[path = "chaos/books.rs"]
mod books;
#[path = "chaos/cluster.rs"]
mod cluster;
#[path = "chaos/load.rs"]
mod load;
#[path = "chaos/report.rs"]
mod report;
#[path = "chaos/settle.rs"]
mod settle;

use std::io::Write as _;
use std::time::{Duration, Instant};

use commerce_launcher::Service;
use commerce_launcher::client::Client;
use tokio::sync::Mutex;

use cluster::Cluster;
use load::{Catalogue, Load};
use report::{Ending, InFlight, Kill};
use settle::open_orders;

/// Concurrent clients placing orders.
const CLIENTS: usize = 4;
/// How long the stream runs before the first kill, and after each recovery.
const BETWEEN_KILLS: Duration = Duration::from_secs(3);
/// How long the stack may take to settle once the stream stops (liveness only: the relay and
/// idempotency leases a killed process held last 30 s, and two cores may be busy elsewhere).
const SETTLE_WITHIN: Duration = Duration::from_secs(120);
/// How long a survivor may take to hold its dead peer's partitions: the session timeout (45 s,
/// librdkafka's default, which the services keep) and a margin (liveness only).
const TAKEOVER_WITHIN: Duration = Duration::from_secs(90);

/// The scenarios run one after the other: two stacks of processes at once would share two cores
/// and the server's 100 connections with the other tests.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// A stack of processes with the stream running against it.
struct Run {
    title: &'static str,
    started: Instant,
    cluster: Cluster,
    catalogue: Catalogue,
    load: Load,
    kills: Vec<Kill>,
}

impl Run {
    /// Starts the processes (one instance of each service, plus `extra`), seeds the catalogue
    /// and starts the stream.
    async fn start(title: &'static str, extra: &[(Service, &'static str)]) -> Self {
        let started = Instant::now();
        let cluster = Cluster::start(extra).await;
        let client = Client::new(&cluster.config);
        let admin = client.token("chaos-admin", &["admin"]);
        let catalogue = Catalogue::seed(&client, &admin, &cluster.prefix).await;
        let load = Load::start(&client, &catalogue, &cluster.prefix, CLIENTS);
        tokio::time::sleep(BETWEEN_KILLS).await;
        Self {
            title,
            started,
            cluster,
            catalogue,
            load,
            kills: Vec::new(),
        }
    }

    /// Waits until orders are in flight, then SIGKILLs the process in `slot`; returns what was
    /// in flight at that moment, and the moment.
    async fn kill(&mut self, slot: usize) -> (InFlight, Instant) {
        let service = self.cluster.instance(slot).service;
        let deadline = Instant::now() + Duration::from_secs(30);
        // The orders open just before the kill: counted again after it, they may all have
        // settled in between.
        let orders = loop {
            let open = open_orders(self.cluster.db(Service::Order)).await;
            if open > 0 {
                break open;
            }
            assert!(Instant::now() < deadline, "no order in flight for 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_events")
            .fetch_one(self.cluster.db(service))
            .await
            .expect("outbox rows");
        let in_flight = InFlight {
            orders,
            outbox,
            requests: self.load.outstanding(),
        };
        self.cluster.kill(slot).await;
        (in_flight, Instant::now())
    }

    /// Records a kill and how long after it the stack recovered.
    fn record(
        &mut self,
        slot: usize,
        in_flight: InFlight,
        recovery: &'static str,
        after: Duration,
    ) {
        let instance = self.cluster.instance(slot);
        self.kills.push(Kill {
            killed: format!("{} ({})", instance.service.name(), instance.id),
            in_flight,
            recovery,
            after,
        });
    }

    /// Stops the stream, waits until the stack settles, checks the books, prints the table and
    /// removes the stack.
    async fn finish(self) {
        let stream_stopped = Instant::now();
        let ledger = self.load.finish().await;
        let answered = stream_stopped.elapsed();
        // From the end of the stream: the clients' last orders, then the saga's last steps.
        let settled = stream_stopped.elapsed() + settle::settle(&self.cluster, SETTLE_WITHIN).await;
        let outcomes = books::check(&self.cluster, &self.catalogue, &ledger).await;
        let ending = Ending {
            ledger: &ledger,
            outcomes: &outcomes,
            duplicates: self.cluster.inbox_duplicates().await,
            answered,
            settled,
            run: self.started.elapsed(),
        };
        println!(
            "{}",
            report::render(self.title, &self.cluster.prefix, &self.kills, &ending)
        );
        let _ = std::io::stdout().flush();
        self.cluster.remove().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_sigkilled_in_turn_mid_stream_leaves_the_books_exact() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut run = Run::start("Every service SIGKILLed in turn and restarted", &[]).await;
    for service in [
        // Inventory first: its relay's leases outlive it by 30 s, and the stream has the
        // longest to catch up after. Order last: the keys of the requests it was handling stay
        // held for the idempotency layer's 30 s lease, and the clients wait that long.
        Service::Inventory,
        Service::Payment,
        Service::Shipping,
        Service::Product,
        Service::Notification,
        Service::Order,
    ] {
        let slot = run.cluster.slot(service, "a");
        let (in_flight, killed) = run.kill(slot).await;
        run.cluster.restart(slot).await;
        run.record(slot, in_flight, "restarted, ready", killed.elapsed());
        tokio::time::sleep(BETWEEN_KILLS).await;
    }
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_inventory_instance_is_taken_over_by_its_peer_and_the_books_stay_exact() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut run = Run::start(
        "Two inventory instances in one group, one SIGKILLed for good",
        &[(Service::Inventory, "b")],
    )
    .await;
    let survivor = run.cluster.slot(Service::Inventory, "a");
    let victim = run.cluster.slot(Service::Inventory, "b");
    // The topics inventory reads, three partitions each.
    let topics = commerce_launcher::consumers(&run.cluster.config.topics)
        .into_iter()
        .find(|(name, _)| *name == "inventory.saga")
        .map_or(0, |(_, topics)| topics.len());
    let all = (topics * 3) as f64;
    let partitions = "inbox_consumer_partitions";
    let deadline = Instant::now() + TAKEOVER_WITHIN;
    loop {
        let held = (
            run.cluster.sample(survivor, partitions).await,
            run.cluster.sample(victim, partitions).await,
        );
        if held.0 > 0.0 && held.1 > 0.0 && held.0 + held.1 == all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the instances hold {held:?} partitions"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (in_flight, killed) = run.kill(victim).await;
    loop {
        let held = run.cluster.sample(survivor, partitions).await;
        if held == all {
            break;
        }
        assert!(
            killed.elapsed() < TAKEOVER_WITHIN,
            "the survivor holds {held} of {all} partitions {:?} after its peer died",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    run.record(
        victim,
        in_flight,
        "peer holds all 6 partitions",
        killed.elapsed(),
    );
    tokio::time::sleep(BETWEEN_KILLS).await;
    run.finish().await;
}
