//! A bus event as a stream entry (through the relay's [`codec`](crate::codec)) and as a
//! Pub/Sub message (JSON).
//!
//! The durable path reuses [`ConsumerRunner`](crate::ConsumerRunner), which reads entries in
//! the relay's format, so a bus event travels as an envelope: its topic is the event type, the
//! aggregate type is [`AGGREGATE_TYPE`] and the aggregate id the topic (so one topic's events
//! are handled in order), its priority a metadata field the decoder removes again. An entry
//! without that field is an event the relay copied from the store ([`store_topic`]).

use eventsource_core::bus::{BusEvent, Priority};
use eventsource_core::{LogPosition, RecordedEvent, StreamId, TenantId, Version};

/// The aggregate type of bus events in stream entries.
pub(crate) const AGGREGATE_TYPE: &str = "bus";
/// The `metadata.extra` key holding the priority inside a stream entry.
const PRIORITY_FIELD: &str = "bus_priority";

/// The envelope under which `event` is written to a stream (taken by value: publishing is hot,
/// and a payload clone is a deep copy).
pub(crate) fn into_recorded(bus: &str, event: BusEvent) -> RecordedEvent {
    let mut metadata = event.metadata;
    metadata.extra.insert(
        PRIORITY_FIELD.to_owned(),
        serde_json::to_value(event.priority).unwrap_or_default(),
    );
    RecordedEvent {
        event_id: event.id,
        stream: StreamId::new(TenantId::new(bus), AGGREGATE_TYPE, event.topic.clone()),
        version: Version::new(1),
        // Bus entries get Redis-assigned ids; the position field is unused.
        position: LogPosition::new(0, 0),
        event_type: event.topic,
        schema_version: 1,
        recorded_at: event.published_at,
        metadata,
        payload: event.payload,
    }
}

/// The bus event an entry carries: a bus event as published, or an event the relay copied from
/// the store (it has no priority field), on topic `<aggregate type>.<event type>`.
pub(crate) fn from_recorded(event: &RecordedEvent) -> BusEvent {
    let mut metadata = event.metadata.clone();
    let (topic, priority) = match metadata.extra.remove(PRIORITY_FIELD) {
        Some(p) => (
            event.event_type.clone(),
            serde_json::from_value::<Priority>(p).unwrap_or_default(),
        ),
        None => (store_topic(event), Priority::Normal),
    };
    BusEvent::new(topic, event.payload.clone())
        .with_id(event.event_id)
        .with_metadata(metadata)
        .with_priority(priority)
        .with_published_at(event.recorded_at)
}

/// The topic of a stored event: `<aggregate type>.<event type>`, each part with characters a
/// topic segment cannot hold replaced by `_` (`bank-account.FundsDeposited`).
pub(crate) fn store_topic(event: &RecordedEvent) -> String {
    let segment = |raw: &str| -> String {
        let cleaned: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if cleaned.is_empty() {
            "_".to_owned()
        } else {
            cleaned
        }
    };
    format!(
        "{}.{}",
        segment(event.stream.aggregate_type()),
        segment(&event.event_type)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventsource_core::Metadata;

    #[test]
    fn an_event_survives_the_stream_codec() {
        let event = BusEvent::new("a.b", serde_json::json!({ "x": [1, 2] }))
            .with_priority(Priority::Critical)
            .with_metadata(Metadata::new().with_correlation_id(uuid::Uuid::now_v7()));
        let fields: std::collections::HashMap<String, redis::Value> =
            crate::codec::encode_pairs(&into_recorded("main", event.clone()))
                .into_iter()
                .map(|(k, v)| (k.to_owned(), redis::Value::BulkString(v.into_bytes())))
                .collect();
        let back = from_recorded(&crate::codec::decode(&fields).unwrap());
        assert_eq!(back, event);
    }

    #[test]
    fn stored_events_are_on_their_aggregate_and_event_type_topic() {
        let mut stored = into_recorded("main", BusEvent::new("x", serde_json::json!(1)));
        stored.metadata.extra.clear();
        stored.stream = StreamId::new(TenantId::new("t"), "bank account", "1");
        stored.event_type = "funds.deposited".to_owned();
        let event = from_recorded(&stored);
        assert_eq!(event.topic, "bank_account.funds_deposited");
        assert!(eventsource_core::bus::validate_topic(&event.topic).is_ok());
    }
}
