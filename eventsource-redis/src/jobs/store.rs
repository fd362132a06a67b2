//! The bridge from a queue's event stream to an [`EventStore`]: the job events the application
//! asks for become domain events, appended once each.

use std::time::Duration;

use eventsource_core::{EventStore, ExpectedVersion, NewEvent, StreamId};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::event::JobEvent;
use super::queue::Queue;
use super::relay::{JOB_EVENT_FIELD, RelayError};
use super::tail::Tail;

/// Appends the job events the application maps to domain events to an [`EventStore`].
///
/// `map` turns a [`JobEvent`] into the stream and event to append, or `None` to skip it
/// (typically: keep [`JobEvent::Completed`] and [`JobEvent::Failed`], drop the rest). It must be
/// deterministic: the same job event always maps to the same stream.
///
/// # Appended once
///
/// The relay tails the queue's event stream from a durable cursor (`es:jobs:{<queue>}:relay:
/// <name>`, name `store` by default), appends each mapped event on its own with
/// [`ExpectedVersion::Any`], and moves the cursor after the batch. The appended event's id is
/// derived from the stream entry (the same UUIDv5 as [`JobEventsRelay`](super::JobEventsRelay)
/// gives the bus event), whatever id `map` set: after a crash before the cursor moved, the
/// re-append of an event already stored is the store's idempotent no-op, so **each job event
/// is appended once**. `metadata.extra["job_event"]` holds `{"queue", "stream_id"}`.
///
/// ```no_run
/// # use eventsource_core::{InMemoryEventStore, NewEvent, StreamId, TenantId};
/// # use eventsource_redis::jobs::{JobEvent, JobEventsStoreRelay, Queue};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let conn = redis::Client::open("redis://127.0.0.1/")?.get_connection_manager().await?;
/// let queue = Queue::new(conn, "analysis");
/// let store = InMemoryEventStore::new();
/// let relay = JobEventsStoreRelay::new(queue.clone(), store, |event: &JobEvent| match event {
///     JobEvent::Completed { id, result, .. } => Some((
///         StreamId::new(TenantId::new("acme"), "analysis", id),
///         NewEvent::new("AnalysisCompleted", 1, result.clone()),
///     )),
///     _ => None,
/// });
/// queue.add("run-analysis", serde_json::json!({})).await?;
/// assert_eq!(relay.step().await?, 1); // went through `added`, appended nothing
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct JobEventsStoreRelay<S, F> {
    tail: Tail,
    store: S,
    map: F,
}

impl<S, F> JobEventsStoreRelay<S, F>
where
    S: EventStore,
    F: Fn(&JobEvent) -> Option<(StreamId, NewEvent)> + Send + Sync,
{
    /// A relay of `queue`'s events, as mapped by `map`, into `store`; cursor name `store`.
    #[must_use]
    pub fn new(queue: Queue, store: S, map: F) -> Self {
        Self {
            tail: Tail::new(queue, "store"),
            store,
            map,
        }
    }

    /// Names the cursor (default `store`), so that relays into different stores keep their own
    /// position.
    #[must_use]
    pub fn with_cursor_name(mut self, name: &str) -> Self {
        self.tail.rename(name);
        self
    }

    /// How many stream events one [`step`](Self::step) goes through at most (default 100).
    #[must_use]
    pub fn with_batch_size(mut self, size: usize) -> Self {
        self.tail.batch_size = size.max(1);
        self
    }

    /// How long [`run`](Self::run) waits when the stream has nothing new (default 50 ms).
    #[must_use]
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.tail.poll_interval = interval;
        self
    }

    /// The stream id of the last job event gone through (`"0"` before the first).
    pub async fn cursor(&self) -> Result<String, RelayError> {
        self.tail.cursor().await
    }

    /// Appends the mapped events of the next batch after the cursor, then moves the cursor past
    /// the batch. Returns how many job events it went through (appended or skipped; 0 when the
    /// stream has nothing new). When an append fails the cursor stays.
    pub async fn step(&self) -> Result<usize, RelayError> {
        let page = self.tail.next().await?;
        let Some((last, _)) = page.last() else {
            return Ok(0);
        };
        let last = last.clone();
        let count = page.len();
        for (stream_id, event) in page {
            let Some((stream, mut new)) = (self.map)(&event) else {
                continue;
            };
            new.event_id = self.tail.event_id(&stream_id);
            new.metadata.extra.insert(
                JOB_EVENT_FIELD.to_owned(),
                json!({ "queue": self.tail.queue.name(), "stream_id": stream_id }),
            );
            // One event per append: a replayed single-event append is recognised as such.
            self.store
                .append(&stream, ExpectedVersion::Any, vec![new])
                .await
                .map_err(RelayError::Store)?;
        }
        self.tail.advance(&last).await?;
        Ok(count)
    }

    /// Appends until `shutdown` is cancelled; transient failures (Redis, the store) are
    /// retried with backoff, a permanent one stops the relay with that error.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RelayError> {
        self.tail.run(&shutdown, || self.step()).await
    }
}
