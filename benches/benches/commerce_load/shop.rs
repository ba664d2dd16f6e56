//! The Goose scenario: what one simulated customer does. Each iteration places an order (one
//! line of one unit, with a new `Idempotency-Key`), reads it back, and every
//! [`Shop::cancel_every`]-th iteration cancels it (`409` when it shipped already counts as an
//! answer, not a failure). Every order placed is noted with when its `POST` was sent, for the
//! settle times.

use std::sync::{Arc, Mutex};

use commerce_launcher::client::Client;
use goose::prelude::*;
use serde_json::json;
use uuid::Uuid;

/// What the customers of one run share.
pub(crate) struct Shop {
    /// Issues the customers' tokens.
    pub(crate) client: Client,
    /// The products ordered, in turn.
    pub(crate) products: Vec<Uuid>,
    /// Every iteration whose number is a multiple of this cancels its order.
    pub(crate) cancel_every: usize,
    /// The orders placed, with when their `POST` was sent (seconds since the Unix epoch).
    pub(crate) placed: Mutex<Vec<(Uuid, f64)>>,
}

/// One customer's state.
#[derive(Clone)]
struct Customer {
    token: String,
    latest: Option<String>,
    iterations: usize,
}

/// A Goose transaction that calls `Shop::$method` on `$shop` (an `&Arc<Shop>`).
macro_rules! on_shop {
    ($shop:expr, $method:ident) => {{
        let shop = Arc::clone($shop);
        Transaction::new(Arc::new(move |user| {
            let shop = Arc::clone(&shop);
            Box::pin(async move { shop.$method(user).await })
        }))
    }};
}

/// Request names, as Goose's metrics and report list them.
pub(crate) const CREATE: &str = "create order";
pub(crate) const READ: &str = "read order";
pub(crate) const CANCEL: &str = "cancel order";

/// Now, in seconds since the Unix epoch (the clock PostgreSQL's `now()` reads too).
pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

impl Shop {
    /// The scenario: log in once, then create, read and (now and then) cancel, pausing `wait`
    /// after each iteration.
    pub(crate) fn scenario(self: &Arc<Self>, wait: Option<std::time::Duration>) -> Scenario {
        let scenario = scenario!("Shop")
            .register_transaction(on_shop!(self, login).set_on_start())
            .register_transaction(on_shop!(self, create).set_sequence(1))
            .register_transaction(on_shop!(self, read).set_sequence(2))
            .register_transaction(on_shop!(self, cancel).set_sequence(3));
        match wait {
            Some(wait) => scenario.set_wait_time(wait, wait).expect("wait time"),
            None => scenario,
        }
    }

    async fn login(&self, user: &mut GooseUser) -> TransactionResult {
        let customer = format!("load-{}", Uuid::new_v4().simple());
        user.set_session_data(Customer {
            token: self.client.token(&customer, &["customer"]),
            latest: None,
            iterations: 0,
        });
        Ok(())
    }

    async fn create(&self, user: &mut GooseUser) -> TransactionResult {
        let customer = user.get_session_data_unchecked::<Customer>().clone();
        let product = self.products[customer.iterations % self.products.len()];
        let body = json!({"lines": [{"product_id": product, "quantity": 1}]});
        let builder = user
            .get_request_builder(&GooseMethod::Post, "/api/v1/orders")?
            .bearer_auth(&customer.token)
            .header("Idempotency-Key", Uuid::new_v4().to_string())
            .json(&body);
        let request = GooseRequest::builder()
            .set_request_builder(builder)
            .name(CREATE)
            .expect_status_code(201)
            .build();
        let sent_at = unix_now();
        let mut answer = user.request(request).await?;
        let id = match answer.response {
            Ok(response) if response.status().as_u16() == 201 => response
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|order| order["id"].as_str().map(str::to_owned)),
            _ => None,
        };
        let Some(id) = id else {
            return user.set_failure("no order in the answer", &mut answer.request, None, None);
        };
        self.placed
            .lock()
            .expect("placed")
            .push((id.parse().expect("order id"), sent_at));
        let customer = user.get_session_data_unchecked_mut::<Customer>();
        customer.latest = Some(id);
        customer.iterations += 1;
        Ok(())
    }

    async fn read(&self, user: &mut GooseUser) -> TransactionResult {
        let customer = user.get_session_data_unchecked::<Customer>().clone();
        let Some(id) = customer.latest else {
            return Ok(());
        };
        let builder = user
            .get_request_builder(&GooseMethod::Get, &format!("/api/v1/orders/{id}"))?
            .bearer_auth(&customer.token);
        let request = GooseRequest::builder()
            .set_request_builder(builder)
            .name(READ)
            .expect_status_code(200)
            .build();
        user.request(request).await?;
        Ok(())
    }

    async fn cancel(&self, user: &mut GooseUser) -> TransactionResult {
        let customer = user.get_session_data_unchecked::<Customer>().clone();
        let (Some(id), true) = (
            customer.latest,
            customer.iterations.is_multiple_of(self.cancel_every),
        ) else {
            return Ok(());
        };
        let builder = user
            .get_request_builder(&GooseMethod::Post, &format!("/api/v1/orders/{id}/cancel"))?
            .bearer_auth(&customer.token);
        let request = GooseRequest::builder()
            .set_request_builder(builder)
            .name(CANCEL)
            .build();
        let mut answer = user.request(request).await?;
        match answer.response.as_ref().map(|r| r.status().as_u16()) {
            // Cancelled, or shipped before the cancel came: both are answers.
            Ok(200 | 409) => user.set_success(&mut answer.request),
            _ => user.set_failure("cancel refused", &mut answer.request, None, None),
        }
    }
}
