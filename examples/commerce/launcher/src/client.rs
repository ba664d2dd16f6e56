//! A small HTTP client for the stack's public API, used by the demo and the end-to-end tests.

use anyhow::Context;
use std::time::Duration;

use commerce_platform::{Authenticator, Claims, Config};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

/// Calls the services of a running stack.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    config: Config,
    auth: Authenticator,
}

/// A response: status and JSON body (`Value::Null` when the body is not JSON).
pub type Reply = (StatusCode, Value);

impl Client {
    /// A client for the stack configured by `config` (addresses and secrets). Each request
    /// gives up after 30 s.
    ///
    /// # Panics
    ///
    /// When no TLS backend can be initialised (as `reqwest::Client::new` does).
    pub fn new(config: &Config) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client"),
            config: config.clone(),
            auth: config.authenticator(),
        }
    }

    /// A bearer token for `sub` with `roles`, valid for an hour (the demo plays the identity provider).
    pub fn token(&self, sub: &str, roles: &[&str]) -> String {
        self.auth.issue(&Claims {
            sub: sub.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            exp: chrono::Utc::now().timestamp() + 3600,
        })
    }

    /// `http://<address of service>`.
    pub fn base(&self, service: &str) -> String {
        let addr = match service {
            "order" => self.config.addrs.order,
            "inventory" => self.config.addrs.inventory,
            "payment" => self.config.addrs.payment,
            "shipping" => self.config.addrs.shipping,
            "notification" => self.config.addrs.notification,
            _ => self.config.addrs.product,
        };
        format!("http://{addr}")
    }

    /// Sends `request` and reads the reply.
    ///
    /// # Errors
    ///
    /// When the service cannot be reached.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Reply> {
        let response = request.send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    /// A request to `service` at `path`, with a bearer token when given.
    pub fn request(
        &self,
        method: reqwest::Method,
        service: &str,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base(service)));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Creates a product (admin) and waits until it can be ordered: until the order service's
    /// copy of the catalogue has it (the product service announces it with `ProductChanged`).
    ///
    /// # Errors
    ///
    /// When a service cannot be reached, the product service does not answer 201, or the order
    /// service does not know the product within 30 s.
    pub async fn create_product(
        &self,
        admin: &str,
        sku: &str,
        name: &str,
        price_cents: i64,
    ) -> anyhow::Result<Uuid> {
        let body =
            json!({"sku": sku, "name": name, "description": name, "price_cents": price_cents});
        // One key per product meant; a retry of this request with it creates nothing more.
        let key = Uuid::now_v7().to_string();
        let (status, reply) = self
            .send(
                self.request(
                    reqwest::Method::POST,
                    "product",
                    "/api/v1/products",
                    Some(admin),
                )
                .header("Idempotency-Key", key)
                .json(&body),
            )
            .await?;
        if status != StatusCode::CREATED {
            anyhow::bail!("create product {sku}: {status} {reply}");
        }
        let id = reply["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .with_context(|| format!("no id in {reply}"))?;
        self.wait_orderable(id).await?;
        Ok(id)
    }

    /// Waits until the order service's copy of the catalogue has `product`
    /// (`GET /internal/v1/catalogue/{id}` answers 200), for at most 30 s.
    ///
    /// # Errors
    ///
    /// When the order service cannot be reached or does not know the product in time.
    pub async fn wait_orderable(&self, product: Uuid) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let path = format!("/internal/v1/catalogue/{product}");
        loop {
            let request = self
                .request(reqwest::Method::GET, "order", &path, None)
                .header("x-api-key", self.config.api_key.as_str());
            let (status, reply) = self.send(request).await?;
            match status {
                StatusCode::OK => return Ok(()),
                StatusCode::NOT_FOUND if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => anyhow::bail!(
                    "the order service does not know product {product}: {status} {reply}"
                ),
            }
        }
    }

    /// Adds stock for a product (admin).
    ///
    /// # Errors
    ///
    /// When the service cannot be reached or refuses.
    pub async fn add_stock(
        &self,
        admin: &str,
        product: Uuid,
        quantity: i32,
    ) -> anyhow::Result<Value> {
        let path = format!("/api/v1/stock/{product}/add");
        // One key per restock meant; a retry of this request with it adds nothing more.
        let key = Uuid::now_v7().to_string();
        let (status, reply) = self
            .send(
                self.request(reqwest::Method::POST, "inventory", &path, Some(admin))
                    .header("Idempotency-Key", key)
                    .json(&json!({"quantity": quantity})),
            )
            .await?;
        if !status.is_success() {
            anyhow::bail!("add stock: {status} {reply}");
        }
        Ok(reply)
    }

    /// Places an order with an idempotency key.
    ///
    /// # Errors
    ///
    /// When the service cannot be reached.
    pub async fn place_order(
        &self,
        customer: &str,
        key: &str,
        lines: &[(Uuid, i32)],
    ) -> anyhow::Result<Reply> {
        let lines: Vec<Value> = lines
            .iter()
            .map(|(p, q)| json!({"product_id": p, "quantity": q}))
            .collect();
        self.send(
            self.request(
                reqwest::Method::POST,
                "order",
                "/api/v1/orders",
                Some(customer),
            )
            .header("Idempotency-Key", key)
            .json(&json!({"lines": lines})),
        )
        .await
    }

    /// Reads an order.
    ///
    /// # Errors
    ///
    /// When the service cannot be reached.
    pub async fn order(&self, customer: &str, id: &str) -> anyhow::Result<Reply> {
        self.send(self.request(
            reqwest::Method::GET,
            "order",
            &format!("/api/v1/orders/{id}"),
            Some(customer),
        ))
        .await
    }

    /// Polls an order until its state is one of `states` or `limit` passes.
    ///
    /// # Errors
    ///
    /// When the service cannot be reached, or the order is not in one of `states` in time.
    pub async fn wait_state(
        &self,
        customer: &str,
        id: &str,
        states: &[&str],
        limit: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (_, order) = self.order(customer, id).await?;
            if order["state"].as_str().is_some_and(|s| states.contains(&s)) {
                return Ok(order);
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("order {id} not in {states:?} after {limit:?}: {order}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls an order until the saga has settled it: shipped (the furthest it goes without an
    /// admin), cancelled or failed.
    ///
    /// # Errors
    ///
    /// As [`wait_state`](Self::wait_state).
    pub async fn wait_settled(
        &self,
        customer: &str,
        id: &str,
        limit: Duration,
    ) -> anyhow::Result<Value> {
        self.wait_state(customer, id, &["SHIPPED", "CANCELLED", "FAILED"], limit)
            .await
    }

    /// Cancels an order (its customer).
    ///
    /// # Errors
    ///
    /// When the service cannot be reached.
    pub async fn cancel_order(&self, customer: &str, id: &str) -> anyhow::Result<Reply> {
        self.send(self.request(
            reqwest::Method::POST,
            "order",
            &format!("/api/v1/orders/{id}/cancel"),
            Some(customer),
        ))
        .await
    }

    /// An order's shipment (`token`: an admin's or the order's customer's).
    ///
    /// # Errors
    ///
    /// When the service cannot be reached.
    pub async fn shipment(&self, token: &str, order: &str) -> anyhow::Result<Reply> {
        self.send(self.request(
            reqwest::Method::GET,
            "shipping",
            &format!("/api/v1/shipments/{order}"),
            Some(token),
        ))
        .await
    }

    /// Marks an order's shipment delivered (admin).
    ///
    /// # Errors
    ///
    /// When the service cannot be reached.
    pub async fn deliver(&self, admin: &str, order: &str) -> anyhow::Result<Reply> {
        self.send(self.request(
            reqwest::Method::POST,
            "shipping",
            &format!("/api/v1/shipments/{order}/deliver"),
            Some(admin),
        ))
        .await
    }

    /// The caller's notifications, oldest first.
    ///
    /// # Errors
    ///
    /// When the service cannot be reached.
    pub async fn notifications(&self, customer: &str) -> anyhow::Result<Reply> {
        self.send(self.request(
            reqwest::Method::GET,
            "notification",
            "/api/v1/notifications",
            Some(customer),
        ))
        .await
    }

    /// A product as the public API serves it (with available stock).
    ///
    /// # Errors
    ///
    /// When the service cannot be reached.
    pub async fn product(&self, id: Uuid) -> anyhow::Result<Reply> {
        self.send(self.request(
            reqwest::Method::GET,
            "product",
            &format!("/api/v1/products/{id}"),
            None,
        ))
        .await
    }
}
