//! Event handlers: the unit of work of projections, sagas and runners.

use std::future::Future;

use crate::envelope::RecordedEvent;

/// Reacts to stored events, one at a time, in log order per stream.
///
/// Runners deliver events at least once: a handler that must have exactly-once effects
/// deduplicates by [`RecordedEvent::position`] or [`RecordedEvent::event_id`] in the same
/// transaction as its effect.
pub trait EventHandler: Send + Sync {
    /// Why handling failed; the runner retries, then dead-letters.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Handles one event.
    fn handle(&self, event: &RecordedEvent)
    -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Whether `error` will recur on every redelivery — an event whose type the handler does
    /// not know or whose payload does not decode, say. Runners dead-letter such an event at
    /// once instead of retrying it. The default treats every error as transient.
    fn is_permanent(&self, error: &Self::Error) -> bool {
        let _ = error;
        false
    }
}
