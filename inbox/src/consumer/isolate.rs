//! One message at a time: how a batch that failed is applied again to isolate its poison. Each
//! message gets its own transaction and its own retries; a permanent failure is published to the
//! dead-letter topic, and the partition moves on.

use std::sync::atomic::Ordering;
use std::time::Duration;

use leases::task::CancellationToken;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use tokio::time::Instant;

use super::handle::sleep_or_stop;
use super::partition::Processed;
use super::{DeadLetterReason, Handler, HandlerError, Message, Shared};
use crate::table::{self, Delivery};

impl<H: Handler> Shared<H> {
    /// Applies `message` alone, retrying it after retriable failures, and dead-letters it after
    /// a permanent one (or when the retries are used up).
    pub(super) async fn process(&self, message: &Message, stop: &CancellationToken) -> Processed {
        let name = self.config.name.as_str();
        let started = Instant::now();
        let mut attempt = 0_u32;
        let (reason, error) = loop {
            attempt = attempt.saturating_add(1);
            let failure = match self.attempt(message).await {
                Ok(delivery) => {
                    self.counters.settled();
                    let fresh = u64::from(delivery == Delivery::Fresh);
                    self.count(fresh, 1 - fresh);
                    metrics::histogram!(
                        "inbox_consumer_processing_seconds",
                        "consumer" => name.to_owned()
                    )
                    .record(started.elapsed().as_secs_f64());
                    return Processed::Done;
                }
                Err(failure) => failure,
            };
            match failure.dead_letter {
                Some(reason) => break (reason, failure.message),
                None if attempt >= self.config.backoff.max_attempts() => {
                    break (DeadLetterReason::AttemptsExhausted, failure.message);
                }
                None => {
                    let delay = self.config.backoff.delay(attempt);
                    self.retrying(1, attempt, &failure);
                    if sleep_or_stop(delay, stop).await {
                        return Processed::Stopped;
                    }
                }
            }
        };
        self.counters.settled();
        tracing::error!(
            consumer = %name,
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            %reason,
            %error,
            "consumer: dead-lettering the message"
        );
        let mut attempt = 0_u32;
        loop {
            attempt = attempt.saturating_add(1);
            match self.dead_letter(message, reason, &error).await {
                Ok(()) => {
                    self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(
                        "inbox_consumer_messages_total",
                        "consumer" => name.to_owned(),
                        "outcome" => "dead_lettered"
                    )
                    .increment(1);
                    return Processed::Done;
                }
                Err(publish_error) => {
                    let delay = self.config.backoff.delay(attempt);
                    tracing::warn!(
                        consumer = %name,
                        error = %publish_error,
                        ?delay,
                        "consumer: publishing the dead letter failed; retrying"
                    );
                    if sleep_or_stop(delay, stop).await {
                        return Processed::Stopped;
                    }
                }
            }
        }
    }

    /// Decodes, records in the inbox and applies one message in one transaction.
    async fn attempt(&self, message: &Message) -> Result<Delivery, HandlerError> {
        let event = self.handler.decode(message)?;
        let event_id = message
            .header_str(&self.config.event_id_header)
            .ok_or_else(|| {
                HandlerError::dead(
                    DeadLetterReason::MissingEventId,
                    format!("no {} header", self.config.event_id_header),
                )
            })?;
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(HandlerError::retriable)?;
        let mut tx = self.pool.begin().await?;
        if table::receive(&mut tx, &self.config.name, event_id).await? == Delivery::Duplicate {
            tx.commit().await?;
            return Ok(Delivery::Duplicate);
        }
        self.handler.handle(&mut tx, event, message).await?;
        // A commit whose outcome is unknown is retried: the inbox then reports a duplicate.
        tx.commit().await?;
        Ok(Delivery::Fresh)
    }

    async fn dead_letter(
        &self,
        message: &Message,
        reason: DeadLetterReason,
        error: &str,
    ) -> Result<(), KafkaError> {
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let error: String = error.chars().take(1000).collect();
        let mut headers = OwnedHeaders::new_with_capacity(message.headers().count() + 6);
        for (key, value) in message.headers() {
            headers = headers.insert(Header { key, value });
        }
        for (key, value) in [
            ("dlq-reason", reason.as_str()),
            ("dlq-error", &error),
            ("dlq-original-topic", message.topic()),
            ("dlq-original-partition", &partition),
            ("dlq-original-offset", &offset),
            ("dlq-consumer", &self.config.name),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.dead_letter_topic).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        self.producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .map(|_| ())
            .map_err(|(error, _)| error)
    }
}
