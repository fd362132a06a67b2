//! Envelope ↔ stream-entry field map.
//!
//! An entry carries every envelope field under a stable name (see [`FIELDS`]); the payload and
//! the metadata are JSON. The entry id is the event's [`LogPosition`] (`<transaction>-<position>`),
//! and the `position` field repeats it so that an entry copied elsewhere (dead-letter or requeue
//! stream, with a new id) still says where it came from.

use std::collections::HashMap;
use std::hash::BuildHasher;

use chrono::{DateTime, SecondsFormat, Utc};
use eventsource_core::{
    EventId, LogPosition, Metadata, RecordedEvent, StreamId, TenantId, Version,
};
use redis::Value;
use uuid::Uuid;

use crate::error::CodecError;

/// Field names, in the order [`encode`] writes the values.
pub const FIELDS: [&str; 11] = [
    "event_id",
    "tenant",
    "aggregate_type",
    "aggregate_id",
    "version",
    "position",
    "event_type",
    "schema_version",
    "recorded_at",
    "metadata",
    "payload",
];

/// The entry id of the event at `position`: `<transaction>-<position>`.
#[must_use]
pub fn entry_id(position: LogPosition) -> String {
    position.to_string()
}

/// Parses an entry id (or a `position` field) back into a log position.
#[must_use]
pub fn parse_position(id: &str) -> Option<LogPosition> {
    let (tx, pos) = id.split_once('-')?;
    Some(LogPosition::new(tx.parse().ok()?, pos.parse().ok()?))
}

/// The field values of `event`, in the order of [`FIELDS`].
#[must_use]
pub fn encode(event: &RecordedEvent) -> [String; 11] {
    let metadata = if event.metadata == Metadata::default() {
        String::new()
    } else {
        // Serializing a struct of options, strings and a JSON map cannot fail.
        serde_json::to_string(&event.metadata).unwrap_or_default()
    };
    [
        event.event_id.to_string(),
        event.tenant().as_str().to_owned(),
        event.stream.aggregate_type().to_owned(),
        event.stream.aggregate_id().to_owned(),
        event.version.to_string(),
        event.position.to_string(),
        event.event_type.clone(),
        event.schema_version.to_string(),
        event
            .recorded_at
            .to_rfc3339_opts(SecondsFormat::AutoSi, true),
        metadata,
        event.payload.to_string(),
    ]
}

/// `(field, value)` pairs of `event`, for `XADD`.
#[must_use]
pub fn encode_pairs(event: &RecordedEvent) -> Vec<(&'static str, String)> {
    FIELDS.into_iter().zip(encode(event)).collect()
}

/// Rebuilds an event from an entry's fields: the relay's envelope, or an entry a
/// [`RedisBus`](crate::RedisBus) published (one JSON field; see its docs).
///
/// # Errors
///
/// [`CodecError`] names the first missing or invalid field.
pub fn decode<H: BuildHasher>(
    fields: &HashMap<String, Value, H>,
) -> Result<RecordedEvent, CodecError> {
    if crate::bus::entry::is_bus_entry(fields) {
        return crate::bus::entry::decode(fields);
    }
    let event_id = parse(fields, "event_id", |s| {
        Uuid::parse_str(s)
            .map(EventId::from_uuid)
            .map_err(|e| e.to_string())
    })?;
    let tenant = TenantId::new(text(fields, "tenant")?);
    let stream = StreamId::new(
        tenant,
        text(fields, "aggregate_type")?,
        text(fields, "aggregate_id")?,
    );
    let version = parse(fields, "version", |s| {
        s.parse::<u64>()
            .map(Version::new)
            .map_err(|e| e.to_string())
    })?;
    let position = parse(fields, "position", |s| {
        parse_position(s).ok_or_else(|| "expected <transaction>-<position>".to_owned())
    })?;
    let event_type = text(fields, "event_type")?.to_owned();
    let schema_version = parse(fields, "schema_version", |s| {
        s.parse::<u32>().map_err(|e| e.to_string())
    })?;
    let recorded_at = parse(fields, "recorded_at", |s| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| e.to_string())
    })?;
    let metadata = match fields.get("metadata") {
        None => Metadata::default(),
        Some(_) => parse(fields, "metadata", |s| {
            if s.is_empty() {
                Ok(Metadata::default())
            } else {
                serde_json::from_str(s).map_err(|e| e.to_string())
            }
        })?,
    };
    let payload = parse(fields, "payload", |s| {
        serde_json::from_str(s).map_err(|e| e.to_string())
    })?;
    Ok(RecordedEvent {
        event_id,
        stream,
        version,
        position,
        event_type,
        schema_version,
        recorded_at,
        metadata,
        payload,
    })
}

/// The field as UTF-8 text.
pub(crate) fn text<'a, H: BuildHasher>(
    fields: &'a HashMap<String, Value, H>,
    field: &'static str,
) -> Result<&'a str, CodecError> {
    match fields.get(field) {
        None => Err(CodecError::Missing(field)),
        Some(Value::BulkString(bytes)) => {
            std::str::from_utf8(bytes).map_err(|e| CodecError::Invalid {
                field,
                reason: e.to_string(),
            })
        }
        Some(Value::SimpleString(s)) => Ok(s),
        Some(other) => Err(CodecError::Invalid {
            field,
            reason: format!("unexpected reply {other:?}"),
        }),
    }
}

fn parse<T, H: BuildHasher>(
    fields: &HashMap<String, Value, H>,
    field: &'static str,
    f: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, CodecError> {
    f(text(fields, field)?).map_err(|reason| CodecError::Invalid { field, reason })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn to_fields(values: [String; 11]) -> HashMap<String, Value> {
        FIELDS
            .into_iter()
            .zip(values)
            .map(|(k, v)| (k.to_owned(), Value::BulkString(v.into_bytes())))
            .collect()
    }

    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            ".*".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(".*", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    prop_compose! {
        fn event()(
            tenant in ".*", aggregate_type in ".*", aggregate_id in ".*",
            version in any::<u64>(), tx in any::<u64>(), pos in any::<u64>(),
            event_type in ".*", schema_version in any::<u32>(),
            nanos in 0i64..4_000_000_000_000_000_000,
            actor in proptest::option::of(".*"), correlation in any::<Option<u128>>(),
            extra in proptest::option::of(json()),
            payload in json(),
        ) -> RecordedEvent {
            let mut metadata = Metadata::new();
            if let Some(actor) = actor { metadata = metadata.with_actor(actor); }
            if let Some(c) = correlation { metadata = metadata.with_correlation_id(Uuid::from_u128(c)); }
            if let Some(extra) = extra { metadata = metadata.with_extra("x", extra); }
            RecordedEvent {
                event_id: EventId::new(),
                stream: StreamId::new(TenantId::new(tenant), aggregate_type, aggregate_id),
                version: Version::new(version),
                position: LogPosition::new(tx, pos),
                event_type,
                schema_version,
                recorded_at: DateTime::from_timestamp_nanos(nanos),
                metadata,
                payload,
            }
        }
    }

    proptest! {
        #[test]
        fn round_trips(event in event()) {
            let back = decode(&to_fields(encode(&event))).unwrap();
            prop_assert_eq!(back, event);
        }
    }

    #[test]
    fn missing_and_invalid_fields_are_named() {
        let event = RecordedEvent {
            event_id: EventId::new(),
            stream: StreamId::new(TenantId::new("t"), "a", "1"),
            version: Version::new(1),
            position: LogPosition::new(1, 1),
            event_type: "E".into(),
            schema_version: 1,
            recorded_at: Utc::now(),
            metadata: Metadata::new(),
            payload: serde_json::json!({}),
        };
        let mut fields = to_fields(encode(&event));
        fields.remove("tenant");
        assert_eq!(decode(&fields), Err(CodecError::Missing("tenant")));
        let mut fields = to_fields(encode(&event));
        fields.insert("payload".into(), Value::BulkString(b"{nope".to_vec()));
        assert!(matches!(
            decode(&fields),
            Err(CodecError::Invalid {
                field: "payload",
                ..
            })
        ));
        assert_eq!(
            decode(&HashMap::new()),
            Err(CodecError::Missing("event_id"))
        );
    }
}
