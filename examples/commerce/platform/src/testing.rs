//! Helpers for the services' tests: a fresh database with a service's migrations; deliver an
//! event as the consumer runner does, without a broker; read what a service published through its
//! outbox; call its API and read the whole answer.
//!
//! Behind the `testing` feature, which only the services' dev-dependencies turn on.

use std::fmt::Display;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header, request};
use commerce_events::{Envelope, Event, Topics};
use inbox::{Delivery, HandlerError, Message};
use serde_json::Value;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use testkit::TestDb;
use tower::ServiceExt;

use crate::auth::{Authenticator, Claims};
use crate::events::{EventHandler, decode};
use crate::setup::migrators;

/// A fresh database for one test, migrated as a service's is at start-up: the toolkit's
/// migrations, then the service's `own` (see [`migrators`]). It is dropped with the returned
/// [`TestDb`].
pub async fn database(own: &Migrator) -> TestDb {
    testkit::database(&migrators(own)).await
}

/// The message the outbox relay would publish for `envelope`: on its producer's topic under the
/// `test` prefix, keyed by its aggregate, with the envelope as JSON and the relay's headers
/// (`event-id`, `event-type`, `aggregate-type`, `aggregate-id`, `content-type`).
pub fn message(envelope: &Envelope) -> Message {
    message_with(envelope, envelope.to_json())
}

/// [`message`] with `payload` in place of the envelope's JSON (a newer producer's envelope, say).
pub fn message_with(envelope: &Envelope, payload: Vec<u8>) -> Message {
    let (aggregate_type, _) = envelope.event.aggregate();
    let header = |name: &str, value: &str| (name.to_owned(), Some(value.as_bytes().to_vec()));
    Message::new(
        Topics::new("test").of(&envelope.event),
        0,
        0,
        Some(envelope.aggregate_id.clone().into_bytes()),
        Some(payload),
        vec![
            header("event-id", &envelope.event_id.to_string()),
            header("event-type", envelope.event.event_type()),
            header("aggregate-type", aggregate_type),
            header("aggregate-id", &envelope.aggregate_id),
            header("content-type", "application/json"),
        ],
    )
}

/// Delivers `envelope` to `handler` as the consumer runner does for consumer `consumer`: decodes
/// its [`message`] through [`decode`], then records its event id in the inbox and applies it in
/// one transaction, which commits. A duplicate is committed without calling the handler; a
/// failure rolls everything back.
///
/// # Errors
///
/// The decoding error, a database error, or the handler's error, as the runner would see it.
pub async fn try_deliver<H: EventHandler>(
    pool: &PgPool,
    consumer: &str,
    handler: &H,
    envelope: &Envelope,
) -> Result<Delivery, HandlerError> {
    try_deliver_message(pool, consumer, handler, &message(envelope)).await
}

/// [`try_deliver`] of a message as it arrived ([`message`] or [`message_with`]).
///
/// # Errors
///
/// As [`try_deliver`].
pub async fn try_deliver_message<H: EventHandler>(
    pool: &PgPool,
    consumer: &str,
    handler: &H,
    message: &Message,
) -> Result<Delivery, HandlerError> {
    let event = decode(message)?;
    let event_id = message
        .header_str("event-id")
        .expect("`message` sets the event-id header");
    let mut tx = pool.begin().await?;
    if inbox::receive(&mut tx, consumer, event_id).await? == Delivery::Duplicate {
        tx.commit().await?;
        return Ok(Delivery::Duplicate);
    }
    handler.handle(&mut tx, event).await?;
    tx.commit().await?;
    Ok(Delivery::Fresh)
}

/// [`try_deliver`] of an event that must be handled.
///
/// # Panics
///
/// When the delivery fails, with the error.
pub async fn deliver<H: EventHandler>(
    pool: &PgPool,
    consumer: &str,
    handler: &H,
    envelope: &Envelope,
) -> Delivery {
    try_deliver(pool, consumer, handler, envelope)
        .await
        .unwrap_or_else(|error| {
            panic!(
                "delivering {} {} to {consumer} failed: {error}",
                envelope.event.event_type(),
                envelope.event_id
            )
        })
}

/// Delivers `envelopes` to `handler` as one batch of the consumer runner: records their event
/// ids in the inbox in one statement, then applies the fresh ones in order with
/// [`EventHandler::handle_batch`], in one transaction, which commits. Returns how many were
/// fresh; a failure rolls everything back.
///
/// # Errors
///
/// A decoding error, a database error, or the handler's error.
pub async fn try_deliver_batch<H: EventHandler>(
    pool: &PgPool,
    consumer: &str,
    handler: &H,
    envelopes: &[Envelope],
) -> Result<usize, HandlerError> {
    let messages: Vec<Message> = envelopes.iter().map(message).collect();
    let ids: Vec<String> = envelopes.iter().map(|e| e.event_id.to_string()).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut tx = pool.begin().await?;
    let fresh = inbox::receive_batch(&mut tx, consumer, &ids).await?;
    let mut batch = Vec::new();
    for (message, id) in messages.iter().zip(&ids) {
        if fresh.contains(*id) {
            batch.push((decode(message)?, message));
        }
    }
    let applied = batch.len();
    handler.handle_batch(&mut tx, batch).await?;
    tx.commit().await?;
    Ok(applied)
}

/// [`deliver`] of an event that must be fresh (its first delivery to `consumer`).
///
/// # Panics
///
/// When the delivery fails or is a duplicate.
pub async fn apply<H: EventHandler>(
    pool: &PgPool,
    consumer: &str,
    handler: &H,
    envelope: &Envelope,
) {
    assert_eq!(
        deliver(pool, consumer, handler, envelope).await,
        Delivery::Fresh,
        "{} {} was already delivered to {consumer}",
        envelope.event.event_type(),
        envelope.event_id
    );
}

/// The events enqueued in the outbox for `aggregate_id`, in enqueue order, with their topics.
///
/// # Panics
///
/// When the outbox cannot be read or holds an event that does not decode.
pub async fn published(pool: &PgPool, aggregate_id: impl Display) -> Vec<(String, Event)> {
    sqlx::query_as::<_, (String, Vec<u8>)>(
        "SELECT topic, payload FROM outbox_events WHERE aggregate_id = $1 ORDER BY seq",
    )
    .bind(aggregate_id.to_string())
    .fetch_all(pool)
    .await
    .expect("outbox")
    .into_iter()
    .map(|(topic, payload)| {
        let envelope = commerce_events::decode(&payload).expect("a valid envelope");
        (topic, envelope.event)
    })
    .collect()
}

/// The types of the events enqueued in the outbox for `aggregate_id`, in enqueue order.
///
/// # Panics
///
/// As [`published`].
pub async fn published_types(pool: &PgPool, aggregate_id: impl Display) -> Vec<&'static str> {
    published(pool, aggregate_id)
        .await
        .iter()
        .map(|(_, event)| event.event_type())
        .collect()
}

/// A bearer token from `auth` for `sub` with `roles`, valid for five minutes.
pub fn token(auth: &Authenticator, sub: &str, roles: &[&str]) -> String {
    auth.issue(&Claims {
        sub: sub.into(),
        roles: roles.iter().map(|role| (*role).to_owned()).collect(),
        exp: chrono::Utc::now().timestamp() + 300,
    })
}

/// A request for `uri` with `method`, carrying `token` as its bearer token when there is one.
pub fn request(method: Method, uri: &str, token: Option<&str>) -> request::Builder {
    let builder = Request::builder().method(method).uri(uri);
    match token {
        Some(token) => builder.header(header::AUTHORIZATION, format!("Bearer {token}")),
        None => builder,
    }
}

/// A response read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body as JSON: `Value::Null` when empty or not JSON.
    pub body: Value,
}

impl Reply {
    /// The value of header `name`, when it is there and is text.
    pub fn header(&self, name: impl header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// Its `Content-Type`, when it has one.
    pub fn content_type(&self) -> Option<&str> {
        self.header(header::CONTENT_TYPE)
    }

    /// Its status, its `Content-Type` (empty when it has none) and its body.
    pub fn into_parts(self) -> (StatusCode, String, Value) {
        let content_type = self.content_type().unwrap_or_default().to_owned();
        (self.status, content_type, self.body)
    }
}

/// Sends `app` a request for `uri` with `method`, no body and `token` as its bearer token when
/// there is one, and reads the whole response.
///
/// # Panics
///
/// As [`send`].
pub async fn call(app: Router, method: Method, uri: &str, token: Option<&str>) -> Reply {
    let request = request(method, uri, token)
        .body(Body::empty())
        .expect("a valid request");
    send(app, request).await
}

/// Sends `request` through `app` and reads the whole response.
///
/// # Panics
///
/// When the body cannot be read.
pub async fn send(app: Router, request: Request<Body>) -> Reply {
    let response = app.oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    Reply {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn the_message_is_the_relays() {
        let envelope = Event::StockConfirmed {
            order_id: Uuid::now_v7(),
        }
        .into_envelope();
        let message = message(&envelope);
        assert_eq!(message.topic(), "test.inventory");
        assert_eq!(message.key(), Some(envelope.aggregate_id.as_bytes()));
        assert_eq!(
            message.header_str("event-id"),
            Some(envelope.event_id.to_string().as_str())
        );
        assert_eq!(message.header_str("event-type"), Some("StockConfirmed"));
        assert_eq!(decode(&message).expect("decodes"), envelope);
    }
}
