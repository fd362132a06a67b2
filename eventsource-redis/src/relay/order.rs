//! The relay's check that the log it reads keeps every stream in version order.
//!
//! A store that honours the core contract never fails it. The check is there so that a store
//! that does not (or a log damaged by hand) stops the relay, with the stream named, instead of
//! putting a stream's events into Redis out of order, where no consumer could put them back.

use std::collections::HashMap;

use eventsource_core::{RecordedEvent, StreamId, Version};

use crate::error::RedisStoreError;

/// How many streams the check remembers. Past that it forgets them all and starts again: the
/// first event it then reads of each stream is taken as it comes, and the ones after it are
/// checked.
const REMEMBERED_STREAMS: usize = 100_000;

/// The last version the relay published of each stream it has seen since it (re)loaded its
/// checkpoint.
#[derive(Debug)]
pub(crate) struct StreamOrder {
    last: HashMap<StreamId, Version>,
    dense: bool,
}

impl StreamOrder {
    /// `dense`: each stream must go on at exactly the next version. Without it (a log read
    /// from an instant on, which may leave out a stream's events recorded before it although
    /// they come later in the log) versions must only increase.
    pub(crate) fn new(dense: bool) -> Self {
        Self {
            last: HashMap::new(),
            dense,
        }
    }

    /// Checks that `events`, read from the log after what was published so far, continue each
    /// stream they touch at the next version: a stream's version `n + 2` read before `n + 1`
    /// means the log puts `n + 1` later, or lost it. Remembers nothing (see [`Self::record`]).
    pub(crate) fn check(&self, events: &[RecordedEvent]) -> Result<(), RedisStoreError> {
        self.out_of_order(events).next().map_or(Ok(()), Err)
    }

    /// Logs every event of `events` out of order, as [`Self::check`] finds them, and lets the
    /// batch through: for a log written before the store kept streams in order.
    pub(crate) fn warn(&self, events: &[RecordedEvent]) {
        for error in self.out_of_order(events) {
            tracing::warn!(error = %error, "publishing an event out of version order");
        }
    }

    fn out_of_order<'a>(
        &'a self,
        events: &'a [RecordedEvent],
    ) -> impl Iterator<Item = RedisStoreError> + 'a {
        let mut batch: HashMap<&StreamId, Version> = HashMap::new();
        events.iter().filter_map(move |event| {
            let previous = batch
                .get(&event.stream)
                .or_else(|| self.last.get(&event.stream))
                .copied();
            batch.insert(&event.stream, event.version);
            let previous = previous?;
            let next = previous.next();
            (event.version < next || (self.dense && event.version != next)).then(|| {
                RedisStoreError::OutOfOrder {
                    stream: event.stream.clone(),
                    previous,
                    version: event.version,
                    position: event.position,
                }
            })
        })
    }

    /// Remembers the versions of `events`, once they are published and checkpointed.
    pub(crate) fn record(&mut self, events: &[RecordedEvent]) {
        if self.last.len() >= REMEMBERED_STREAMS {
            self.last.clear();
        }
        for event in events {
            match self.last.get_mut(&event.stream) {
                Some(version) => *version = event.version,
                None => {
                    self.last.insert(event.stream.clone(), event.version);
                }
            }
        }
    }

    /// Forgets every stream: the checkpoint is about to be read again, and another instance may
    /// have published past what this one saw.
    pub(crate) fn forget(&mut self) {
        self.last.clear();
    }
}

#[cfg(test)]
mod tests {
    use eventsource_core::{
        EventId, LogPosition, Metadata, RecordedEvent, StreamId, TenantId, Version,
    };
    use serde_json::json;

    use super::StreamOrder;
    use crate::error::RedisStoreError;

    fn event(id: &str, version: u64, position: u64) -> RecordedEvent {
        RecordedEvent {
            event_id: EventId::new(),
            stream: StreamId::new(TenantId::new("acme"), "order", id),
            version: Version::new(version),
            position: LogPosition::new(1, position),
            event_type: "happened".to_owned(),
            schema_version: 1,
            recorded_at: chrono::Utc::now(),
            metadata: Metadata::new(),
            payload: json!({}),
        }
    }

    fn refused(order: &StreamOrder, events: &[RecordedEvent]) -> Option<(u64, u64)> {
        match order.check(events) {
            Ok(()) => None,
            Err(RedisStoreError::OutOfOrder {
                previous, version, ..
            }) => Some((previous.get(), version.get())),
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn a_stream_must_go_on_at_the_next_version_across_batches() {
        let mut order = StreamOrder::new(true);
        let first = [event("a", 1, 1), event("b", 7, 2), event("a", 2, 3)];
        assert_eq!(
            refused(&order, &first),
            None,
            "b is new to the check: taken as it comes"
        );
        order.record(&first);
        assert_eq!(refused(&order, &[event("a", 4, 4)]), Some((2, 4)), "a gap");
        assert_eq!(
            refused(&order, &[event("b", 7, 4)]),
            Some((7, 7)),
            "a repeat"
        );
        assert_eq!(refused(&order, &[event("a", 3, 4), event("b", 8, 5)]), None);
    }

    #[test]
    fn a_refused_batch_is_not_remembered() {
        let mut order = StreamOrder::new(true);
        order.record(&[event("a", 1, 1)]);
        let bad = [event("a", 3, 2)];
        assert!(refused(&order, &bad).is_some());
        // Only `record` remembers, and the relay records only what it published.
        assert_eq!(refused(&order, &[event("a", 2, 2)]), None);
    }

    #[test]
    fn without_density_versions_must_only_increase() {
        let mut order = StreamOrder::new(false);
        order.record(&[event("a", 1, 1)]);
        assert_eq!(
            refused(&order, &[event("a", 5, 2)]),
            None,
            "a gap is allowed"
        );
        assert_eq!(refused(&order, &[event("a", 1, 2)]), Some((1, 1)));
    }

    #[test]
    fn forgetting_takes_every_stream_as_it_comes_again() {
        let mut order = StreamOrder::new(true);
        order.record(&[event("a", 1, 1)]);
        order.forget();
        assert_eq!(refused(&order, &[event("a", 9, 2)]), None);
    }
}
