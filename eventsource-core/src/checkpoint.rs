//! Named positions in the global log, kept by readers (projections, relays).

use std::future::Future;

use crate::envelope::LogPosition;
use crate::store::StoreError;

/// Storage for named checkpoints with compare-and-set updates.
///
/// A reader loads its checkpoint, processes events after it and saves the new position with the
/// old one as `expected`. A second instance of the same reader then gets
/// [`StoreError::CheckpointConflict`] and should stop: only one instance advances a checkpoint.
pub trait CheckpointStore: Send + Sync {
    /// The stored position, or `None` if the reader never saved one.
    fn load(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<LogPosition>, StoreError>> + Send;

    /// Moves the checkpoint from `expected` to `position`.
    ///
    /// # Errors
    ///
    /// [`StoreError::CheckpointConflict`] when the stored value is not `expected`.
    fn save(
        &self,
        name: &str,
        expected: Option<LogPosition>,
        position: LogPosition,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}
