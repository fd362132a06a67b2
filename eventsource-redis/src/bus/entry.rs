//! A bus event as a stream entry and as a Pub/Sub message.
//!
//! Publishing encodes each event once, as JSON: that text is the Pub/Sub message and, with the
//! bus's name, the whole stream entry (fields [`BUS_FIELD`] and [`EVENT_FIELD`]), so an entry
//! costs `XADD` four arguments and the consumer one JSON parse. The durable path reuses
//! [`ConsumerRunner`](crate::ConsumerRunner), which hands handlers envelopes: [`codec::decode`]
//! recognises such an entry and turns it into one ([`into_recorded`]): its topic is the event
//! type, the aggregate type is [`AGGREGATE_TYPE`] and the aggregate id the topic (so one
//! topic's events are handled in order), its priority a metadata field [`from_recorded`]
//! removes again. Entries written before this format (the relay's envelope carrying that
//! priority field) still decode the same way; an envelope without it is an event the relay
//! copied from the store ([`store_topic`]).
//!
//! The bus's own runners decode lazily instead ([`decode_deferred`]): the runner only needs
//! the topic (for its lanes) before the subscriber's pattern match, so the entry's JSON is
//! parsed once, by the subscriber, straight into the [`BusEvent`] its handler gets
//! ([`to_bus_event`]), not into an envelope that is then copied into a bus event.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasher;

use chrono::{DateTime, Utc};
use eventsource_core::bus::{BusEvent, Priority};
use eventsource_core::{
    EventId, LogPosition, Metadata, RecordedEvent, StreamId, TenantId, Version,
};
use redis::Value;

use crate::codec;
use crate::error::CodecError;

/// The field of a bus entry holding the bus's name.
pub(crate) const BUS_FIELD: &str = "bus";
/// The field of a bus entry holding the event's JSON (the same text as its Pub/Sub message).
pub(crate) const EVENT_FIELD: &str = "bus_event";

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

/// The `XADD` of a bus entry to `stream`, `max_len` capping it (`MAXLEN ~`): the fields are
/// the bus's name and the event's JSON (`message`). Built with its buffers sized up front:
/// publishing builds one per event.
pub(crate) fn xadd(stream: &str, max_len: Option<usize>, bus: &str, message: &[u8]) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(10, stream.len() + bus.len() + message.len() + 64);
    cmd.arg("XADD").arg(stream);
    if let Some(len) = max_len {
        cmd.arg("MAXLEN").arg("~").arg(len);
    }
    cmd.arg("*")
        .arg(BUS_FIELD)
        .arg(bus)
        .arg(EVENT_FIELD)
        .arg(message);
    cmd
}

/// The `PUBLISH` of a bus event's JSON (`message`) on `channel`.
pub(crate) fn publish(channel: &str, message: &[u8]) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(3, channel.len() + message.len() + 16);
    cmd.arg("PUBLISH").arg(channel).arg(message);
    cmd
}

/// Whether `fields` are a bus entry (rather than the relay's envelope).
pub(crate) fn is_bus_entry<H: BuildHasher>(fields: &HashMap<String, Value, H>) -> bool {
    fields.contains_key(EVENT_FIELD)
}

/// The envelope of a bus entry (see [`is_bus_entry`]).
pub(crate) fn decode<H: BuildHasher>(
    fields: &HashMap<String, Value, H>,
) -> Result<RecordedEvent, CodecError> {
    let bus = codec::text(fields, BUS_FIELD)?;
    let event: BusEvent = serde_json::from_str(codec::text(fields, EVENT_FIELD)?).map_err(|e| {
        CodecError::Invalid {
            field: EVENT_FIELD,
            reason: e.to_string(),
        }
    })?;
    Ok(into_recorded(bus, event))
}

/// The prefix of the JSON [`serde_json`] writes for a [`BusEvent`]: its first fields are the
/// id and the topic.
const ID_PREFIX: &str = "{\"id\":\"";
const TOPIC_PREFIX: &str = "\",\"topic\":\"";

/// The id and topic at the front of a bus event's JSON, if it starts the way the bus writes
/// it (`{"id":"<uuid>","topic":"<topic>",…`, the topic without escapes); `None` otherwise.
/// Only the front is looked at: the rest is checked when the subscriber parses the event.
fn head(json: &str) -> Option<(EventId, &str)> {
    let rest = json.strip_prefix(ID_PREFIX)?;
    let (id, rest) = rest.split_at_checked(36)?;
    let id = uuid::Uuid::try_parse(id).ok()?;
    let rest = rest.strip_prefix(TOPIC_PREFIX)?;
    let (topic, _) = rest.split_once('"')?;
    eventsource_core::bus::validate_topic(topic).ok()?;
    Some((EventId::from_uuid(id), topic))
}

/// Like [`codec::decode`], but a bus entry the bus wrote is not parsed: the record carries the
/// topic (as event type and aggregate id, so lanes keep one topic in order), the event id,
/// and the entry's JSON as its payload, marked by version zero, which no stored event has
/// ([`is_deferred`]). The subscriber parses the JSON once, into the [`BusEvent`] its handler
/// gets ([`to_bus_event`]). Relay envelopes and entries in any other shape decode as before.
///
/// # Errors
///
/// [`CodecError`] names the first missing or invalid field.
pub(crate) fn decode_deferred<H: BuildHasher>(
    fields: &HashMap<String, Value, H>,
) -> Result<RecordedEvent, CodecError> {
    if !is_bus_entry(fields) {
        return codec::decode(fields);
    }
    let json = codec::text(fields, EVENT_FIELD)?;
    let Some((event_id, topic)) = head(json) else {
        return decode(fields);
    };
    let bus = codec::text(fields, BUS_FIELD)?;
    Ok(RecordedEvent {
        event_id,
        stream: StreamId::new(TenantId::new(bus), AGGREGATE_TYPE, topic),
        version: Version::ZERO,
        position: LogPosition::new(0, 0),
        event_type: topic.to_owned(),
        schema_version: 1,
        // Not read before the subscriber parses the event (which has its own).
        recorded_at: DateTime::<Utc>::UNIX_EPOCH,
        metadata: Metadata::default(),
        payload: serde_json::Value::String(json.to_owned()),
    })
}

/// Whether `event` is a record of [`decode_deferred`] (its payload the event's JSON).
pub(crate) fn is_deferred(event: &RecordedEvent) -> bool {
    event.version == Version::ZERO
        && event.stream.aggregate_type() == AGGREGATE_TYPE
        && event.payload.is_string()
}

/// The bus event an entry carries, parsed from its JSON for a record of [`decode_deferred`],
/// else as [`from_recorded`].
///
/// # Errors
///
/// The parse error of a deferred record's JSON.
pub(crate) fn to_bus_event(event: &RecordedEvent) -> Result<BusEvent, serde_json::Error> {
    match &event.payload {
        serde_json::Value::String(json) if is_deferred(event) => serde_json::from_str(json),
        _ => Ok(from_recorded(event)),
    }
}

/// The topic of an entry's event (see [`from_recorded`]), without copying the event: the
/// subscriber matches it before paying for the copy.
pub(crate) fn topic(event: &RecordedEvent) -> Cow<'_, str> {
    if is_deferred(event) || event.metadata.extra.contains_key(PRIORITY_FIELD) {
        Cow::Borrowed(&event.event_type)
    } else {
        Cow::Owned(store_topic(event))
    }
}

/// The bus event an entry carries: a bus event as published, or an event the relay copied from
/// the store (it has no priority field), on topic `<aggregate type>.<event type>`.
pub(crate) fn from_recorded(event: &RecordedEvent) -> BusEvent {
    let topic = topic(event).into_owned();
    let mut metadata = event.metadata.clone();
    let priority = metadata
        .extra
        .remove(PRIORITY_FIELD)
        .map(|p| serde_json::from_value::<Priority>(p).unwrap_or_default())
        .unwrap_or_default();
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

    fn to_map<'a>(
        pairs: impl IntoIterator<Item = (&'a str, String)>,
    ) -> std::collections::HashMap<String, redis::Value> {
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), redis::Value::BulkString(v.into_bytes())))
            .collect()
    }

    fn event() -> BusEvent {
        BusEvent::new("a.b", serde_json::json!({ "x": [1, 2] }))
            .with_priority(Priority::Critical)
            .with_metadata(Metadata::new().with_correlation_id(uuid::Uuid::now_v7()))
    }

    #[test]
    fn an_event_survives_its_stream_entry() {
        let event = event();
        let message = serde_json::to_string(&event).unwrap();
        let fields = to_map([(BUS_FIELD, "main".to_owned()), (EVENT_FIELD, message)]);
        let recorded = crate::codec::decode(&fields).unwrap();
        assert_eq!(recorded.tenant().as_str(), "main");
        assert_eq!(recorded.stream.aggregate_id(), "a.b");
        assert_eq!(from_recorded(&recorded), event);
        assert!(!is_deferred(&recorded));
        assert_eq!(to_bus_event(&recorded).unwrap(), event);
    }

    #[test]
    fn the_bus_runner_parses_its_entries_once_in_the_subscriber() {
        let event = event();
        let message = serde_json::to_string(&event).unwrap();
        // The bus's JSON starts with the id and the topic: the deferred decoder reads those.
        assert_eq!(head(&message), Some((event.id, "a.b")));
        let fields = to_map([(BUS_FIELD, "main".to_owned()), (EVENT_FIELD, message)]);
        let deferred = decode_deferred(&fields).unwrap();
        assert!(is_deferred(&deferred));
        let full = crate::codec::decode(&fields).unwrap();
        // Same lane (aggregate stream), topic and id as the full decode.
        assert_eq!(deferred.stream, full.stream);
        assert_eq!(topic(&deferred), "a.b");
        assert_eq!(deferred.event_id, event.id);
        assert_eq!(to_bus_event(&deferred).unwrap(), event);
    }

    #[test]
    fn entries_the_bus_did_not_write_decode_in_full_in_the_bus_runner() {
        let event = event();
        // Fields in another order, as another writer might put them.
        let json = serde_json::json!({
            "topic": "a.b", "id": event.id, "payload": event.payload,
            "metadata": event.metadata, "priority": "critical", "published_at": event.published_at,
        })
        .to_string();
        let fields = to_map([(BUS_FIELD, "main".to_owned()), (EVENT_FIELD, json)]);
        let record = decode_deferred(&fields).unwrap();
        assert!(!is_deferred(&record));
        assert_eq!(to_bus_event(&record).unwrap(), event);
        // The relay's envelope of a stored event: decoded as before.
        let mut stored = into_recorded("main", BusEvent::new("x", serde_json::json!("text")));
        stored.metadata.extra.clear();
        stored.stream = StreamId::new(TenantId::new("t"), "bus", "1");
        let fields = to_map(crate::codec::encode_pairs(&stored));
        let record = decode_deferred(&fields).unwrap();
        assert!(!is_deferred(&record));
        assert_eq!(record, stored);
    }

    #[test]
    fn a_deferred_entry_with_a_bad_tail_fails_its_parse() {
        let message = serde_json::to_string(&event()).unwrap();
        let broken = format!("{}{{", &message[..message.len() - 1]);
        let fields = to_map([(BUS_FIELD, "main".to_owned()), (EVENT_FIELD, broken)]);
        let deferred = decode_deferred(&fields).unwrap();
        assert!(to_bus_event(&deferred).is_err());
    }

    #[test]
    fn entries_in_the_envelope_format_still_decode() {
        // Bus entries written before the one-field format: the relay's envelope.
        let event = event();
        let fields = to_map(crate::codec::encode_pairs(&into_recorded(
            "main",
            event.clone(),
        )));
        let back = from_recorded(&crate::codec::decode(&fields).unwrap());
        assert_eq!(back, event);
    }

    #[test]
    fn a_malformed_bus_entry_names_its_field() {
        let fields = to_map([
            (BUS_FIELD, "main".to_owned()),
            (EVENT_FIELD, "{".to_owned()),
        ]);
        let err = crate::codec::decode(&fields).unwrap_err();
        assert!(
            matches!(
                err,
                CodecError::Invalid {
                    field: EVENT_FIELD,
                    ..
                }
            ),
            "{err}"
        );
        let fields = to_map([(EVENT_FIELD, "{}".to_owned())]);
        assert_eq!(
            crate::codec::decode(&fields).unwrap_err(),
            CodecError::Missing(BUS_FIELD)
        );
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
