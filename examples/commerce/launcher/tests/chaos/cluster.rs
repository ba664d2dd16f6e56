//! The services as OS processes: `commerce <service>` children with their own environment (a
//! fresh database and topic prefix, free ports, fresh secrets, an instance id each), started,
//! SIGKILLed and started again by the test, and nothing else.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use commerce_launcher::Service;
use commerce_platform::Config;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

/// How long a started process may take to answer `/ready` with 200 (liveness only).
const READY_WITHIN: Duration = Duration::from_secs(90);

/// One process slot: a service instance, started again under the same instance id and port
/// after each kill.
#[derive(Debug)]
pub(crate) struct Instance {
    /// The service it runs.
    pub(crate) service: Service,
    /// Its `COMMERCE_INSTANCE_ID` (static group membership: `<group>.<id>`).
    pub(crate) id: &'static str,
    port: u16,
    child: Option<Child>,
    /// How many times it was started.
    starts: u32,
    /// `inbox_duplicates_total` of the processes of this slot that were killed, each as last
    /// scraped just before its kill.
    duplicates_of_killed: f64,
}

/// A stack of service processes sharing one database prefix and one topic prefix.
#[derive(Debug)]
pub(crate) struct Cluster {
    /// The prefix of the stack's databases, topics, consumer groups and cache keys.
    pub(crate) prefix: String,
    /// What the test's own clients use (the first instance of each service's address).
    pub(crate) config: Config,
    vars: Vec<(String, String)>,
    instances: Vec<Instance>,
    logs: PathBuf,
    http: reqwest::Client,
    pools: Vec<(Service, PgPool)>,
}

fn addr_var(service: Service) -> String {
    format!("{}_ADDR", service.name().to_uppercase())
}

impl Cluster {
    /// Starts one instance (`a`) of every service, plus `extra` instances, and waits until every
    /// one is ready.
    pub(crate) async fn start(extra: &[(Service, &'static str)]) -> Self {
        let prefix = format!("chaos_{}", &Uuid::new_v4().simple().to_string()[..8]);
        let mut ports: Vec<u16> = Vec::new();
        let instances: Vec<Instance> = Service::ALL
            .iter()
            .map(|&service| (service, "a"))
            .chain(extra.iter().copied())
            .map(|(service, id)| Instance {
                service,
                id,
                port: loop {
                    let port = testkit::free_port();
                    if !ports.contains(&port) {
                        ports.push(port);
                        break port;
                    }
                },
                child: None,
                starts: 0,
                duplicates_of_killed: 0.0,
            })
            .collect();
        let secret = || format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        let mut vars: Vec<(String, String)> = vec![
            (
                "DATABASE_URL".into(),
                testkit::postgres::database_url().await,
            ),
            (
                "KAFKA_BOOTSTRAP_SERVERS".into(),
                testkit::kafka::bootstrap_servers().await,
            ),
            ("REDIS_URL".into(), testkit::redis::redis_url().await),
            ("COMMERCE_DB_PREFIX".into(), prefix.clone()),
            ("COMMERCE_TOPIC_PREFIX".into(), prefix.clone()),
            // Seven processes at most, beside the other tests, on a server of 100 connections.
            ("COMMERCE_DB_POOL_SIZE".into(), "4".into()),
            ("JWT_SECRET".into(), secret()),
            ("SERVICE_API_KEY".into(), secret()),
            ("RESERVATION_TIMEOUT_SECS".into(), "30".into()),
            ("ORDER_ARCHIVE_AFTER_DAYS".into(), "30".into()),
            // The load stream sends everything from one address.
            ("COMMERCE_RATE_PER_ADDRESS".into(), "0".into()),
            ("COMMERCE_RATE_PER_USER".into(), "0".into()),
        ];
        for instance in instances.iter().filter(|i| i.id == "a") {
            vars.push((
                addr_var(instance.service),
                format!("127.0.0.1:{}", instance.port),
            ));
        }
        let config = Config::from_vars(|name| {
            vars.iter()
                .find(|(var, _)| var == name)
                .map(|(_, value)| value.clone())
        })
        .expect("the stack's configuration");
        commerce_launcher::create_topics(&config)
            .await
            .expect("topics");
        let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("chaos")
            .join(&prefix);
        std::fs::create_dir_all(&logs).expect("log directory");
        let mut cluster = Self {
            prefix,
            config,
            vars,
            instances,
            logs,
            http: reqwest::Client::new(),
            pools: Vec::new(),
        };
        // The first instance of each service creates its database; extra instances start once
        // it exists (two processes creating one database at once: see docs/chaos.md).
        let (first, extra): (Vec<usize>, Vec<usize>) =
            (0..cluster.instances.len()).partition(|&slot| cluster.instances[slot].id == "a");
        for wave in [first, extra] {
            for &slot in &wave {
                cluster.spawn(slot);
            }
            for &slot in &wave {
                cluster.wait_ready(slot).await;
            }
        }
        for service in Service::ALL {
            let options: PgConnectOptions =
                cluster.config.database_url.parse().expect("database URL");
            let name = format!("{}_{}", cluster.prefix, service.name());
            let pool = PgPoolOptions::new()
                .max_connections(2)
                .connect_with(options.database(&name))
                .await
                .expect("the service's database");
            cluster.pools.push((service, pool));
        }
        println!(
            "chaos: stack {} started ({} processes; logs in {})",
            cluster.prefix,
            cluster.instances.len(),
            cluster.logs.display()
        );
        cluster
    }

    /// The slot of `service`'s instance `id`.
    pub(crate) fn slot(&self, service: Service, id: &str) -> usize {
        self.instances
            .iter()
            .position(|i| i.service == service && i.id == id)
            .unwrap_or_else(|| panic!("no instance {id} of {}", service.name()))
    }

    /// The instance in `slot`.
    pub(crate) fn instance(&self, slot: usize) -> &Instance {
        &self.instances[slot]
    }

    /// A pool on `service`'s database.
    pub(crate) fn db(&self, service: Service) -> &PgPool {
        self.pools
            .iter()
            .find_map(|(s, pool)| (*s == service).then_some(pool))
            .expect("a pool per service")
    }

    fn spawn(&mut self, slot: usize) {
        let instance = &mut self.instances[slot];
        instance.starts += 1;
        let log = self.logs.join(format!(
            "{}-{}-{}.log",
            instance.service.name(),
            instance.id,
            instance.starts
        ));
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_commerce"));
        command
            .arg(instance.service.name())
            .env_remove("COMMERCE_DEV_MODE")
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .env(
                addr_var(instance.service),
                format!("127.0.0.1:{}", instance.port),
            )
            .env("COMMERCE_INSTANCE_ID", instance.id)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        instance.child = Some(command.spawn().expect("start a service process"));
    }

    /// `http://127.0.0.1:<port>` of the instance in `slot`.
    pub(crate) fn base(&self, slot: usize) -> String {
        format!("http://127.0.0.1:{}", self.instances[slot].port)
    }

    /// Waits until the instance in `slot` answers `/ready` with 200; returns how long it took.
    async fn wait_ready(&mut self, slot: usize) -> Duration {
        let started = Instant::now();
        let url = format!("{}/ready", self.base(slot));
        loop {
            let instance = &mut self.instances[slot];
            let child = instance.child.as_mut().expect("a running process");
            if let Some(status) = child.try_wait().expect("process status") {
                panic!(
                    "{} ({}) exited with {status} before it was ready; see {}",
                    instance.service.name(),
                    instance.id,
                    self.logs.display()
                );
            }
            let answer = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if answer.is_ok_and(|r| r.status() == reqwest::StatusCode::OK) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < READY_WITHIN,
                "{} ({}) not ready after {READY_WITHIN:?}; see {}",
                instance.service.name(),
                instance.id,
                self.logs.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILLs the process in `slot` and reaps it, after scraping its duplicate counter (which
    /// dies with it).
    pub(crate) async fn kill(&mut self, slot: usize) {
        let scraped = self.duplicates(slot).await;
        let instance = &mut self.instances[slot];
        instance.duplicates_of_killed += scraped;
        let mut child = instance.child.take().expect("a running process");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    /// Starts the process in `slot` again (same instance id and port) and waits until it is
    /// ready; returns how long that took.
    pub(crate) async fn restart(&mut self, slot: usize) -> Duration {
        self.spawn(slot);
        self.wait_ready(slot).await
    }

    /// The `/metrics` text of the process in `slot` (empty when it does not answer).
    pub(crate) async fn metrics(&self, slot: usize) -> String {
        let url = format!("{}/metrics", self.base(slot));
        match self
            .http
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The sum of the samples of `metric` (any labels) the process in `slot` reports.
    pub(crate) async fn sample(&self, slot: usize, metric: &str) -> f64 {
        self.metrics(slot)
            .await
            .lines()
            .filter(|line| {
                line.strip_prefix(metric)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }

    async fn duplicates(&self, slot: usize) -> f64 {
        self.sample(slot, "inbox_duplicates_total").await
    }

    /// Redeliveries the consumers' inboxes skipped, over every process of the stack: killed ones
    /// as scraped just before their kill, running ones now.
    pub(crate) async fn inbox_duplicates(&self) -> u64 {
        let mut total = 0.0;
        for (slot, instance) in self.instances.iter().enumerate() {
            total += instance.duplicates_of_killed;
            if instance.child.is_some() {
                total += self.duplicates(slot).await;
            }
        }
        total as u64
    }

    /// Kills every process, then drops the stack's databases and topics and removes the logs.
    /// Only called after every check passed: a failed run keeps them for inspection.
    pub(crate) async fn remove(mut self) {
        self.kill_all();
        for (_, pool) in self.pools.drain(..) {
            pool.close().await;
        }
        let options: PgConnectOptions = self.config.database_url.parse().expect("URL");
        let mut conn = sqlx::ConnectOptions::connect(&options)
            .await
            .expect("connect to drop the databases");
        for service in Service::ALL {
            let drop = format!(
                "DROP DATABASE IF EXISTS \"{}_{}\" WITH (FORCE)",
                self.prefix,
                service.name()
            );
            sqlx::query(sqlx::AssertSqlSafe(drop))
                .execute(&mut conn)
                .await
                .expect("drop a database");
        }
        super::settle::delete_topics(&self.config).await;
        let _ = std::fs::remove_dir_all(&self.logs);
    }

    fn kill_all(&mut self) {
        for instance in &mut self.instances {
            if let Some(mut child) = instance.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Cluster {
    /// The test's processes never outlive it, whether it passes or panics.
    fn drop(&mut self) {
        self.kill_all();
    }
}
