//! The message a bus carries.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::envelope::{EventId, Metadata};

/// How urgently an event should be handled (ADR-004's priorities).
///
/// Orders from most to least urgent: `Critical > High > Normal > Low`. An adapter that queues
/// events for a subscriber hands it the most urgent queued event first.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Logging and metrics.
    Low,
    /// Standard events (the default).
    #[default]
    Normal,
    /// Important business events.
    High,
    /// System-critical events.
    Critical,
}

/// One event on the bus: a topic, a JSON payload and the envelope's metadata.
///
/// ```
/// # use eventsource_core::bus::{BusEvent, Priority};
/// let event = BusEvent::new("analysis.completed", serde_json::json!({ "id": 7 }))
///     .with_priority(Priority::High);
/// assert_eq!(event.topic, "analysis.completed");
/// assert!(event.priority > Priority::Normal);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BusEvent {
    /// Unique id (UUIDv7 unless set); subscribers deduplicate on it.
    pub id: EventId,
    /// Dot-separated topic the event is published on (see [`Pattern`](super::Pattern)).
    pub topic: String,
    /// The event itself.
    pub payload: serde_json::Value,
    /// Correlation, causation, actor, source and free-form fields.
    #[serde(default)]
    pub metadata: Metadata,
    /// How urgently it should be handled.
    #[serde(default)]
    pub priority: Priority,
    /// When it was created.
    pub published_at: DateTime<Utc>,
}

impl BusEvent {
    /// An event on `topic` with a fresh id, normal priority and empty metadata.
    ///
    /// The topic is checked when the event is published.
    #[must_use]
    pub fn new(topic: impl Into<String>, payload: serde_json::Value) -> Self {
        Self {
            id: EventId::new(),
            topic: topic.into(),
            payload,
            metadata: Metadata::default(),
            priority: Priority::Normal,
            published_at: Utc::now(),
        }
    }

    /// Sets the id (a deterministic one makes a re-publication recognisable).
    #[must_use]
    pub fn with_id(mut self, id: EventId) -> Self {
        self.id = id;
        self
    }

    /// Sets the metadata.
    #[must_use]
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets the creation time (adapters restoring an event read back from a backend).
    #[must_use]
    pub fn with_published_at(mut self, at: DateTime<Utc>) -> Self {
        self.published_at = at;
        self
    }

    /// Sets the priority.
    #[must_use]
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// The dead letter of this event after `attempts` failed deliveries with `error`: the same
    /// payload on `topic`, with the original topic, id, error and attempts under
    /// `metadata.extra["dead_letter"]`, caused by the original event.
    #[must_use]
    pub fn dead_letter(&self, topic: &str, error: &str, attempts: u32) -> Self {
        let mut metadata = self.metadata.clone();
        metadata.causation_id = Some(*self.id.as_uuid());
        metadata.extra.insert(
            DEAD_LETTER_FIELD.to_owned(),
            serde_json::json!({
                "topic": self.topic,
                "event_id": self.id,
                "error": error,
                "attempts": attempts,
            }),
        );
        Self::new(topic, self.payload.clone())
            .with_metadata(metadata)
            .with_priority(self.priority)
    }
}

/// The `metadata.extra` key under which [`BusEvent::dead_letter`] records why.
pub const DEAD_LETTER_FIELD: &str = "dead_letter";
