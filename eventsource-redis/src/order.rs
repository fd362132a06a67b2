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
        let mut batch: HashMap<&StreamId, Version> = HashMap::new();
        for event in events {
            let previous = batch
                .get(&event.stream)
                .or_else(|| self.last.get(&event.stream))
                .copied();
            if let Some(previous) = previous {
                let next = previous.next();
                if event.version < next || (self.dense && event.version != next) {
                    return Err(RedisStoreError::OutOfOrder {
                        stream: event.stream.clone(),
                        previous,
                        version: event.version,
                        position: event.position,
                    });
                }
            }
            batch.insert(&event.stream, event.version);
        }
        Ok(())
    }

    /// Remembers the versions of `events`, once they are published and checkpointed.
    pub(crate) fn record(&mut self, events: &[RecordedEvent]) {
        if self.last.len() >= REMEMBERED_STREAMS {
            self.last.clear();
        }
        for event in events {
            self.last.insert(event.stream.clone(), event.version);
        }
    }

    /// Forgets every stream: the checkpoint is about to be read again, and another instance may
    /// have published past what this one saw.
    pub(crate) fn forget(&mut self) {
        self.last.clear();
    }
}
