//! The commerce system's events: one envelope (`event_id`, `schema_version`, `correlation_id`,
//! `causation_id`, `event_type`, `aggregate_id`, `occurred_at`, typed `payload`), the saga's
//! payloads, and the topics they travel on. A consumer that publishes while applying an event
//! wraps what it publishes with [`Event::caused_by`], so a saga's events share one correlation id.
//!
//! Decoding is an allowlist, and the allowlist is the [`Event`] enum itself: [`decode`] reads the
//! envelope, checks `event_type` against the enum's variants and only then deserializes the
//! payload into that variant. An unknown type or a malformed payload (a field missing or of the
//! wrong type) is a [`DecodeError`], which consumers dead-letter.
//!
//! # Events that evolve
//!
//! Events change additively, so producers deploy before their consumers: a producer may add a
//! field to an envelope, a payload or a line, and a consumer that does not know it yet ignores it
//! (a tolerant reader; the allowlist is on event *types*, not fields). Removing a field or
//! changing what one means is a new event type, never an edit of an old one. Every envelope
//! carries [`SCHEMA_VERSION`] (`schema_version`, `1` when absent); it changes only with the
//! envelope's own layout. Nothing here knows about the outbox: a service
//! turns an [`Envelope`] into an outbox event with `commerce_platform::events::to_outbox`.
//!
//! Topics are per producing service (`<prefix>.products`, `<prefix>.orders`, `<prefix>.inventory`,
//! `<prefix>.payments`, `<prefix>.shipments`, see [`Topics`]); every consumer subscribes to the topics it needs with its
//! own consumer group. The prefix (`commerce` by default) lets several stacks share a broker.

#![forbid(unsafe_code)]

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use strum::VariantNames;
use uuid::Uuid;

/// The envelope's layout version, written in every envelope as `schema_version`.
pub const SCHEMA_VERSION: u16 = 1;

/// The topic names of one stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// The prefix (also used to keep consumer groups of different stacks apart).
    pub prefix: String,
    /// Events published by the product service.
    pub products: String,
    /// Events published by the order service.
    pub orders: String,
    /// Events published by the inventory service.
    pub inventory: String,
    /// Events published by the payment service.
    pub payments: String,
    /// Events published by the shipping service.
    pub shipments: String,
    /// Where consumers dead-letter poison messages.
    pub dead_letters: String,
}

impl Topics {
    /// `<prefix>.products`, `<prefix>.orders`, `<prefix>.inventory`, `<prefix>.payments`,
    /// `<prefix>.shipments`, `<prefix>.dead-letters`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            products: format!("{prefix}.products"),
            orders: format!("{prefix}.orders"),
            inventory: format!("{prefix}.inventory"),
            payments: format!("{prefix}.payments"),
            shipments: format!("{prefix}.shipments"),
            dead_letters: format!("{prefix}.dead-letters"),
        }
    }

    /// Every topic, for creating them at start-up.
    pub fn all(&self) -> [&str; 6] {
        [
            &self.products,
            &self.orders,
            &self.inventory,
            &self.payments,
            &self.shipments,
            &self.dead_letters,
        ]
    }

    /// The topic `event` is published on (its producer's topic).
    pub fn of(&self, event: &Event) -> &str {
        match event {
            Event::ProductChanged { .. } => &self.products,
            Event::OrderPlaced { .. }
            | Event::OrderConfirmed { .. }
            | Event::OrderCompleted { .. }
            | Event::OrderCancelled { .. } => &self.orders,
            Event::PaymentApproved { .. }
            | Event::PaymentDeclined { .. }
            | Event::PaymentRefunded { .. } => &self.payments,
            Event::ShipmentCreated { .. } | Event::ShipmentDelivered { .. } => &self.shipments,
            Event::StockReserved { .. }
            | Event::StockReservationFailed { .. }
            | Event::StockConfirmed { .. }
            | Event::StockReleased { .. }
            | Event::StockRestocked { .. }
            | Event::StockLevelChanged { .. } => &self.inventory,
        }
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// The product.
    pub product_id: Uuid,
    /// How many units (at least one).
    pub quantity: i32,
    /// Unit price in cents, snapshotted when the order was placed.
    pub unit_price_cents: i64,
}

/// Payloads, one per event type: the variant's name is the `event_type` on the wire, its fields
/// the `payload` (serde's adjacent tagging), and the set of variants is the decoding allowlist.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::VariantNames,
)]
#[serde(tag = "event_type", content = "payload")]
pub enum Event {
    /// A product was created or changed, or the product service's start-up snapshot of it
    /// (product service). Carries the product's whole state as of `version`.
    ProductChanged {
        /// The product.
        product_id: Uuid,
        /// Its stock-keeping unit.
        sku: String,
        /// Its name.
        name: String,
        /// Its unit price, in cents.
        price_cents: i64,
        /// Whether it is for sale.
        active: bool,
        /// 1 at creation, one more with every change, so copies keep only the newest state.
        version: i64,
    },
    /// A customer placed an order (order service).
    OrderPlaced {
        /// The order.
        order_id: Uuid,
        /// Who placed it.
        customer_id: String,
        /// What was ordered.
        lines: Vec<Line>,
        /// Sum of the lines, in cents.
        total_cents: i64,
    },
    /// An order is paid and its stock sold: it can be shipped (order service).
    OrderConfirmed {
        /// The order.
        order_id: Uuid,
        /// Who placed it.
        customer_id: String,
    },
    /// An order's shipment was delivered: the order is complete, and nothing moves it any more
    /// (order service).
    OrderCompleted {
        /// The order.
        order_id: Uuid,
        /// Who placed it.
        customer_id: String,
    },
    /// An order was cancelled before it shipped (order service): inventory gives its units
    /// back, payment refunds a charge, shipping cancels a shipment not yet handed over.
    OrderCancelled {
        /// The order.
        order_id: Uuid,
        /// Who placed it.
        customer_id: String,
        /// Why.
        reason: String,
    },
    /// Every line of an order is reserved (inventory service).
    StockReserved {
        /// The order.
        order_id: Uuid,
        /// The order's total, for the payment.
        total_cents: i64,
        /// Who pays.
        customer_id: String,
    },
    /// An order could not be reserved; nothing was (inventory service).
    StockReservationFailed {
        /// The order.
        order_id: Uuid,
        /// Why (for example which product was short).
        reason: String,
    },
    /// A reservation became a sale (inventory service).
    StockConfirmed {
        /// The order.
        order_id: Uuid,
    },
    /// A reservation was given back (inventory service).
    StockReleased {
        /// The order.
        order_id: Uuid,
        /// Why.
        reason: String,
    },
    /// The units a cancelled order had bought went back into stock (inventory service).
    StockRestocked {
        /// The order.
        order_id: Uuid,
        /// Why.
        reason: String,
    },
    /// A product's stock figures changed, or their start-up snapshot (inventory service).
    StockLevelChanged {
        /// The product.
        product_id: Uuid,
        /// Units owned.
        total: i32,
        /// Units held by reservations.
        reserved: i32,
        /// `total - reserved`.
        available: i32,
        /// Increases with every change of this product, so caches keep only the newest figure.
        version: i64,
    },
    /// The payment went through (payment service).
    PaymentApproved {
        /// The order.
        order_id: Uuid,
        /// The charge.
        payment_id: Uuid,
        /// Amount charged, in cents.
        amount_cents: i64,
    },
    /// The payment was declined (payment service).
    PaymentDeclined {
        /// The order.
        order_id: Uuid,
        /// Why.
        reason: String,
    },
    /// A charge was refunded after the order was cancelled (payment service).
    PaymentRefunded {
        /// The order.
        order_id: Uuid,
        /// The refunded charge.
        payment_id: Uuid,
        /// Who was refunded.
        customer_id: String,
        /// Amount refunded, in cents.
        amount_cents: i64,
    },
    /// A confirmed order's parcel was handed to the carrier (shipping service).
    ShipmentCreated {
        /// The order.
        order_id: Uuid,
        /// The shipment.
        shipment_id: Uuid,
        /// Who receives it.
        customer_id: String,
        /// The carrier.
        carrier: String,
        /// The carrier's tracking number.
        tracking_number: String,
    },
    /// A shipment reached its customer (shipping service).
    ShipmentDelivered {
        /// The order.
        order_id: Uuid,
        /// The shipment.
        shipment_id: Uuid,
        /// Who received it.
        customer_id: String,
    },
}

impl Event {
    /// The event's type name, as in the envelope and the `event-type` header.
    pub fn event_type(&self) -> &'static str {
        self.into()
    }

    /// `(aggregate type, aggregate id)`: the order for saga events, the product for product and
    /// stock-level events.
    /// The aggregate id is the Kafka key, so one order's events stay in order.
    pub fn aggregate(&self) -> (&'static str, String) {
        match self {
            Event::StockLevelChanged { product_id, .. }
            | Event::ProductChanged { product_id, .. } => ("product", product_id.to_string()),
            Event::OrderPlaced { order_id, .. }
            | Event::OrderConfirmed { order_id, .. }
            | Event::OrderCompleted { order_id, .. }
            | Event::OrderCancelled { order_id, .. }
            | Event::StockReserved { order_id, .. }
            | Event::StockReservationFailed { order_id, .. }
            | Event::StockConfirmed { order_id }
            | Event::StockReleased { order_id, .. }
            | Event::StockRestocked { order_id, .. }
            | Event::PaymentApproved { order_id, .. }
            | Event::PaymentDeclined { order_id, .. }
            | Event::PaymentRefunded { order_id, .. }
            | Event::ShipmentCreated { order_id, .. }
            | Event::ShipmentDelivered { order_id, .. } => ("order", order_id.to_string()),
        }
    }

    /// The event wrapped in a fresh envelope that starts a chain of its own (a request's
    /// event, a job's): its correlation id is its own event id, and nothing caused it.
    pub fn into_envelope(self) -> Envelope {
        let event_id = Uuid::now_v7();
        self.enveloped(event_id, event_id, None)
    }

    /// The event wrapped in a fresh envelope, caused by `cause` (the event a consumer is
    /// applying, [`Envelope::cause`]): it joins that event's chain, with that event as its
    /// causation.
    pub fn caused_by(self, cause: Cause) -> Envelope {
        self.enveloped(Uuid::now_v7(), cause.correlation_id, Some(cause.event_id))
    }

    fn enveloped(
        self,
        event_id: Uuid,
        correlation_id: Uuid,
        causation_id: Option<Uuid>,
    ) -> Envelope {
        Envelope {
            event_id,
            schema_version: SCHEMA_VERSION,
            correlation_id,
            causation_id,
            aggregate_id: self.aggregate().1,
            occurred_at: Utc::now(),
            event: self,
        }
    }
}

/// An event with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Unique per event; the inbox deduplicates on it.
    pub event_id: Uuid,
    /// The envelope's layout version ([`SCHEMA_VERSION`] for the envelopes written here).
    pub schema_version: u16,
    /// The chain the event belongs to (an order's saga): the event id of the chain's first
    /// event, which every event caused by it, directly or not, carries too.
    pub correlation_id: Uuid,
    /// The event whose handling produced this one; `None` for a chain's first event.
    pub causation_id: Option<Uuid>,
    /// The aggregate's id (the Kafka key).
    pub aggregate_id: String,
    /// When the event happened.
    pub occurred_at: DateTime<Utc>,
    /// The typed payload.
    pub event: Event,
}

/// The event a consumer is applying, as the cause of what it publishes ([`Event::caused_by`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cause {
    /// The applied event's chain.
    pub correlation_id: Uuid,
    /// The applied event.
    pub event_id: Uuid,
}

impl Envelope {
    /// This event as the cause of the events published while applying it.
    pub fn cause(&self) -> Cause {
        Cause {
            correlation_id: self.correlation_id,
            event_id: self.event_id,
        }
    }
}

/// The envelope on the wire, as written: the event flattened into `event_type` and `payload`.
#[derive(Serialize)]
struct WireOut<'a> {
    event_id: Uuid,
    schema_version: u16,
    correlation_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    causation_id: Option<Uuid>,
    aggregate_id: &'a str,
    occurred_at: DateTime<Utc>,
    #[serde(flatten)]
    event: &'a Event,
}

/// The envelope on the wire, as read, with the payload kept raw until its type is known; fields
/// it does not know are ignored.
#[derive(Deserialize)]
struct WireIn {
    event_id: Uuid,
    #[serde(default = "first_version")]
    schema_version: u16,
    /// Absent in envelopes written before it was: then the event starts its own chain.
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    event_type: String,
    aggregate_id: String,
    occurred_at: DateTime<Utc>,
    payload: Box<serde_json::value::RawValue>,
}

/// The `schema_version` of an envelope written before it had one.
fn first_version() -> u16 {
    1
}

/// The typed half of the wire envelope, for [`Event`]'s adjacent tagging.
#[derive(Serialize)]
struct Tagged<'a> {
    event_type: &'a str,
    payload: &'a serde_json::value::RawValue,
}

impl Envelope {
    /// The envelope as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let wire = WireOut {
            event_id: self.event_id,
            schema_version: self.schema_version,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            aggregate_id: &self.aggregate_id,
            occurred_at: self.occurred_at,
            event: &self.event,
        };
        // A struct of strings, numbers and uuids always serializes.
        serde_json::to_vec(&wire).unwrap_or_default()
    }
}

/// Why a message is not an acceptable event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes are not an envelope.
    #[error("malformed envelope: {0}")]
    Envelope(serde_json::Error),
    /// `event_type` is not on the allowlist.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// The payload does not match its type.
    #[error("malformed {event_type} payload: {source}")]
    Payload {
        /// The declared type.
        event_type: String,
        /// What was wrong.
        source: serde_json::Error,
    },
}

/// Decodes an envelope, deserializing the payload only for allowlisted types.
///
/// # Errors
///
/// [`DecodeError`] for malformed JSON, an unknown event type or a payload that does not match
/// its type (a field missing or of the wrong type; fields it does not know are ignored).
pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    let wire: WireIn = serde_json::from_slice(bytes).map_err(DecodeError::Envelope)?;
    if !Event::VARIANTS.contains(&wire.event_type.as_str()) {
        return Err(DecodeError::UnknownType(wire.event_type));
    }
    let tagged = Tagged {
        event_type: &wire.event_type,
        payload: &wire.payload,
    };
    let event = serde_json::to_string(&tagged)
        .and_then(|json| serde_json::from_str(&json))
        .map_err(|source| DecodeError::Payload {
            event_type: wire.event_type.clone(),
            source,
        })?;
    Ok(Envelope {
        event_id: wire.event_id,
        schema_version: wire.schema_version,
        correlation_id: wire.correlation_id.unwrap_or(wire.event_id),
        causation_id: wire.causation_id,
        aggregate_id: wire.aggregate_id,
        occurred_at: wire.occurred_at,
        event,
    })
}
