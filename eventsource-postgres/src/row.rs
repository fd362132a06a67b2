//! Rows as the database returns them, and their conversion into core types.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use eventsource_core::{
    EventId, LogPosition, Metadata, RecordedEvent, StoreError, StreamEvent, StreamId,
    StreamPayload, TenantId, Version,
};
use sqlx::postgres::{PgRow, PgTypeInfo, PgValueFormat, PgValueRef, Postgres};
use sqlx::types::Json;
use sqlx::{FromRow, Row as _};
use uuid::Uuid;

use crate::xid::Xid8;

/// One row of the `events` table, its columns in the order of `sql::event_columns!`.
#[derive(Debug)]
pub(crate) struct EventRow {
    event_id: Uuid,
    tenant_id: String,
    aggregate_type: String,
    aggregate_id: String,
    version: i64,
    transaction_id: Xid8,
    global_position: i64,
    event_type: String,
    schema_version: i32,
    recorded_at: DateTime<Utc>,
    // Decoded straight from the JSONB bytes, without an intermediate `Value`.
    metadata: Json<Metadata>,
    payload: serde_json::Value,
}

// Rows are read by column position, not by name (a name is a lookup per column and row, on the
// path of every stream read and log page). The statements list their columns through the `sql`
// macros these impls follow.
impl<'r> FromRow<'r, PgRow> for EventRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            event_id: row.try_get(0)?,
            tenant_id: row.try_get(1)?,
            aggregate_type: row.try_get(2)?,
            aggregate_id: row.try_get(3)?,
            version: row.try_get(4)?,
            transaction_id: row.try_get(5)?,
            global_position: row.try_get(6)?,
            event_type: row.try_get(7)?,
            schema_version: row.try_get(8)?,
            recorded_at: row.try_get(9)?,
            metadata: row.try_get(10)?,
            payload: row.try_get(11)?,
        })
    }
}

impl<'r> FromRow<'r, PgRow> for StreamEventRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            event_id: row.try_get(0)?,
            version: row.try_get(1)?,
            transaction_id: row.try_get(2)?,
            global_position: row.try_get(3)?,
            event_type: row.try_get(4)?,
            schema_version: row.try_get(5)?,
            recorded_at: row.try_get(6)?,
            metadata: row.try_get(7)?,
            payload: row.try_get(8)?,
        })
    }
}

impl TryFrom<EventRow> for RecordedEvent {
    type Error = StoreError;

    fn try_from(row: EventRow) -> Result<Self, StoreError> {
        Ok(RecordedEvent {
            event_id: EventId::from_uuid(row.event_id),
            stream: StreamId::new(
                TenantId::new(row.tenant_id),
                row.aggregate_type,
                row.aggregate_id,
            ),
            version: version_from_db(row.version)?,
            position: log_position(row.transaction_id, row.global_position)?,
            event_type: row.event_type,
            schema_version: u32::try_from(row.schema_version).map_err(|_| {
                StoreError::Corrupt(format!("negative schema version at event {}", row.event_id))
            })?,
            recorded_at: row.recorded_at,
            metadata: row.metadata.0,
            payload: row.payload,
        })
    }
}

/// An event row read from a known stream: the stream columns are not fetched again. Its
/// columns in the order of `sql::stream_event_columns!`.
#[derive(Debug)]
pub(crate) struct StreamEventRow {
    event_id: Uuid,
    version: i64,
    transaction_id: Xid8,
    global_position: i64,
    event_type: String,
    schema_version: i32,
    recorded_at: DateTime<Utc>,
    metadata: Json<Metadata>,
    payload: serde_json::Value,
}

impl StreamEventRow {
    /// The event, in `stream`.
    pub(crate) fn into_event(self, stream: &StreamId) -> Result<RecordedEvent, StoreError> {
        Ok(RecordedEvent {
            event_id: EventId::from_uuid(self.event_id),
            stream: stream.clone(),
            version: version_from_db(self.version)?,
            position: log_position(self.transaction_id, self.global_position)?,
            event_type: self.event_type,
            schema_version: u32::try_from(self.schema_version).map_err(|_| {
                StoreError::Corrupt(format!(
                    "negative schema version at event {}",
                    self.event_id
                ))
            })?,
            recorded_at: self.recorded_at,
            metadata: self.metadata.0,
            payload: self.payload,
        })
    }
}

/// An event as an aggregate load reads it (`sql::READ_STREAM_EVENTS`), by column position.
/// `last_type` is the type name of the row before: an event of the same type shares it
/// instead of allocating its own.
pub(crate) fn load_row(
    row: &PgRow,
    last_type: &mut Option<Arc<str>>,
) -> Result<StreamEvent, sqlx::Error> {
    let corrupt = |e: StoreError| sqlx::Error::Decode(Box::new(e));
    let event_id: Uuid = row.try_get(0)?;
    let schema_version: i32 = row.try_get(3)?;
    let name: &str = row.try_get(2)?;
    let event_type = match last_type {
        Some(last) if **last == *name => last.clone(),
        _ => last_type.insert(Arc::from(name)).clone(),
    };
    Ok(StreamEvent::new(
        EventId::from_uuid(event_id),
        version_from_db(row.try_get(1)?).map_err(corrupt)?,
        event_type,
        u32::try_from(schema_version).map_err(|_| {
            corrupt(StoreError::Corrupt(format!(
                "negative schema version at event {event_id}"
            )))
        })?,
        StreamPayload::Text(row.try_get::<JsonText, _>(4)?.0),
    ))
}

/// A `jsonb` column as its JSON text, unparsed (the core decodes it when it applies the event).
struct JsonText(Box<str>);

impl sqlx::Type<Postgres> for JsonText {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_name("jsonb")
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for JsonText {
    fn decode(value: PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let binary = value.format() == PgValueFormat::Binary;
        let mut bytes = value.as_bytes()?;
        if binary {
            // Binary `jsonb` is a format version (1) and the text.
            match bytes.split_first() {
                Some((1, text)) => bytes = text,
                _ => return Err("unsupported jsonb format version".into()),
            }
        }
        Ok(Self(std::str::from_utf8(bytes)?.into()))
    }
}

/// Where one event id is stored.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct StoredIdRow {
    pub(crate) event_id: Uuid,
    pub(crate) tenant_id: String,
    pub(crate) aggregate_type: String,
    pub(crate) aggregate_id: String,
    pub(crate) version: i64,
    pub(crate) transaction_id: String,
    pub(crate) global_position: i64,
}

impl StoredIdRow {
    pub(crate) fn is_in(&self, stream: &StreamId) -> bool {
        self.tenant_id == stream.tenant().as_str()
            && self.aggregate_type == stream.aggregate_type()
            && self.aggregate_id == stream.aggregate_id()
    }
}

/// What the append statement returns: all `NULL` but nothing else when nothing was written.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct AppendRow {
    pub(crate) version: Option<i64>,
    pub(crate) transaction_id: Option<String>,
    pub(crate) first_position: Option<i64>,
    pub(crate) last_position: Option<i64>,
}

/// One event written by a one-tenant group (`sql::APPEND_MANY_ONE_TENANT`), read by position.
#[derive(Debug)]
pub(crate) struct GroupEventRow {
    pub(crate) event_id: Uuid,
    pub(crate) version: i64,
    pub(crate) global_position: i64,
    pub(crate) transaction_id: String,
}

impl<'r> FromRow<'r, PgRow> for GroupEventRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            event_id: row.try_get(0)?,
            version: row.try_get(1)?,
            global_position: row.try_get(2)?,
            transaction_id: row.try_get(3)?,
        })
    }
}

/// One row of the `snapshots` table.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SnapshotRow {
    pub(crate) version: i64,
    pub(crate) state: serde_json::Value,
    pub(crate) taken_at: DateTime<Utc>,
}

/// One row of the `checkpoints` table.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct CheckpointRow {
    pub(crate) transaction_id: String,
    pub(crate) global_position: i64,
}

impl TryFrom<CheckpointRow> for LogPosition {
    type Error = StoreError;

    fn try_from(row: CheckpointRow) -> Result<Self, StoreError> {
        position_from_db(&row.transaction_id, row.global_position)
    }
}

/// Parses the text form of an `xid8`.
pub(crate) fn xid_from_db(text: &str) -> Result<u64, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("transaction id {text:?} is not a number")))
}

/// Builds a log position from the two stored columns.
pub(crate) fn log_position(transaction: Xid8, position: i64) -> Result<LogPosition, StoreError> {
    let position = u64::try_from(position)
        .map_err(|_| StoreError::Corrupt(format!("negative log position {position}")))?;
    Ok(LogPosition::new(transaction.0, position))
}

/// Builds a log position from the text form of the transaction id and the position.
pub(crate) fn position_from_db(
    transaction: &str,
    position: i64,
) -> Result<LogPosition, StoreError> {
    let position = u64::try_from(position)
        .map_err(|_| StoreError::Corrupt(format!("negative log position {position}")))?;
    Ok(LogPosition::new(xid_from_db(transaction)?, position))
}

/// A stored version.
pub(crate) fn version_from_db(version: i64) -> Result<Version, StoreError> {
    u64::try_from(version)
        .map(Version::new)
        .map_err(|_| StoreError::Corrupt(format!("negative stream version {version}")))
}

/// A version as a `bigint`; versions beyond `i64::MAX` cannot exist, so they clamp.
pub(crate) fn version_to_db(version: Version) -> i64 {
    i64::try_from(version.get()).unwrap_or(i64::MAX)
}

/// A log position's two parts as bind values; positions beyond `i64::MAX` clamp.
pub(crate) fn position_to_db(position: LogPosition) -> (String, i64) {
    (
        position.transaction().to_string(),
        i64::try_from(position.position()).unwrap_or(i64::MAX),
    )
}

/// A saga instance as the saga loads read it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SagaRow {
    pub(crate) state: serde_json::Value,
    pub(crate) state_version: i32,
    pub(crate) version: i64,
    pub(crate) last_transaction_id: String,
    pub(crate) last_position: i64,
    pub(crate) deadline_at: Option<chrono::DateTime<chrono::Utc>>,
    pub(crate) handled: bool,
}

impl SagaRow {
    /// The stored state and whether the event asked about is handled.
    pub(crate) fn into_state(self) -> Result<(eventsource_core::SagaState, bool), StoreError> {
        let schema_version = u32::try_from(self.state_version).map_err(|_| {
            StoreError::Corrupt(format!(
                "negative saga state version {}",
                self.state_version
            ))
        })?;
        let version = u64::try_from(self.version)
            .map_err(|_| StoreError::Corrupt(format!("negative saga version {}", self.version)))?;
        let state = eventsource_core::SagaState::new(
            self.state,
            schema_version,
            version,
            position_from_db(&self.last_transaction_id, self.last_position)?,
        )
        .with_deadline(self.deadline_at);
        Ok((state, self.handled))
    }
}

/// A due deadline as the deadline queries list it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DeadlineRow {
    pub(crate) tenant_id: String,
    pub(crate) saga: String,
    pub(crate) instance: String,
    pub(crate) deadline_at: chrono::DateTime<chrono::Utc>,
}

impl From<DeadlineRow> for eventsource_core::DueDeadline {
    fn from(row: DeadlineRow) -> Self {
        eventsource_core::DueDeadline::new(
            eventsource_core::SagaKey::new(
                eventsource_core::TenantId::new(row.tenant_id),
                row.saga,
                row.instance,
            ),
            row.deadline_at,
        )
    }
}
