//! [`Message`]: a consumed message as a [`Handler`](crate::Handler) sees it.

use rdkafka::message::{BorrowedMessage, Headers, Message as _};

/// A consumed message, as the runner hands it to a [`Handler`](crate::Handler).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp_millis: Option<i64>,
    /// The consumer that read it (for its `consume` span).
    consumer: String,
}

impl Message {
    /// A message built by hand (for testing a handler without a broker).
    pub fn new(
        topic: impl Into<String>,
        partition: i32,
        offset: i64,
        key: Option<Vec<u8>>,
        payload: Option<Vec<u8>>,
        headers: Vec<(String, Option<Vec<u8>>)>,
    ) -> Self {
        Self {
            topic: topic.into(),
            partition,
            offset,
            key,
            payload,
            headers,
            timestamp_millis: None,
            consumer: String::new(),
        }
    }

    pub(super) fn from_kafka(message: &BorrowedMessage<'_>, consumer: &str) -> Self {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_millis: message.timestamp().to_millis(),
            consumer: consumer.to_owned(),
        }
    }

    /// A `consume` span for this message: a child of the producer's trace when the message
    /// carries a `traceparent` header, with the consumer, topic, partition and offset as fields.
    /// The runner applies each event of the default
    /// [`Handler::handle_batch`](crate::Handler::handle_batch) in one; a set-based
    /// `handle_batch` enters it where it works on this message's behalf (while building the
    /// events it enqueues, say, with `outbox::NewEvent::with_trace_context`), so what follows
    /// from the message stays in its trace. Each call makes a new span.
    pub fn span(&self) -> tracing::Span {
        super::trace::span(&self.consumer, self)
    }

    /// The topic it was read from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Its partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Its offset in the partition.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// Its key.
    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// Its value.
    pub fn payload(&self) -> Option<&[u8]> {
        self.payload.as_deref()
    }

    /// The value of the first header named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
    }

    /// The names of its headers, in order.
    pub fn header_names(&self) -> impl Iterator<Item = &str> {
        self.headers.iter().map(|(name, _)| name.as_str())
    }

    /// [`header`](Self::header) as UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every header, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.headers
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_deref()))
    }

    /// Its timestamp, in milliseconds since the Unix epoch, if it has one.
    pub fn timestamp_millis(&self) -> Option<i64> {
        self.timestamp_millis
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_headers() {
        let message = Message::new(
            "t",
            0,
            7,
            None,
            Some(b"{}".to_vec()),
            vec![
                ("event-id".into(), Some(b"e1".to_vec())),
                ("empty".into(), None),
            ],
        );
        assert_eq!(message.header_str("event-id"), Some("e1"));
        assert_eq!(message.header("empty"), None);
        assert_eq!(message.headers().count(), 2);
    }
}
