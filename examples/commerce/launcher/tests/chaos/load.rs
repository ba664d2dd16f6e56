//! The order stream: concurrent clients that behave like real ones. Each places orders one
//! after another and retries a failed or timed-out `POST /api/v1/orders` (connection refused
//! while the order service is down, 409 while the first attempt's key is still held, 5xx) with
//! the same `Idempotency-Key` until it gets a definite answer; some orders are cancelled by
//! their customer a moment later.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use commerce_launcher::client::Client;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// How long a client keeps retrying one request before the test fails (liveness only: a key
/// held by a killed process is released after the layer's 30 s lease).
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);
/// How long one attempt may take before the client counts it as timed out and retries.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client waits between two orders: four clients place about five orders a second,
/// about what the six processes settle on two cores.
const PAUSE: Duration = Duration::from_millis(100);

/// How many products with plenty of stock the stream spreads its orders over. Each stock change
/// is an event of its product, and the relay publishes one product's events one at a time, so a
/// single product every order touches would be a hot aggregate (see docs/chaos.md).
const PLENTIFUL: usize = 6;

/// The products the stream orders: several with plenty of stock, and one that sells out (so some
/// orders fail for want of stock), all seeded before the stream starts.
#[derive(Debug, Clone)]
pub(crate) struct Catalogue {
    /// Plenty of stock: every order has a line of one of them, some of two.
    pub(crate) plenty: Vec<(Uuid, i32)>,
    /// Scarce: every fourth order has a line of it too.
    pub(crate) scarce: (Uuid, i32),
}

impl Catalogue {
    /// Creates the products and adds their stock.
    pub(crate) async fn seed(client: &Client, admin: &str, prefix: &str) -> Self {
        let mut products = Vec::new();
        let kinds = (0..PLENTIFUL)
            .map(|n| (format!("plenty-{n}"), 1_000 + 100 * n as i64, 10_000))
            .chain([("scarce".to_owned(), 2_500, 25)]);
        for (name, price, units) in kinds {
            let sku = format!("{prefix}-{name}");
            let id = client
                .create_product(admin, &sku, &name, price)
                .await
                .expect("create a product");
            client.add_stock(admin, id, units).await.expect("add stock");
            products.push((id, units));
        }
        let scarce = products.pop().expect("the scarce product");
        Self {
            plenty: products,
            scarce,
        }
    }

    /// The products and the units each was seeded with.
    pub(crate) fn products(&self) -> impl Iterator<Item = (Uuid, i32)> + '_ {
        self.plenty.iter().copied().chain([self.scarce])
    }

    /// The lines of client `client`'s `n`th order.
    fn lines(&self, client: usize, n: usize) -> Vec<(Uuid, i32)> {
        let first = (n * 5 + client) % self.plenty.len();
        let mut lines = vec![(self.plenty[first].0, 1 + (n % 3) as i32)];
        if n % 3 == 2 {
            lines.push((self.plenty[(first + 1) % self.plenty.len()].0, 1));
        }
        if n.is_multiple_of(4) {
            lines.push((self.scarce.0, 1 + (n % 2) as i32));
        }
        lines
    }
}

/// An order a client placed, as the client knows it.
#[derive(Debug, Clone)]
pub(crate) struct Placed {
    /// The key it was placed with.
    pub(crate) key: String,
    /// Its customer (the token's subject).
    pub(crate) customer: String,
    /// The id the 201 named.
    pub(crate) id: Uuid,
    /// `Some(true)` when the customer cancelled it (200), `Some(false)` when the cancel was
    /// refused (409: already shipped or final), `None` when it was not cancelled.
    pub(crate) cancelled: Option<bool>,
}

/// What the stream did.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Every order placed, in no particular order.
    pub(crate) orders: Vec<Placed>,
    /// Attempts that were retried (connection errors, timeouts, 409, 5xx).
    pub(crate) retries: u64,
    /// 201s that were replays of an earlier attempt (`Idempotent-Replayed: true`).
    pub(crate) replayed: u64,
}

/// The running stream.
#[derive(Debug)]
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    outstanding: Arc<AtomicUsize>,
    clients: Vec<JoinHandle<anyhow::Result<Ledger>>>,
}

/// One client's stream.
struct Stream {
    client: Client,
    catalogue: Catalogue,
    number: usize,
    prefix: String,
    outstanding: Arc<AtomicUsize>,
    ledger: Ledger,
}

impl Load {
    /// Starts `clients` concurrent clients.
    pub(crate) fn start(
        client: &Client,
        catalogue: &Catalogue,
        prefix: &str,
        clients: usize,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let outstanding = Arc::new(AtomicUsize::new(0));
        let clients = (0..clients)
            .map(|number| {
                let stream = Stream {
                    client: client.clone(),
                    catalogue: catalogue.clone(),
                    number,
                    prefix: prefix.to_owned(),
                    outstanding: Arc::clone(&outstanding),
                    ledger: Ledger::default(),
                };
                tokio::spawn(stream.run(Arc::clone(&stop)))
            })
            .collect();
        Self {
            stop,
            outstanding,
            clients,
        }
    }

    /// Requests sent and not yet answered, now.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::SeqCst)
    }

    /// Stops the stream (each client finishes the order it is placing) and returns what it did.
    pub(crate) async fn finish(self) -> Ledger {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Ledger::default();
        for client in self.clients {
            let ledger = client
                .await
                .expect("a client task")
                .expect("a client got a definite answer to every request");
            all.orders.extend(ledger.orders);
            all.retries += ledger.retries;
            all.replayed += ledger.replayed;
        }
        all
    }
}

/// Whether an answer leaves the request's outcome unknown, so that a client retries it: a
/// server error, or (for a request with an idempotency key) 409, "the first attempt with this key
/// is still in flight".
fn worth_retrying(status: StatusCode, keyed: bool) -> bool {
    (keyed && status == StatusCode::CONFLICT)
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

impl Stream {
    async fn run(mut self, stop: Arc<AtomicBool>) -> anyhow::Result<Ledger> {
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            // Every seventh order is paid with a card the fake provider declines.
            let customer = if n % 7 == 3 {
                format!("decline-{}-{}", self.prefix, self.number)
            } else {
                format!("{}-{}", self.prefix, self.number)
            };
            let token = self.client.token(&customer, &["customer"]);
            let key = Uuid::new_v4().to_string();
            let id = self
                .place(&token, &key, &self.catalogue.lines(self.number, n))
                .await
                .with_context(|| format!("order {key} of {customer}"))?;
            // Every fifth order is cancelled a moment later: before, during or after its payment.
            let cancelled = if n % 5 == 1 {
                tokio::time::sleep(Duration::from_millis((n as u64 * 37) % 400)).await;
                Some(self.cancel(&token, id).await.context("cancel")?)
            } else {
                None
            };
            self.ledger.orders.push(Placed {
                key,
                customer,
                id,
                cancelled,
            });
            n += 1;
            tokio::time::sleep(PAUSE).await;
        }
        Ok(self.ledger)
    }

    /// Sends a request until it gets an answer that is not worth retrying; returns it.
    async fn send_until_definite(
        &mut self,
        keyed: bool,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> anyhow::Result<(StatusCode, bool, Value)> {
        let deadline = tokio::time::Instant::now() + GIVE_UP_AFTER;
        loop {
            self.outstanding.fetch_add(1, Ordering::SeqCst);
            let answer = request().timeout(ATTEMPT_TIMEOUT).send().await;
            self.outstanding.fetch_sub(1, Ordering::SeqCst);
            // Like a real client: again after `Retry-After` when the server names it.
            let mut pause = Duration::from_millis(200);
            let last = match answer {
                Ok(response) if !worth_retrying(response.status(), keyed) => {
                    let status = response.status();
                    let replayed = response.headers().contains_key("idempotent-replayed");
                    let body = response.json().await.unwrap_or(Value::Null);
                    return Ok((status, replayed, body));
                }
                Ok(response) => {
                    if let Some(seconds) = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                    {
                        pause = Duration::from_secs(seconds);
                    }
                    format!("{}", response.status())
                }
                Err(error) => error.to_string(),
            };
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "no definite answer after {GIVE_UP_AFTER:?}; last: {last}"
            );
            self.ledger.retries += 1;
            tokio::time::sleep(pause).await;
        }
    }

    /// Places an order under `key`, retrying until the order service answers 201.
    async fn place(
        &mut self,
        token: &str,
        key: &str,
        lines: &[(Uuid, i32)],
    ) -> anyhow::Result<Uuid> {
        let body = json!({
            "lines": lines.iter().map(|(p, q)| json!({"product_id": p, "quantity": q})).collect::<Vec<_>>()
        });
        let client = self.client.clone();
        let (status, replayed, order) = self
            .send_until_definite(true, || {
                client
                    .request(Method::POST, "order", "/api/v1/orders", Some(token))
                    .header("Idempotency-Key", key)
                    .json(&body)
            })
            .await?;
        anyhow::ensure!(status == StatusCode::CREATED, "{status}: {order}");
        self.ledger.replayed += u64::from(replayed);
        order["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .with_context(|| format!("no id in {order}"))
    }

    /// Cancels an order: `true` when cancelled, `false` when refused (already shipped or final).
    async fn cancel(&mut self, token: &str, id: Uuid) -> anyhow::Result<bool> {
        let client = self.client.clone();
        let path = format!("/api/v1/orders/{id}/cancel");
        let (status, _, body) = self
            .send_until_definite(false, || {
                client.request(Method::POST, "order", &path, Some(token))
            })
            .await?;
        match status {
            StatusCode::OK => Ok(true),
            StatusCode::CONFLICT => Ok(false),
            other => anyhow::bail!("cancel {id}: {other} {body}"),
        }
    }
}
