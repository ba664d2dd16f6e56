//! Shared fixtures: a fresh database, a Redis prefix of its own, requests through `app`, and
//! stock events delivered as the consumer runner delivers them.

#![allow(dead_code)]

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use commerce_events::{Envelope, Event, Topics};
use commerce_platform::Authenticator;
use commerce_platform::testing;
use commerce_product::{AppState, CONSUMER, StockCache, StockLevels, app};
use inbox::Delivery;
use redis::AsyncCommands;
use uuid::Uuid;

pub(crate) const API_KEY: &str = "test-service-key";

pub(crate) fn auth() -> Authenticator {
    Authenticator::new(b"test-secret", API_KEY)
}

pub(crate) fn token(role: &str) -> String {
    testing::token(&auth(), &format!("{role}-1"), &[role])
}

pub(crate) struct Fixture {
    pub(crate) db: testkit::TestDb,
    pub(crate) state: AppState,
    pub(crate) stock: StockLevels,
    pub(crate) prefix: String,
}

pub(crate) async fn fixture() -> Fixture {
    let db = testing::database(&commerce_product::MIGRATOR).await;
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    let cache =
        StockCache::open(&testkit::redis::redis_url().await, prefix.as_str()).expect("a Redis URL");
    Fixture {
        state: AppState {
            pool: db.pool.clone(),
            topics: Topics::new(&prefix),
            auth: auth(),
            stock: cache.clone(),
        },
        stock: StockLevels::new(cache),
        db,
        prefix,
    }
}

impl Fixture {
    pub(crate) async fn send(&self, request: Request<Body>) -> Response {
        send(&self.state, request).await
    }

    /// Delivers `envelope` as the consumer runner does: inbox record and handler in one
    /// transaction.
    pub(crate) async fn deliver(&self, envelope: &Envelope) -> Delivery {
        testing::deliver(&self.db.pool, CONSUMER, &self.stock, envelope).await
    }

    /// [`deliver`](Self::deliver) of an event that must be fresh.
    pub(crate) async fn apply(&self, envelope: &Envelope) {
        testing::apply(&self.db.pool, CONSUMER, &self.stock, envelope).await;
    }

    /// `(available, version)` in Redis.
    pub(crate) async fn cached(&self, product_id: Uuid) -> (Option<i64>, Option<i64>) {
        let mut redis = testkit::redis::connection().await;
        redis
            .hmget(self.state.stock.key(product_id), &["available", "version"])
            .await
            .expect("HMGET")
    }

    /// The events the outbox holds for `product_id`, in order.
    pub(crate) async fn announced(&self, product_id: Uuid) -> Vec<Event> {
        let payloads: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT payload FROM outbox_events WHERE aggregate_id = $1 ORDER BY seq",
        )
        .bind(product_id.to_string())
        .fetch_all(&self.db.pool)
        .await
        .expect("outbox events");
        payloads
            .iter()
            .map(|p| commerce_events::decode(p).expect("an event").event)
            .collect()
    }

    /// `(available, version)` in `stock_levels`.
    pub(crate) async fn stored(&self, product_id: Uuid) -> Option<(i32, i64)> {
        sqlx::query_as("SELECT available, version FROM stock_levels WHERE product_id = $1")
            .bind(product_id)
            .fetch_optional(&self.db.pool)
            .await
            .expect("stock_levels")
    }

    pub(crate) async fn products(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM products")
            .fetch_one(&self.db.pool)
            .await
            .expect("count")
    }

    /// Deletes this test's Redis keys.
    pub(crate) async fn cleanup(&self) {
        let mut redis = testkit::redis::connection().await;
        let keys: Vec<String> = redis
            .keys(format!("{}:*", self.prefix))
            .await
            .expect("KEYS");
        if !keys.is_empty() {
            let _: () = redis.del(keys).await.expect("DEL");
        }
    }

    /// Creates a product through the API and returns its id.
    pub(crate) async fn create(&self, sku: &str, price_cents: i64) -> Uuid {
        let response = self
            .send(post(
                "/api/v1/products",
                Some(&token("admin")),
                &serde_json::json!({ "sku": sku, "name": format!("{sku} name"), "price_cents": price_cents })
                    .to_string(),
            ))
            .await;
        assert_eq!(response.status, StatusCode::CREATED, "{:?}", response.json);
        response.json["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .expect("an id")
    }
}

pub(crate) fn level(product_id: Uuid, available: i32, version: i64) -> Envelope {
    Event::StockLevelChanged {
        product_id,
        total: available + 1,
        reserved: 1,
        available,
        version,
    }
    .into_envelope()
}

#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: StatusCode,
    pub(crate) content_type: String,
    pub(crate) location: Option<String>,
    /// `Idempotent-Replayed`.
    pub(crate) replayed: Option<String>,
    pub(crate) json: serde_json::Value,
}

pub(crate) async fn send(state: &AppState, request: Request<Body>) -> Response {
    let reply = testing::send(app(state.clone()), request).await;
    let header = |name| reply.header(name).map(str::to_owned);
    let content_type = header(header::CONTENT_TYPE).unwrap_or_default();
    let location = header(header::LOCATION);
    let replayed = header(idempotency::IDEMPOTENT_REPLAYED);
    Response {
        status: reply.status,
        content_type,
        location,
        replayed,
        json: reply.body,
    }
}

pub(crate) fn get(uri: &str, token: Option<&str>) -> Request<Body> {
    testing::request(Method::GET, uri, token)
        .body(Body::empty())
        .expect("request")
}

/// A POST with a fresh `Idempotency-Key`.
pub(crate) fn post(uri: &str, token: Option<&str>, body: &str) -> Request<Body> {
    post_with_key(uri, token, Some(&Uuid::now_v7().to_string()), body)
}

/// A POST with `key` as its `Idempotency-Key` (none when `None`).
pub(crate) fn post_with_key(
    uri: &str,
    token: Option<&str>,
    key: Option<&str>,
    body: &str,
) -> Request<Body> {
    let mut builder = testing::request(Method::POST, uri, token);
    if let Some(key) = key {
        builder = builder.header(idempotency::IDEMPOTENCY_KEY, key);
    }
    builder
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .expect("request")
}

pub(crate) fn put(uri: &str, token: Option<&str>, body: &str) -> Request<Body> {
    testing::request(Method::PUT, uri, token)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .expect("request")
}

/// Asserts a problem+json response with `status` and `code`.
pub(crate) fn assert_problem(response: &Response, status: StatusCode, code: &str) {
    assert_eq!(response.status, status, "{:?}", response.json);
    assert_eq!(response.content_type, "application/problem+json");
    assert_eq!(response.json["code"], code, "{:?}", response.json);
}
