//! What a client receives for each event.

use eventsource_core::RecordedEvent;
use serde::Serialize;

use crate::rooms;

/// One pushed event, as JSON: the SSE `data` field, or a WebSocket text message.
///
/// `id` is the event's log position (`<transaction>-<position>`), also sent as the SSE `id`:
/// the value to send back as `Last-Event-ID` to resume after it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct PushMessage {
    /// The event's log position.
    pub id: String,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The aggregate type of the event's stream.
    pub aggregate_type: String,
    /// The aggregate id of the event's stream.
    pub aggregate_id: String,
    /// The event's version in its stream.
    pub version: u64,
    /// The event's project room, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The event's user room, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// When the store recorded the event (RFC 3339).
    pub recorded_at: String,
    /// The event's payload.
    pub payload: serde_json::Value,
}

impl PushMessage {
    /// The message for `event`.
    #[must_use]
    pub fn new(event: &RecordedEvent) -> Self {
        Self {
            id: event.position.to_string(),
            event_type: event.event_type.clone(),
            aggregate_type: event.stream.aggregate_type().to_owned(),
            aggregate_id: event.stream.aggregate_id().to_owned(),
            version: event.version.get(),
            project: rooms::project_of(event).map(str::to_owned),
            user: rooms::user_of(event).map(str::to_owned),
            recorded_at: event.recorded_at.to_rfc3339(),
            payload: event.payload.clone(),
        }
    }

    /// The message as JSON text.
    #[must_use]
    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and a JSON value always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}
