//! Identifiers, positions and the envelope that carries every stored event.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::{DecodeError, DomainEvent};

/// The tenant an event belongs to.
///
/// Every stream, every key and every query is scoped by a tenant. Single-tenant applications use
/// [`TenantId::default()`], whose value is `"default"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    /// The tenant used when an application does not name one.
    pub const DEFAULT: &'static str = "default";

    /// Creates a tenant id.
    ///
    /// ```
    /// # use eventsource_core::TenantId;
    /// assert_eq!(TenantId::new("acme").as_str(), "acme");
    /// ```
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TenantId {
    fn default() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for TenantId {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for TenantId {
    fn from(value: String) -> Self {
        Self(value)
    }
}

/// Identifies one stream: a tenant, an aggregate type and an aggregate id.
///
/// ```
/// # use eventsource_core::{StreamId, TenantId};
/// let stream = StreamId::new(TenantId::new("acme"), "account", "acc-1");
/// assert_eq!(stream.to_string(), "acme/account/acc-1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamId {
    tenant: TenantId,
    aggregate_type: String,
    aggregate_id: String,
}

impl StreamId {
    /// Creates a stream id.
    pub fn new(
        tenant: TenantId,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
    ) -> Self {
        Self {
            tenant,
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
        }
    }

    /// The tenant that owns the stream.
    #[must_use]
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The aggregate type, as fixed by [`Aggregate::TYPE`](crate::Aggregate::TYPE).
    #[must_use]
    pub fn aggregate_type(&self) -> &str {
        &self.aggregate_type
    }

    /// The aggregate id within its type and tenant.
    #[must_use]
    pub fn aggregate_id(&self) -> &str {
        &self.aggregate_id
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.tenant, self.aggregate_type, self.aggregate_id
        )
    }
}

/// The version of a stream: the number of events in it, and the version of its newest event.
///
/// The first event of a stream has version 1; a stream that holds no events is at
/// [`Version::ZERO`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Version(u64);

impl Version {
    /// The version of a stream without events.
    pub const ZERO: Version = Version(0);

    /// Wraps a raw version number.
    #[must_use]
    pub const fn new(version: u64) -> Self {
        Self(version)
    }

    /// The raw version number.
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The version after this one.
    ///
    /// # Panics
    ///
    /// Panics if the version is `u64::MAX`, which no stream can reach.
    #[must_use]
    pub const fn next(self) -> Self {
        match self.0.checked_add(1) {
            Some(v) => Self(v),
            None => panic!("stream version overflow"),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A place in the global log: the committing transaction and the event's position.
///
/// Positions are ordered by transaction first, then position, which is the order in which a
/// reader sees events; see DESIGN §4.1. A position alone is never a checkpoint. [`LogPosition::START`]
/// lies before every event.
///
/// ```
/// # use eventsource_core::LogPosition;
/// let a = LogPosition::new(7, 12);
/// let b = LogPosition::new(8, 3);
/// assert!(LogPosition::START < a && a < b);
/// assert_eq!(b.to_string(), "8-3");
/// ```
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct LogPosition {
    transaction: u64,
    position: u64,
}

impl LogPosition {
    /// Before the first event of the log.
    pub const START: LogPosition = LogPosition {
        transaction: 0,
        position: 0,
    };

    /// Builds a position from its two parts.
    #[must_use]
    pub const fn new(transaction: u64, position: u64) -> Self {
        Self {
            transaction,
            position,
        }
    }

    /// The id of the transaction that committed the event.
    #[must_use]
    pub const fn transaction(self) -> u64 {
        self.transaction
    }

    /// The event's position, unique across the log.
    #[must_use]
    pub const fn position(self) -> u64 {
        self.position
    }
}

impl fmt::Display for LogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.transaction, self.position)
    }
}

/// A globally unique event id (a UUIDv7 unless the caller chose a deterministic one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    /// A new time-ordered id (UUIDv7).
    #[must_use]
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wraps an existing UUID, for example one derived deterministically for an idempotent retry.
    #[must_use]
    pub const fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    /// The UUID inside.
    #[must_use]
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Typed metadata carried by every event, plus free-form `extra` fields.
///
/// Correlation and causation ids tie events to the request and to the event or command that
/// caused them: a saga reacting to event `e` issues commands whose events carry `e`'s correlation
/// id and `causation_id = e.event_id`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Metadata {
    /// Groups every event caused by one original request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The event or command that directly caused this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// The user or service on whose behalf the command ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The component that produced the event (`"api"`, `"worker"`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// W3C `traceparent` of the command that produced the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_context: Option<String>,
    /// Application-defined fields.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Metadata {
    /// Empty metadata.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the correlation id.
    #[must_use]
    pub fn with_correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Sets the causation id.
    #[must_use]
    pub fn with_causation_id(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }

    /// Sets the actor.
    #[must_use]
    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Sets the source.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Sets the trace context.
    #[must_use]
    pub fn with_trace_context(mut self, traceparent: impl Into<String>) -> Self {
        self.trace_context = Some(traceparent.into());
        self
    }

    /// Adds an application-defined field.
    #[must_use]
    pub fn with_extra(mut self, key: impl Into<String>, value: serde_json::Value) -> Self {
        self.extra.insert(key.into(), value);
        self
    }
}

/// An event ready to be appended: serialized, with its id and metadata, not yet positioned.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct NewEvent {
    /// The id; re-appending the same ids is an idempotent no-op.
    pub event_id: EventId,
    /// Stable type name, as fixed by [`DomainEvent::event_type`].
    pub event_type: String,
    /// Schema version of `payload`.
    pub schema_version: u32,
    /// The event's fields as JSON.
    pub payload: serde_json::Value,
    /// Correlation, causation and the rest.
    pub metadata: Metadata,
}

impl NewEvent {
    /// Builds an event from its parts; the id is a fresh UUIDv7.
    pub fn new(
        event_type: impl Into<String>,
        schema_version: u32,
        payload: serde_json::Value,
    ) -> Self {
        Self {
            event_id: EventId::new(),
            event_type: event_type.into(),
            schema_version,
            payload,
            metadata: Metadata::default(),
        }
    }

    /// Serializes a domain event.
    ///
    /// # Errors
    ///
    /// Fails when the event's `Serialize` implementation fails.
    ///
    /// ```
    /// # use eventsource_core::{DomainEvent, NewEvent};
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
    /// enum Light {
    ///     SwitchedOn { lumens: u32 },
    /// }
    /// let event = NewEvent::from_event(&Light::SwitchedOn { lumens: 800 })?;
    /// assert_eq!(event.event_type, "SwitchedOn");
    /// assert_eq!(event.payload, serde_json::json!({ "lumens": 800 }));
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn from_event<E: DomainEvent>(event: &E) -> Result<Self, serde_json::Error> {
        Ok(Self::new(
            event.event_type(),
            event.schema_version(),
            event.encode()?,
        ))
    }

    /// Replaces the id.
    #[must_use]
    pub fn with_event_id(mut self, id: EventId) -> Self {
        self.event_id = id;
        self
    }

    /// Replaces the metadata.
    #[must_use]
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }
}

/// A stored event with every envelope field, carrying a payload of type `P`.
///
/// The store hands out [`RecordedEvent`]s (JSON payloads); [`Envelope::decode`] turns one into a
/// typed `Envelope<E>`. The struct has public fields and is not `#[non_exhaustive]` because every
/// backend crate builds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<P = serde_json::Value> {
    /// The event's id.
    pub event_id: EventId,
    /// Tenant, aggregate type and aggregate id.
    pub stream: StreamId,
    /// Version of this event within its stream (1 for the first).
    pub version: Version,
    /// Place in the global log.
    pub position: LogPosition,
    /// Stable event type name.
    pub event_type: String,
    /// Schema version the payload was written with (after decoding: the current one).
    pub schema_version: u32,
    /// When the store recorded the event.
    pub recorded_at: DateTime<Utc>,
    /// Correlation, causation, actor, source and the rest.
    pub metadata: Metadata,
    /// The event itself.
    pub payload: P,
}

/// A stored event with its JSON payload, as every [`EventStore`](crate::EventStore) returns it.
pub type RecordedEvent = Envelope<serde_json::Value>;

impl<P> Envelope<P> {
    /// The tenant that owns the event.
    #[must_use]
    pub fn tenant(&self) -> &TenantId {
        self.stream.tenant()
    }

    /// Replaces the payload, keeping every envelope field.
    pub fn map<Q>(self, f: impl FnOnce(P) -> Q) -> Envelope<Q> {
        Envelope {
            event_id: self.event_id,
            stream: self.stream,
            version: self.version,
            position: self.position,
            event_type: self.event_type,
            schema_version: self.schema_version,
            recorded_at: self.recorded_at,
            metadata: self.metadata,
            payload: f(self.payload),
        }
    }
}

impl RecordedEvent {
    /// Decodes the payload into a domain event, upcasting older schema versions.
    ///
    /// # Errors
    ///
    /// An unknown event type, a schema version without an upcaster or a payload that does not
    /// deserialize yields [`EventDecodeError`] naming the event id, stream, version and type.
    pub fn decode<E: DomainEvent>(&self) -> Result<Envelope<E>, EventDecodeError> {
        self.clone().into_decoded()
    }

    /// As [`decode`](Self::decode), consuming the event instead of copying its payload.
    ///
    /// # Errors
    ///
    /// As [`decode`](Self::decode).
    pub fn into_decoded<E: DomainEvent>(self) -> Result<Envelope<E>, EventDecodeError> {
        let Envelope {
            event_id,
            stream,
            version,
            position,
            event_type,
            schema_version,
            recorded_at,
            metadata,
            payload,
        } = self;
        match E::decode(&event_type, schema_version, payload) {
            Ok(event) => Ok(Envelope {
                event_id,
                stream,
                version,
                position,
                event_type,
                schema_version: event.schema_version(),
                recorded_at,
                metadata,
                payload: event,
            }),
            Err(source) => Err(EventDecodeError(Box::new(DecodeFailure {
                event_id,
                stream,
                version,
                event_type,
                source,
            }))),
        }
    }
}
/// A stored event could not be turned into a domain event.
///
/// Nothing is lost: the stored event is untouched, and the error names it so it can be found,
/// fixed by an upcaster, and replayed.
#[derive(Debug)]
pub struct EventDecodeError(Box<DecodeFailure>);

#[derive(Debug)]
struct DecodeFailure {
    event_id: EventId,
    stream: StreamId,
    version: Version,
    event_type: String,
    source: DecodeError,
}

impl EventDecodeError {
    /// Builds the error for `event`; for backends that decode themselves.
    #[must_use]
    pub fn new(event: &RecordedEvent, source: DecodeError) -> Self {
        Self(Box::new(DecodeFailure {
            event_id: event.event_id,
            stream: event.stream.clone(),
            version: event.version,
            event_type: event.event_type.clone(),
            source,
        }))
    }

    /// Builds the error from the parts an aggregate load reads.
    pub(crate) fn from_parts(
        event_id: EventId,
        stream: &StreamId,
        version: Version,
        event_type: String,
        source: DecodeError,
    ) -> Self {
        Self(Box::new(DecodeFailure {
            event_id,
            stream: stream.clone(),
            version,
            event_type,
            source,
        }))
    }

    /// The event's id.
    #[must_use]
    pub fn event_id(&self) -> EventId {
        self.0.event_id
    }

    /// The event's stream.
    #[must_use]
    pub fn stream(&self) -> &StreamId {
        &self.0.stream
    }

    /// The event's version in its stream.
    #[must_use]
    pub fn version(&self) -> Version {
        self.0.version
    }

    /// The stored type name.
    #[must_use]
    pub fn event_type(&self) -> &str {
        &self.0.event_type
    }

    /// What went wrong.
    #[must_use]
    pub fn reason(&self) -> &DecodeError {
        &self.0.source
    }
}

impl fmt::Display for EventDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.0;
        write!(
            f,
            "event {} ({}) at {} version {} cannot be decoded",
            e.event_id, e.event_type, e.stream, e.version
        )
    }
}

impl std::error::Error for EventDecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0.source)
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_by_transaction_then_position() {
        let mut v = vec![
            LogPosition::new(2, 1),
            LogPosition::new(1, 9),
            LogPosition::new(2, 0),
            LogPosition::START,
        ];
        v.sort();
        assert_eq!(
            v,
            vec![
                LogPosition::START,
                LogPosition::new(1, 9),
                LogPosition::new(2, 0),
                LogPosition::new(2, 1)
            ]
        );
    }

    #[test]
    fn metadata_round_trips_and_omits_empty_fields() {
        let m = Metadata::new()
            .with_actor("alice")
            .with_extra("ip", serde_json::json!("127.0.0.1"));
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"actor": "alice", "extra": {"ip": "127.0.0.1"}})
        );
        let back: Metadata = serde_json::from_value(json).unwrap();
        assert_eq!(back, m);
    }
}
