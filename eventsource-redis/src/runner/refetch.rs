//! Entries deleted while pending, found again in the event store by the log position in their id.

use std::pin::Pin;
use std::sync::atomic::Ordering;

use eventsource_core::{
    EventHandler, EventStore, LogFilter, LogPosition, RecordedEvent, StoreError,
};

use super::ConsumerRunner;
use super::delivery::{Content, Delivery};
use crate::codec;

pub(super) type RefetchFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<RecordedEvent>, StoreError>> + Send + 'a>>;

/// Finds an event in the store by its log position.
pub(super) trait Refetch: Send + Sync {
    fn refetch(&self, position: LogPosition) -> RefetchFuture<'_>;
}

impl<S: EventStore> Refetch for S {
    fn refetch(&self, position: LogPosition) -> RefetchFuture<'_> {
        Box::pin(async move {
            let after = match position.position().checked_sub(1) {
                Some(p) => LogPosition::new(position.transaction(), p),
                None => match position.transaction().checked_sub(1) {
                    Some(tx) => LogPosition::new(tx, u64::MAX),
                    None => return Ok(None),
                },
            };
            let events = self.read_all(after, 1, &LogFilter::all()).await?;
            Ok(events.into_iter().next().filter(|e| e.position == position))
        })
    }
}

impl<H: EventHandler> ConsumerRunner<H> {
    /// Looks a deleted entry up in the store by the position in its id.
    ///
    /// What the deleted entry `d` holds: its event, a reason to dead-letter it, or a retry
    /// later when the store failed and the entry can be delivered again.
    pub(super) async fn resolve_missing(&self, d: &Delivery) -> Content {
        self.counters.missing.fetch_add(1, Ordering::Relaxed);
        let stream = &self.read_keys[d.key];
        // Requeued entries have ids of their own, not log positions.
        let position = if d.key < self.event_streams {
            codec::parse_position(&d.id)
        } else {
            None
        };
        tracing::warn!(
            stream = %stream,
            id = %d.id,
            group = %self.group,
            "pending entry was deleted from its stream; refetching it from the event store"
        );
        match (&self.refetch, position) {
            (Some(store), Some(position)) => match store.refetch(position).await {
                Ok(Some(event)) => {
                    self.counters.refetched.fetch_add(1, Ordering::Relaxed);
                    Content::Event(event)
                }
                Ok(None) => Content::Unusable(
                    "entry deleted while pending and not in the event store".into(),
                ),
                Err(e) if d.in_pending => {
                    tracing::warn!(error = %e, id = %d.id, "refetch failed; will retry");
                    Content::RetryLater
                }
                Err(e) => {
                    Content::Unusable(format!("entry deleted while pending; refetch failed: {e}"))
                }
            },
            (None, _) => Content::Unusable(
                "entry deleted while pending; no event store to refetch from".into(),
            ),
            (_, None) => Content::Unusable(
                "entry deleted while pending; its id is not a log position".into(),
            ),
        }
    }
}
