//! What the order service's tests share: a fresh database, products announced to the catalogue
//! consumer, tokens, and requests through `app(state)` read whole.

#![allow(dead_code)]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use commerce_events::Event;
use commerce_order::domain::{OrderLine, OrderState};
use commerce_order::{AppState, Catalogue, app, catalogue};
use commerce_platform::testing;
use commerce_platform::{Claims, Config};
use serde_json::{Value, json};
use sqlx::PgPool;
use testkit::TestDb;
use uuid::Uuid;

/// The service's copy of the catalogue, fed as the `order.catalogue` consumer is fed.
pub(crate) struct Products {
    pool: PgPool,
}

impl Products {
    /// Announces a new product (version 1) and returns its id.
    pub(crate) async fn add(&self, price_cents: i64, active: bool) -> Uuid {
        let id = Uuid::now_v7();
        self.announce(id, price_cents, active, 1).await;
        id
    }

    /// Delivers a fresh `ProductChanged` for `id` to the catalogue consumer.
    pub(crate) async fn announce(&self, id: Uuid, price_cents: i64, active: bool, version: i64) {
        let envelope = Event::ProductChanged {
            product_id: id,
            sku: format!("SKU-{}", &id.simple().to_string()[..8]),
            name: "a product".into(),
            price_cents,
            active,
            version,
        }
        .into_envelope();
        testing::apply(&self.pool, catalogue::CONSUMER, &Catalogue, &envelope).await;
    }
}

pub(crate) struct Harness {
    pub(crate) db: TestDb,
    pub(crate) config: Config,
    pub(crate) state: AppState,
    pub(crate) products: Products,
}

impl Harness {
    pub(crate) async fn new() -> Self {
        let db = testing::database(&commerce_order::MIGRATOR).await;
        let config = Config::from_env().expect("config");
        let products = Products {
            pool: db.pool.clone(),
        };
        let state = AppState::new(db.pool.clone(), &config);
        Self {
            db,
            config,
            state,
            products,
        }
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    /// A token for `sub`, valid for a minute (or expired a minute ago with `expired`).
    pub(crate) fn token(&self, sub: &str) -> String {
        token(&self.config, sub, 60)
    }

    pub(crate) fn expired_token(&self, sub: &str) -> String {
        token(&self.config, sub, -60)
    }

    pub(crate) async fn send(&self, request: Request<Body>) -> Reply {
        send(app(self.state.clone()), request).await
    }

    /// `POST /api/v1/orders` as `sub` with `key`.
    pub(crate) async fn place(&self, sub: &str, key: &str, body: &Value) -> Reply {
        self.send(
            testing::request(Method::POST, "/api/v1/orders", Some(&self.token(sub)))
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(Body::from(body.to_string()))
                .expect("request"),
        )
        .await
    }

    /// Places an order of one unit of a new product priced 500 and returns its id.
    pub(crate) async fn place_one(&self, sub: &str) -> Uuid {
        let product = self.products.add(500, true).await;
        let reply = self
            .place(
                sub,
                &Uuid::new_v4().to_string(),
                &json!({"lines": [{"product_id": product, "quantity": 1}]}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.id()
    }

    pub(crate) async fn get(&self, sub: &str, path: &str) -> Reply {
        self.send(
            testing::request(Method::GET, path, Some(&self.token(sub)))
                .body(Body::empty())
                .expect("request"),
        )
        .await
    }

    pub(crate) async fn post(&self, sub: &str, path: &str) -> Reply {
        self.send(
            testing::request(Method::POST, path, Some(&self.token(sub)))
                .body(Body::empty())
                .expect("request"),
        )
        .await
    }

    pub(crate) async fn count(&self, table: &str) -> i64 {
        count(self.pool(), table).await
    }

    /// Sets an order's state (and optionally how long ago it was reserved / last changed).
    pub(crate) async fn set_state(&self, id: Uuid, state: OrderState) {
        sqlx::query("UPDATE orders SET state = $2 WHERE id = $1")
            .bind(id)
            .bind(state.as_str())
            .execute(self.pool())
            .await
            .expect("set state");
    }

    pub(crate) async fn state_of(&self, id: Uuid) -> (String, Option<String>) {
        sqlx::query_as("SELECT state, reason FROM orders_all WHERE id = $1")
            .bind(id)
            .fetch_one(self.pool())
            .await
            .expect("order exists")
    }

    /// `(event_type, topic, aggregate_type, aggregate_id, payload)` of every outbox event, in order.
    pub(crate) async fn outbox(&self) -> Vec<(String, String, String, String, Vec<u8>)> {
        sqlx::query_as(
            "SELECT event_type, topic, aggregate_type, aggregate_id, payload FROM outbox_events ORDER BY seq",
        )
        .fetch_all(self.pool())
        .await
        .expect("outbox")
    }
}

pub(crate) fn token(config: &Config, sub: &str, expires_in: i64) -> String {
    config.authenticator().issue(&Claims {
        sub: sub.into(),
        roles: vec!["customer".into()],
        exp: chrono::Utc::now().timestamp() + expires_in,
    })
}

pub(crate) async fn count(pool: &PgPool, table: &str) -> i64 {
    let sql = format!("SELECT count(*) FROM {table}");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(pool)
        .await
        .expect("count")
}

/// A response, its body parsed as JSON (`Value::Null` when empty or not JSON).
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Value,
}

impl Reply {
    pub(crate) fn id(&self) -> Uuid {
        self.body["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("no id in {}", self.body))
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem+json response with `status`.
    pub(crate) fn assert_problem(&self, status: StatusCode) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{:?}",
            self.headers
        );
        assert_eq!(self.body["status"], status.as_u16(), "{}", self.body);
        assert!(self.body["code"].is_string(), "{}", self.body);
    }
}

pub(crate) async fn send(app: Router, request: Request<Body>) -> Reply {
    let testing::Reply {
        status,
        headers,
        body,
    } = testing::send(app, request).await;
    Reply {
        status,
        headers,
        body,
    }
}

/// Inserts an order directly (no HTTP) in `state`, whose last change was `age` ago.
pub(crate) async fn insert_order(
    pool: &PgPool,
    customer: &str,
    state: OrderState,
    age: Duration,
) -> Uuid {
    let mut tx = pool.begin().await.expect("begin");
    let id = Uuid::now_v7();
    let lines = vec![OrderLine {
        product_id: Uuid::now_v7(),
        quantity: 2,
        unit_price_cents: 250,
    }];
    commerce_order::repo::insert(&mut tx, id, customer, &lines, 500)
        .await
        .expect("insert");
    sqlx::query(
        "UPDATE orders SET state = $2,
                updated_at = now() - $3::int8 * interval '1 second',
                reserved_at = CASE WHEN $2 = 'RESERVED' THEN now() - $3::int8 * interval '1 second' END
         WHERE id = $1",
    )
    .bind(id)
    .bind(state.as_str())
    .bind(i64::try_from(age.as_secs()).expect("age"))
    .execute(&mut *tx)
    .await
    .expect("age the order");
    tx.commit().await.expect("commit");
    id
}

/// Polls `check` until it is true or `limit` passes.
pub(crate) async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
