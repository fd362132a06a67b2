//! Snapshots of aggregate state and the policy for taking them.

use std::future::Future;

use chrono::{DateTime, Utc};

use crate::envelope::{StreamId, Version};
use crate::store::StoreError;

/// A serialized aggregate state at a stream version.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The aggregate's stream.
    pub stream: StreamId,
    /// The version of the last event folded into `state`.
    pub version: Version,
    /// Schema version of `state` ([`Aggregate::SNAPSHOT_VERSION`](crate::Aggregate::SNAPSHOT_VERSION)).
    pub schema_version: u32,
    /// The state as JSON.
    pub state: serde_json::Value,
    /// When the snapshot was taken.
    pub taken_at: DateTime<Utc>,
}

impl Snapshot {
    /// Builds a snapshot taken now.
    #[must_use]
    pub fn new(
        stream: StreamId,
        version: Version,
        schema_version: u32,
        state: serde_json::Value,
    ) -> Self {
        Self {
            stream,
            version,
            schema_version,
            state,
            taken_at: Utc::now(),
        }
    }
}

/// Storage for snapshots.
///
/// `save` is monotonic: a snapshot never replaces one at a higher version. `load` returns only a
/// snapshot whose schema version equals the one asked for; any other is ignored.
pub trait SnapshotStore: Send + Sync {
    /// The newest snapshot of `stream` written with `schema_version`, if any.
    fn load(
        &self,
        stream: &StreamId,
        schema_version: u32,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send;

    /// Stores `snapshot` unless a newer one (same stream and schema version) is stored.
    fn save(&self, snapshot: Snapshot) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A snapshot store that stores nothing: the repository's default.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSnapshots;

impl SnapshotStore for NoSnapshots {
    async fn load(&self, _: &StreamId, _: u32) -> Result<Option<Snapshot>, StoreError> {
        Ok(None)
    }

    async fn save(&self, _: Snapshot) -> Result<(), StoreError> {
        Ok(())
    }
}

/// When the repository takes a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotPolicy {
    /// Never.
    Never,
    /// Whenever an append crosses a multiple of this many events.
    Every(u64),
}

impl SnapshotPolicy {
    /// Whether moving a stream from `before` to `after` should take a snapshot.
    ///
    /// ```
    /// # use eventsource_core::{SnapshotPolicy, Version};
    /// let every = SnapshotPolicy::Every(100);
    /// assert!(every.should_snapshot(Version::new(99), Version::new(101)));
    /// assert!(!every.should_snapshot(Version::new(100), Version::new(199)));
    /// ```
    #[must_use]
    pub fn should_snapshot(self, before: Version, after: Version) -> bool {
        match self {
            Self::Never | Self::Every(0) => false,
            Self::Every(n) => before.get() / n != after.get() / n,
        }
    }
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        Self::Every(100)
    }
}
