//! The event-store contract: optimistic append, stream reads and the global log.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use chrono::{DateTime, Utc};
use futures::Stream;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::envelope::{
    EventDecodeError, EventId, LogPosition, NewEvent, RecordedEvent, StreamId, TenantId, Version,
};
use crate::event::{DecodeError, DomainEvent};
use crate::shard::Shard;

/// What the caller believes about a stream before appending to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version.
    Any,
    /// The stream must hold no events.
    NoStream,
    /// The stream must hold at least one event.
    StreamExists,
    /// The stream's last event must have exactly this version ([`Version::ZERO`] = no events).
    Exact(Version),
}

impl ExpectedVersion {
    /// Whether a stream currently at `actual` satisfies this expectation.
    #[must_use]
    pub fn admits(self, actual: Version) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => actual == Version::ZERO,
            Self::StreamExists => actual > Version::ZERO,
            Self::Exact(v) => actual == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any version"),
            Self::NoStream => f.write_str("no stream"),
            Self::StreamExists => f.write_str("an existing stream"),
            Self::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// The outcome of a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Appended {
    /// The stream's version after the append: the version of its last event.
    pub version: Version,
    /// Log position of the first appended event.
    pub first_position: LogPosition,
    /// Log position of the last appended event.
    pub last_position: LogPosition,
}

impl Appended {
    /// Builds an append outcome; for backend implementations.
    #[must_use]
    pub fn new(version: Version, first_position: LogPosition, last_position: LogPosition) -> Self {
        Self {
            version,
            first_position,
            last_position,
        }
    }
}

/// A range of versions in one stream, both ends inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRange {
    from: Version,
    to: Version,
}

impl VersionRange {
    /// The whole stream.
    #[must_use]
    pub const fn all() -> Self {
        Self {
            from: Version::new(1),
            to: Version::new(u64::MAX),
        }
    }

    /// From `from` (inclusive) to the end.
    #[must_use]
    pub const fn from(from: Version) -> Self {
        Self {
            from,
            to: Version::new(u64::MAX),
        }
    }

    /// From `from` to `to`, both inclusive.
    #[must_use]
    pub const fn between(from: Version, to: Version) -> Self {
        Self { from, to }
    }

    /// First version wanted.
    #[must_use]
    pub const fn start(&self) -> Version {
        self.from
    }

    /// Last version wanted.
    #[must_use]
    pub const fn end(&self) -> Version {
        self.to
    }

    /// Whether `version` lies in the range.
    #[must_use]
    pub fn contains(&self, version: Version) -> bool {
        self.from <= version && version <= self.to
    }
}

/// Which events a global-log read returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogFilter {
    /// Only this tenant's events; `None` reads every tenant (relay and rebuild roles).
    pub tenant: Option<TenantId>,
    /// Only events recorded at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only the events of this shard's tenants ([`Shard::contains`]); `None` (and any shard of
    /// a count of 1) reads every tenant. Stores should filter on their side so that a shard
    /// does not transfer the others' events; a store that ignores it is still correct for the
    /// Redis relay, which checks each event's shard again.
    pub shard: Option<Shard>,
}

impl LogFilter {
    /// Every event of every tenant.
    #[must_use]
    pub fn all() -> Self {
        Self::default()
    }

    /// Every event of one tenant.
    #[must_use]
    pub fn tenant(tenant: TenantId) -> Self {
        Self {
            tenant: Some(tenant),
            since: None,
            shard: None,
        }
    }

    /// Only events recorded at or after `since`.
    #[must_use]
    pub fn with_since(mut self, since: DateTime<Utc>) -> Self {
        self.since = Some(since);
        self
    }

    /// Only the events of `shard`'s tenants; a shard of one (`Shard::new(0, 1)`) is no filter
    /// and is dropped.
    #[must_use]
    pub fn with_shard(mut self, shard: Shard) -> Self {
        self.shard = (shard.count() > 1).then_some(shard);
        self
    }

    /// Whether an event passes the filter.
    #[must_use]
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        self.tenant.as_ref().is_none_or(|t| event.tenant() == t)
            && self.since.is_none_or(|s| event.recorded_at >= s)
            && self.shard.is_none_or(|s| s.contains(event.tenant()))
    }
}

/// Why an event-store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream was not at the expected version; nothing was written. Reload and retry.
    #[error("stream {stream} is at version {actual}, expected {expected}")]
    Conflict {
        /// The stream appended to.
        stream: StreamId,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The stream's actual version.
        actual: Version,
    },
    /// An event id in the batch is already stored at another place (a different stream, or a
    /// different batch): not an idempotent retry. Nothing was written.
    #[error("event id {event_id} is already stored elsewhere")]
    DuplicateEventId {
        /// The reused id.
        event_id: EventId,
    },
    /// The append carried no events.
    #[error("an append needs at least one event")]
    EmptyAppend,
    /// The operation touched data of a tenant other than the one it runs for (a second wall
    /// behind every query's tenant filter).
    #[error("tenant isolation refused the operation")]
    TenantViolation(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A checkpoint was not at the expected position: another instance moved it.
    #[error("checkpoint {name} moved to {actual:?}, expected {expected:?}")]
    CheckpointConflict {
        /// The checkpoint's name.
        name: String,
        /// What the caller expected.
        expected: Option<LogPosition>,
        /// The stored position.
        actual: Option<LogPosition>,
    },
    /// An append inside the caller's own transaction was refused because a transaction younger
    /// than the caller's appended to the stream first: committing would put this append before
    /// the stream's previous events in the global log. Nothing was appended, and nothing the
    /// transaction does from now on can be: roll it back and run the whole transaction again
    /// (a new transaction is younger than every one that committed before it began). Only
    /// stores that append inside a caller's transaction return it; their own appends retry
    /// internally.
    #[error(
        "stream {stream} was appended to by a younger transaction; roll back and retry the whole transaction"
    )]
    RetryTransaction {
        /// The stream appended to.
        stream: StreamId,
    },
    /// The store cannot be reached right now (connection lost, pool exhausted, timeout,
    /// serialization failure); the operation may be retried.
    #[error("event store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Stored data violates an invariant of the store.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The store refused the operation for another reason.
    #[error("event store backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// Whether this is a [`StoreError::Conflict`].
    #[must_use]
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }

    /// Whether retrying the same operation later may succeed (after reloading, for conflicts).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Conflict { .. }
                | Self::RetryTransaction { .. }
                | Self::Unavailable(_)
                | Self::CheckpointConflict { .. }
        )
    }
}

/// A stored event as an aggregate load reads it: what `apply` needs and what names the event in
/// a decode error, without its log position, time or metadata.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StreamEvent {
    /// The event's id.
    pub event_id: EventId,
    /// Its version in the stream.
    pub version: Version,
    /// The stored type name; shared between events of one type, so a backend can read a long
    /// stream without allocating a name per event.
    pub event_type: Arc<str>,
    /// The stored schema version.
    pub schema_version: u32,
    /// The stored payload.
    pub payload: StreamPayload,
}

/// The payload of a [`StreamEvent`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StreamPayload {
    /// Parsed.
    Value(serde_json::Value),
    /// JSON text, parsed when the event is decoded. A backend reading a long stream then holds
    /// one buffer per event instead of a parsed tree, and each tree lives only while its event
    /// is decoded: loading 10,000 events this way allocates and frees as a fold over the rows
    /// does, not 10,000 trees at once.
    Text(Box<str>),
}

impl StreamPayload {
    /// The payload as a JSON value.
    ///
    /// # Errors
    ///
    /// When JSON text does not parse.
    pub fn into_value(self) -> Result<serde_json::Value, serde_json::Error> {
        match self {
            Self::Value(value) => Ok(value),
            Self::Text(text) => serde_json::from_str(&text),
        }
    }
}

impl From<serde_json::Value> for StreamPayload {
    fn from(value: serde_json::Value) -> Self {
        Self::Value(value)
    }
}

impl StreamEvent {
    /// The parts of an event read from its stream.
    #[must_use]
    pub fn new(
        event_id: EventId,
        version: Version,
        event_type: impl Into<Arc<str>>,
        schema_version: u32,
        payload: impl Into<StreamPayload>,
    ) -> Self {
        Self {
            event_id,
            version,
            event_type: event_type.into(),
            schema_version,
            payload: payload.into(),
        }
    }

    /// Decodes the payload as `E`, upcasting older schema versions.
    ///
    /// # Errors
    ///
    /// [`EventDecodeError`] naming the event in `stream` when it does not decode.
    pub fn decode<E: DomainEvent>(self, stream: &StreamId) -> Result<E, EventDecodeError> {
        let decoded = match self.payload.into_value() {
            Ok(payload) => E::decode(&self.event_type, self.schema_version, payload),
            Err(source) => Err(DecodeError::Payload {
                event_type: self.event_type.as_ref().to_owned(),
                source,
            }),
        };
        decoded.map_err(|source| {
            EventDecodeError::from_parts(
                self.event_id,
                stream,
                self.version,
                self.event_type.as_ref().to_owned(),
                source,
            )
        })
    }
}

impl From<RecordedEvent> for StreamEvent {
    fn from(event: RecordedEvent) -> Self {
        Self {
            event_id: event.event_id,
            version: event.version,
            event_type: event.event_type.into(),
            schema_version: event.schema_version,
            payload: StreamPayload::Value(event.payload),
        }
    }
}

/// Append-only, versioned storage of events with a global, gap-free ordered log.
///
/// # Contract
///
/// - `append` writes all events or none. It succeeds only when `expected` admits the stream's
///   version; otherwise it returns [`StoreError::Conflict`] with the actual version. The new
///   events get versions `actual + 1 ..` and increasing log positions.
/// - Re-appending a batch whose event ids are all already stored, consecutively and in order, in
///   the same stream is an idempotent no-op that returns the original [`Appended`], whatever the
///   expectation (the first attempt's acknowledgement may have been lost). Any other reuse of an
///   event id is [`StoreError::DuplicateEventId`].
/// - `read_all` returns events strictly after `after`, in log order, never skipping an event
///   that a later read could still reveal: a reader that checkpoints the last position it saw
///   sees every committed event exactly once.
/// - Along the log, each stream's events appear in version order, whatever the expectations
///   and concurrency of the appends that wrote them: a reader never sees version `n + 1` of a
///   stream before version `n`.
/// - Every stream read is scoped by the tenant in its [`StreamId`].
///
/// [`testing::conformance`](crate::testing::conformance) checks all of this against an
/// implementation.
pub trait EventStore: Send + Sync {
    /// Appends `events` to `stream` if it is at `expected`.
    fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<Appended, StoreError>> + Send;

    /// Reads the events of one stream within `range`, in version order.
    fn read_stream(
        &self,
        stream: &StreamId,
        range: VersionRange,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// As [`read_stream`](Self::read_stream), with only what an aggregate load needs: the
    /// repository loads through this. The default reads full events and drops the rest; a
    /// backend that can read less (fewer columns, less decoding) should.
    fn read_stream_events(
        &self,
        stream: &StreamId,
        range: VersionRange,
    ) -> impl Future<Output = Result<Vec<StreamEvent>, StoreError>> + Send {
        async move {
            let events = self.read_stream(stream, range).await?;
            Ok(events.into_iter().map(StreamEvent::from).collect())
        }
    }

    /// The stream's current version ([`Version::ZERO`] if it has no events).
    fn stream_version(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Version, StoreError>> + Send;

    /// Reads up to `limit` events after `after` in log order, keeping those `filter` admits.
    fn read_all(
        &self,
        after: LogPosition,
        limit: usize,
        filter: &LogFilter,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// Reads a tenant's events that carry `correlation_id`, in log order.
    fn read_by_correlation(
        &self,
        tenant: &TenantId,
        correlation_id: Uuid,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// A notifier woken after each local append, so a tailing reader in the same process can
    /// poll at once instead of waiting; `None` when the store cannot tell.
    fn append_notify(&self) -> Option<Arc<Notify>> {
        None
    }

    /// The position of the last event of the log that readers can see now, or `None` when the
    /// log is empty or the store cannot tell (the default).
    ///
    /// Every event at or before it is readable already, and none at or before it can appear
    /// later: a reader that asked for the head, then read everything a filter admits after its
    /// checkpoint and got a short page, has seen all those events up to the head, and may move
    /// its checkpoint there (a relay shard whose tenants are quiet does, so that its reads
    /// do not start further and further behind the log's end). A store that wraps another
    /// should forward it.
    fn log_head(&self) -> impl Future<Output = Result<Option<LogPosition>, StoreError>> + Send {
        async { Ok(None) }
    }

    /// How many events `filter` admits after `after`: the work left for a reader there (a
    /// projection rebuild reports progress against it). The default reads the log through;
    /// backends override it with a cheaper count.
    fn count_after(
        &self,
        after: LogPosition,
        filter: &LogFilter,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        async move {
            let mut count = 0;
            let mut position = after;
            loop {
                let batch = self.read_all(position, 10_000, filter).await?;
                let Some(last) = batch.last() else {
                    return Ok(count);
                };
                position = last.position;
                count += batch.len() as u64;
            }
        }
    }
}

impl<S: EventStore + ?Sized> EventStore for Arc<S> {
    fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<Appended, StoreError>> + Send {
        (**self).append(stream, expected, events)
    }

    fn read_stream(
        &self,
        stream: &StreamId,
        range: VersionRange,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send {
        (**self).read_stream(stream, range)
    }

    fn read_stream_events(
        &self,
        stream: &StreamId,
        range: VersionRange,
    ) -> impl Future<Output = Result<Vec<StreamEvent>, StoreError>> + Send {
        (**self).read_stream_events(stream, range)
    }

    fn stream_version(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Version, StoreError>> + Send {
        (**self).stream_version(stream)
    }

    fn read_all(
        &self,
        after: LogPosition,
        limit: usize,
        filter: &LogFilter,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send {
        (**self).read_all(after, limit, filter)
    }

    fn read_by_correlation(
        &self,
        tenant: &TenantId,
        correlation_id: Uuid,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send {
        (**self).read_by_correlation(tenant, correlation_id)
    }

    fn append_notify(&self) -> Option<Arc<Notify>> {
        (**self).append_notify()
    }

    fn log_head(&self) -> impl Future<Output = Result<Option<LogPosition>, StoreError>> + Send {
        (**self).log_head()
    }

    fn count_after(
        &self,
        after: LogPosition,
        filter: &LogFilter,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        (**self).count_after(after, filter)
    }
}

/// Streams the global log from `after` to its current end in batches of `batch_size`.
///
/// The stream ends at the first empty or short batch; it is a catch-up read, not a
/// subscription. The next batch is read while the caller consumes the current one, so the store
/// and the caller work at the same time; a failed read is yielded after the events before it and
/// ends the stream.
///
/// ```
/// # use eventsource_core::{store, EventStore, InMemoryEventStore, LogFilter, LogPosition, NewEvent, StreamId, ExpectedVersion, TenantId};
/// # use futures::TryStreamExt;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), eventsource_core::StoreError> {
/// let store = InMemoryEventStore::new();
/// let stream = StreamId::new(TenantId::default(), "counter", "c-1");
/// let events = (0..5).map(|_| NewEvent::new("Incremented", 1, serde_json::Value::Null)).collect();
/// store.append(&stream, ExpectedVersion::NoStream, events).await?;
/// let all: Vec<_> = store::read_log(&store, LogPosition::START, 2, LogFilter::all()).try_collect().await?;
/// assert_eq!(all.len(), 5);
/// # Ok(()) }
/// ```
pub fn read_log<S: EventStore + ?Sized>(
    store: &S,
    after: LogPosition,
    batch_size: usize,
    filter: LogFilter,
) -> impl Stream<Item = Result<RecordedEvent, StoreError>> + Send + '_ {
    type Batch<'a> =
        Pin<Box<dyn Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send + 'a>>;
    let batch_size = batch_size.max(1);
    let filter = Arc::new(filter);
    let fetch = move |after: LogPosition| -> Batch<'_> {
        let filter = filter.clone();
        Box::pin(async move { store.read_all(after, batch_size, &filter).await })
    };
    let mut current = Vec::new().into_iter();
    let mut next = Some(fetch(after));
    let mut ready: Option<Result<Vec<RecordedEvent>, StoreError>> = None;
    // The next batch is read while this one is consumed (the store works while the caller
    // does); the reads and their positions are the same as one batch after the other.
    futures::stream::poll_fn(move |cx| {
        loop {
            if ready.is_none()
                && let Some(Poll::Ready(result)) = next.as_mut().map(|f| f.as_mut().poll(cx))
            {
                next = None;
                ready = Some(result);
            }
            if let Some(event) = current.next() {
                return Poll::Ready(Some(Ok(event)));
            }
            match ready.take() {
                None if next.is_some() => return Poll::Pending,
                None => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(batch)) => {
                    // A short batch is the end of the log for now.
                    if batch.len() == batch_size {
                        next = batch.last().map(|last| fetch(last.position));
                    }
                    current = batch.into_iter();
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::StreamExt as _;

    use super::*;
    use crate::memory::InMemoryEventStore;

    /// An in-memory store whose `read_all` records the positions it is asked for and fails
    /// from the `fail_from`-th call on.
    struct Recording {
        inner: InMemoryEventStore,
        reads: Mutex<Vec<LogPosition>>,
        fail_from: usize,
    }

    impl EventStore for Recording {
        async fn append(
            &self,
            stream: &StreamId,
            expected: ExpectedVersion,
            events: Vec<NewEvent>,
        ) -> Result<Appended, StoreError> {
            self.inner.append(stream, expected, events).await
        }
        async fn read_stream(
            &self,
            stream: &StreamId,
            range: VersionRange,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            self.inner.read_stream(stream, range).await
        }
        async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
            self.inner.stream_version(stream).await
        }
        async fn read_all(
            &self,
            after: LogPosition,
            limit: usize,
            filter: &LogFilter,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            let calls = {
                let mut reads = self.reads.lock().expect("reads");
                reads.push(after);
                reads.len()
            };
            if calls >= self.fail_from {
                return Err(StoreError::Unavailable("read failed".into()));
            }
            self.inner.read_all(after, limit, filter).await
        }
        async fn read_by_correlation(
            &self,
            tenant: &TenantId,
            correlation_id: Uuid,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            self.inner.read_by_correlation(tenant, correlation_id).await
        }
    }

    async fn store_with(events: usize, fail_from: usize) -> Recording {
        let inner = InMemoryEventStore::new();
        let stream = StreamId::new(TenantId::default(), "t", "s");
        let batch = (0..events)
            .map(|_| NewEvent::new("E", 1, serde_json::Value::Null))
            .collect();
        inner
            .append(&stream, ExpectedVersion::NoStream, batch)
            .await
            .expect("append");
        Recording {
            inner,
            reads: Mutex::new(Vec::new()),
            fail_from,
        }
    }

    #[tokio::test]
    async fn read_log_reads_batch_after_batch_from_the_last_position() {
        let store = store_with(5, usize::MAX).await;
        let read: Vec<RecordedEvent> = read_log(&store, LogPosition::START, 2, LogFilter::all())
            .map(|e| e.expect("event"))
            .collect()
            .await;
        assert_eq!(read.len(), 5);
        assert!(read.windows(2).all(|w| w[0].position < w[1].position));
        let reads = store.reads.lock().expect("reads").clone();
        // Batches of 2, 2 and 1: the short batch ends the read.
        assert_eq!(
            reads,
            [LogPosition::START, read[1].position, read[3].position]
        );
    }

    #[tokio::test]
    async fn a_failed_read_comes_after_the_events_before_it_and_ends_the_stream() {
        let store = store_with(5, 2).await;
        let items: Vec<Result<RecordedEvent, StoreError>> =
            read_log(&store, LogPosition::START, 2, LogFilter::all())
                .collect()
                .await;
        assert_eq!(items.len(), 3, "two events, then the error, then the end");
        assert!(items[0].is_ok() && items[1].is_ok());
        assert!(matches!(items[2], Err(StoreError::Unavailable(_))));
    }
}
