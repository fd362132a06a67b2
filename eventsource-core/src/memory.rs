//! The in-memory store: the embedded default, honouring the whole contract.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use chrono::Utc;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::checkpoint::CheckpointStore;
use crate::envelope::{EventId, LogPosition, NewEvent, RecordedEvent, StreamId, TenantId, Version};
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::store::{Appended, EventStore, ExpectedVersion, LogFilter, StoreError, VersionRange};

/// An [`EventStore`] in process memory.
///
/// Version check and append happen under one write lock, so concurrent appends to one stream
/// are serialized and lose nothing; reads take the read lock. Each append is one "transaction":
/// its events share the transaction part of their [`LogPosition`]. Cloning is cheap and clones
/// share the same data. Nothing survives the process.
///
/// ```
/// # use eventsource_core::*;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), StoreError> {
/// let store = InMemoryEventStore::new();
/// let stream = StreamId::new(TenantId::default(), "counter", "c-1");
/// let first = NewEvent::new("Incremented", 1, serde_json::Value::Null);
/// store.append(&stream, ExpectedVersion::NoStream, vec![first]).await?;
///
/// let late = NewEvent::new("Incremented", 1, serde_json::Value::Null);
/// let err = store.append(&stream, ExpectedVersion::NoStream, vec![late]).await.unwrap_err();
/// assert!(matches!(err, StoreError::Conflict { actual, .. } if actual == Version::new(1)));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct InMemoryEventStore {
    inner: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    log: RwLock<Log>,
    notify: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Log {
    /// Every event in log order; an event's index is its position minus one.
    events: Vec<Arc<RecordedEvent>>,
    /// Per stream, the log indexes of its events in version order.
    streams: HashMap<StreamId, Vec<usize>>,
    /// Event id to log index.
    ids: HashMap<EventId, usize>,
    transactions: u64,
}

impl InMemoryEventStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of events in the log.
    #[must_use]
    pub fn len(&self) -> usize {
        self.read().events.len()
    }

    /// Whether the log holds no event.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Log> {
        // A panic while holding the lock cannot leave the log half-written: every mutation
        // is checked before the first write. So a poisoned lock is still consistent.
        self.inner
            .log
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Log> {
        self.inner
            .log
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Log {
    fn version(&self, stream: &StreamId) -> Version {
        Version::new(self.streams.get(stream).map_or(0, |v| v.len() as u64))
    }

    /// If every id of `events` is already stored consecutively, in order, in `stream`, the
    /// original outcome; `Err` if some id is stored anywhere else.
    fn replayed(
        &self,
        stream: &StreamId,
        events: &[NewEvent],
    ) -> Result<Option<Appended>, StoreError> {
        let Some(&first) = self.ids.get(&events[0].event_id) else {
            if let Some(e) = events.iter().find(|e| self.ids.contains_key(&e.event_id)) {
                return Err(StoreError::DuplicateEventId {
                    event_id: e.event_id,
                });
            }
            return Ok(None);
        };
        let start = &self.events[first];
        let duplicate = StoreError::DuplicateEventId {
            event_id: events[0].event_id,
        };
        if &start.stream != stream {
            return Err(duplicate);
        }
        let indexes = &self.streams[stream];
        let from = usize::try_from(start.version.get() - 1).map_err(|_| duplicate)?;
        let stored = indexes.get(from..from + events.len());
        let matches = stored.is_some_and(|stored| {
            stored
                .iter()
                .zip(events)
                .all(|(&i, e)| self.events[i].event_id == e.event_id)
        });
        match stored {
            Some(stored) if matches => {
                let last = &self.events[stored[stored.len() - 1]];
                Ok(Some(Appended::new(
                    last.version,
                    start.position,
                    last.position,
                )))
            }
            _ => Err(StoreError::DuplicateEventId {
                event_id: events[0].event_id,
            }),
        }
    }
}

impl EventStore for InMemoryEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        if events.is_empty() {
            return Err(StoreError::EmptyAppend);
        }
        let appended = {
            let mut log = self.write();
            if let Some(done) = log.replayed(stream, &events)? {
                return Ok(done);
            }
            let actual = log.version(stream);
            if !expected.admits(actual) {
                tracing::debug!(%stream, %expected, %actual, "append conflict");
                return Err(StoreError::Conflict {
                    stream: stream.clone(),
                    expected,
                    actual,
                });
            }
            // Ids must also be unique within the batch.
            let mut seen = std::collections::HashSet::with_capacity(events.len());
            if let Some(e) = events.iter().find(|e| !seen.insert(e.event_id)) {
                return Err(StoreError::DuplicateEventId {
                    event_id: e.event_id,
                });
            }
            log.transactions += 1;
            let transaction = log.transactions;
            let recorded_at = Utc::now();
            let mut version = actual;
            let mut first = None;
            let mut last = LogPosition::START;
            let start = log.events.len();
            for event in events {
                version = version.next();
                let index = log.events.len();
                last = LogPosition::new(transaction, index as u64 + 1);
                first.get_or_insert(last);
                log.ids.insert(event.event_id, index);
                log.events.push(Arc::new(RecordedEvent {
                    event_id: event.event_id,
                    stream: stream.clone(),
                    version,
                    position: last,
                    event_type: event.event_type,
                    schema_version: event.schema_version,
                    recorded_at,
                    metadata: event.metadata,
                    payload: event.payload,
                }));
            }
            let end = log.events.len();
            log.streams
                .entry(stream.clone())
                .or_default()
                .extend(start..end);
            Appended::new(version, first.unwrap_or(last), last)
        };
        self.inner.notify.notify_waiters();
        Ok(appended)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        range: VersionRange,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let log = self.read();
        let Some(indexes) = log.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let from = usize::try_from(range.start().get().saturating_sub(1)).unwrap_or(usize::MAX);
        let to = usize::try_from(range.end().get()).unwrap_or(usize::MAX);
        Ok(indexes
            .get(from.min(indexes.len())..to.min(indexes.len()))
            .unwrap_or_default()
            .iter()
            .map(|&i| RecordedEvent::clone(&log.events[i]))
            .collect())
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
        Ok(self.read().version(stream))
    }

    async fn read_all(
        &self,
        after: LogPosition,
        limit: usize,
        filter: &LogFilter,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let log = self.read();
        let start = log.events.partition_point(|e| e.position <= after);
        Ok(log.events[start..]
            .iter()
            .filter(|e| filter.matches(e))
            .take(limit)
            .map(|e| RecordedEvent::clone(e))
            .collect())
    }

    async fn read_by_correlation(
        &self,
        tenant: &TenantId,
        correlation_id: Uuid,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let log = self.read();
        Ok(log
            .events
            .iter()
            .filter(|e| e.tenant() == tenant && e.metadata.correlation_id == Some(correlation_id))
            .map(|e| RecordedEvent::clone(e))
            .collect())
    }

    fn append_notify(&self) -> Option<Arc<Notify>> {
        Some(self.inner.notify.clone())
    }

    async fn log_head(&self) -> Result<Option<LogPosition>, StoreError> {
        Ok(self.read().events.last().map(|e| e.position))
    }

    async fn count_after(&self, after: LogPosition, filter: &LogFilter) -> Result<u64, StoreError> {
        let log = self.read();
        let start = log.events.partition_point(|e| e.position <= after);
        Ok(log.events[start..]
            .iter()
            .filter(|e| filter.matches(e))
            .count() as u64)
    }
}

/// A [`SnapshotStore`] in process memory, keyed by stream and schema version.
#[derive(Debug, Clone, Default)]
pub struct InMemorySnapshotStore {
    snapshots: Arc<Mutex<HashMap<(StreamId, u32), Snapshot>>>,
}

impl InMemorySnapshotStore {
    /// An empty snapshot store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

impl SnapshotStore for InMemorySnapshotStore {
    async fn load(
        &self,
        stream: &StreamId,
        schema_version: u32,
    ) -> Result<Option<Snapshot>, StoreError> {
        let snapshots = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(snapshots.get(&(stream.clone(), schema_version)).cloned())
    }

    async fn save(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let mut snapshots = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = (snapshot.stream.clone(), snapshot.schema_version);
        match snapshots.get(&key) {
            Some(stored) if stored.version >= snapshot.version => {}
            _ => {
                snapshots.insert(key, snapshot);
            }
        }
        Ok(())
    }
}

/// A [`CheckpointStore`] in process memory.
#[derive(Debug, Clone, Default)]
pub struct InMemoryCheckpointStore {
    checkpoints: Arc<Mutex<HashMap<String, LogPosition>>>,
}

impl InMemoryCheckpointStore {
    /// An empty checkpoint store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

impl CheckpointStore for InMemoryCheckpointStore {
    async fn load(&self, name: &str) -> Result<Option<LogPosition>, StoreError> {
        let checkpoints = self
            .checkpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(checkpoints.get(name).copied())
    }

    async fn save(
        &self,
        name: &str,
        expected: Option<LogPosition>,
        position: LogPosition,
    ) -> Result<(), StoreError> {
        let mut checkpoints = self
            .checkpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let actual = checkpoints.get(name).copied();
        if actual != expected {
            return Err(StoreError::CheckpointConflict {
                name: name.to_owned(),
                expected,
                actual,
            });
        }
        checkpoints.insert(name.to_owned(), position);
        Ok(())
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;

    crate::conformance_tests!(InMemoryEventStore::new());

    #[tokio::test]
    async fn checkpoint_compare_and_set() {
        crate::testing::conformance::checkpoint_compare_and_set(&InMemoryCheckpointStore::new())
            .await;
    }

    #[tokio::test]
    async fn snapshots_are_monotonic() {
        crate::testing::conformance::snapshots_are_monotonic(&InMemorySnapshotStore::new()).await;
    }
}
