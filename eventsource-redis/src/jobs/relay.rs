//! The bridge from a queue's event stream to an [`EventBus`]: lifecycle events become bus
//! events on `jobs.<queue>.<kind>` topics.

use std::sync::Arc;
use std::time::Duration;

use eventsource_core::bus::{BusError, BusEvent, EventBus, PatternError, validate_topic};
use eventsource_core::{Metadata, StoreError};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::error::JobError;
use super::event::JobEvent;
use super::queue::Queue;
use super::tail::{Tail, stream_time};

/// The `metadata.extra` key under which a relayed event carries its queue and stream id.
pub const JOB_EVENT_FIELD: &str = "job_event";

/// Why a [`JobEventsRelay`] could not be built or could not relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The queue's name is not one topic segment (ASCII letters, digits, `_`, `-`), so
    /// `jobs.<queue>` would not be a topic, or (with a `.`) would read as several segments;
    /// pick a prefix with [`JobEventsRelay::with_topic_prefix`].
    #[error("queue name `{queue}` is not a topic segment; choose a topic prefix")]
    QueueNameNotASegment {
        /// The queue's name.
        queue: String,
    },
    /// The topic prefix given is not a valid bus topic.
    #[error(transparent)]
    InvalidTopic(#[from] PatternError),
    /// Reading the queue's events or moving the cursor failed.
    #[error(transparent)]
    Jobs(#[from] JobError),
    /// Publishing onto the bus failed; the cursor did not move.
    #[error("publishing job events onto the bus failed")]
    Bus(#[source] BusError),
    /// Appending job events to the event store failed; the cursor did not move.
    #[error("appending job events to the store failed")]
    Store(#[source] StoreError),
}

impl RelayError {
    /// Whether retrying later may succeed (Redis or the bus's backend unavailable).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Jobs(e) => e.is_retryable(),
            Self::Bus(e) => matches!(e, BusError::Backend(_)),
            Self::Store(e) => e.is_retryable(),
            Self::InvalidTopic(_) | Self::QueueNameNotASegment { .. } => false,
        }
    }
}

impl From<redis::RedisError> for RelayError {
    fn from(e: redis::RedisError) -> Self {
        Self::Jobs(JobError::from(e))
    }
}

/// Publishes a queue's lifecycle events ([`JobEvent`]) onto an [`EventBus`], in stream order,
/// on the topics `<prefix>.<kind>`: the prefix is `jobs.<queue>` unless chosen, the kind is
/// [`JobEvent::kind`] (`jobs.analysis.completed`, `jobs.analysis.failed`,
/// `jobs.analysis.progress`, …). Subscribe with a pattern such as `jobs.analysis.*` or
/// `*.failed`.
///
/// # Delivery: at least once, deduplicate on the id
///
/// The relay tails the queue's event stream from a durable cursor (the last stream id
/// published, kept at `es:jobs:{<queue>}:relay:<name>`, in the queue's hash tag). Each
/// [`step`](Self::step) publishes a batch with [`EventBus::publish_batch`] and moves the cursor
/// only after the publish succeeded, so a crash or a failed publish re-publishes the batch:
/// **subscribers may see an event twice**. Every relayed event has a deterministic
/// [`BusEvent::id`] derived from the queue's stream key and the event's stream id (a UUIDv5),
/// the same on every re-publication, so subscribers deduplicate on it; `metadata.extra
/// ["job_event"]` holds `{"queue", "stream_id"}` and `published_at` is the stream entry's time.
///
/// The queue's stream keeps about [`Queue::with_events_max_len`] events: a relay stopped for
/// longer than that takes to fill resumes at the oldest event kept, and the trimmed ones are
/// not relayed. Run one relay per cursor name (two would both publish everything).
///
/// ```no_run
/// # use std::sync::Arc;
/// # use eventsource_core::bus::{EventBus, InMemoryBus};
/// # use eventsource_redis::jobs::{JobEventsRelay, Queue};
/// # use tokio_util::sync::CancellationToken;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let conn = redis::Client::open("redis://127.0.0.1/")?.get_connection_manager().await?;
/// let queue = Queue::new(conn, "analysis");
/// let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
/// let relay = JobEventsRelay::new(queue.clone(), Arc::clone(&bus))?;
/// assert_eq!(relay.topic_prefix(), "jobs.analysis");
/// queue.add("run-analysis", serde_json::json!({ "repository": 42 })).await?;
/// assert_eq!(relay.step().await?, 1); // published on `jobs.analysis.added`
/// let shutdown = CancellationToken::new();
/// let running = tokio::spawn(relay.run(shutdown.clone()));
/// // … until the application stops:
/// shutdown.cancel();
/// running.await??;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct JobEventsRelay {
    tail: Tail,
    bus: Arc<dyn EventBus>,
    prefix: String,
}

impl JobEventsRelay {
    /// A relay of `queue` onto `bus` on the topics `jobs.<queue name>.<kind>`, with the cursor
    /// name `bus`. Fails with [`RelayError::QueueNameNotASegment`] when the queue's name is not
    /// one topic segment (a `.`, `:` or space in it, say): choose a prefix with
    /// [`with_topic_prefix`](Self::with_topic_prefix) then.
    pub fn new(queue: Queue, bus: Arc<dyn EventBus>) -> Result<Self, RelayError> {
        let name = queue.name();
        if name.contains('.') || validate_topic(name).is_err() {
            return Err(RelayError::QueueNameNotASegment {
                queue: name.to_owned(),
            });
        }
        let prefix = format!("jobs.{name}");
        Self::with_topic_prefix(queue, bus, &prefix)
    }

    /// A relay of `queue` onto `bus` on the topics `<prefix>.<kind>`; `prefix` must be a valid
    /// topic (one or more segments of ASCII letters, digits, `_`, `-`, joined by `.`).
    pub fn with_topic_prefix(
        queue: Queue,
        bus: Arc<dyn EventBus>,
        prefix: &str,
    ) -> Result<Self, RelayError> {
        validate_topic(prefix)?;
        Ok(Self {
            tail: Tail::new(queue, "bus"),
            bus,
            prefix: prefix.to_owned(),
        })
    }

    /// Names the cursor (default `bus`), so that relays of one queue onto different buses keep
    /// their own position.
    #[must_use]
    pub fn with_cursor_name(mut self, name: &str) -> Self {
        self.tail.rename(name);
        self
    }

    /// How many events one [`step`](Self::step) publishes at most (default 100).
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

    /// The topic prefix: events go to `<prefix>.<kind>`.
    #[must_use]
    pub fn topic_prefix(&self) -> &str {
        &self.prefix
    }

    /// The stream id of the last event published (`"0"` before the first).
    pub async fn cursor(&self) -> Result<String, RelayError> {
        self.tail.cursor().await
    }

    /// Publishes the next batch of events after the cursor, then moves the cursor past them.
    /// Returns how many were published (0 when the stream has nothing new). When the publish
    /// fails the cursor stays, and the next step publishes the same events again.
    pub async fn step(&self) -> Result<usize, RelayError> {
        let page = self.tail.next().await?;
        let Some((last, _)) = page.last() else {
            return Ok(0);
        };
        let last = last.clone();
        let count = page.len();
        let events = page
            .into_iter()
            .map(|(stream_id, event)| self.bus_event(&stream_id, &event))
            .collect();
        self.bus
            .publish_batch(events)
            .await
            .map_err(RelayError::Bus)?;
        self.tail.advance(&last).await?;
        Ok(count)
    }

    /// Relays until `shutdown` is cancelled: steps while there is a backlog, waits the poll
    /// interval when there is none. Transient failures (Redis, the bus's backend) are retried
    /// with backoff; a permanent one stops the relay with that error.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RelayError> {
        self.tail.run(&shutdown, || self.step()).await
    }

    /// The bus event of the stream entry `stream_id`.
    fn bus_event(&self, stream_id: &str, event: &JobEvent) -> BusEvent {
        let queue = self.tail.queue.name();
        let mut metadata = Metadata::new();
        metadata.source = Some("jobs".to_owned());
        metadata.extra.insert(
            JOB_EVENT_FIELD.to_owned(),
            json!({ "queue": queue, "stream_id": stream_id }),
        );
        let mut bus_event = BusEvent::new(
            format!("{}.{}", self.prefix, event.kind()),
            event.payload(queue),
        )
        .with_id(self.tail.event_id(stream_id))
        .with_metadata(metadata);
        if let Some(at) = stream_time(stream_id) {
            bus_event = bus_event.with_published_at(at);
        }
        bus_event
    }
}

impl JobEvent {
    /// The event's kind, the last segment of its bus topic: `added`, `completed`, `retrying`,
    /// `stalled`, `failed`, `progress`, `paused`, `resumed`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Added { .. } => "added",
            Self::Completed { .. } => "completed",
            Self::Retrying { .. } => "retrying",
            Self::Stalled { .. } => "stalled",
            Self::Failed { .. } => "failed",
            Self::Progress { .. } => "progress",
            Self::Paused => "paused",
            Self::Resumed => "resumed",
        }
    }

    /// The event as the JSON payload of its bus event: `queue`, `event` (the kind) and the
    /// variant's fields (`id`, `name`, `result`, `reason`, `attempts_made`, `delay_ms`,
    /// `progress`).
    #[must_use]
    pub fn payload(&self, queue: &str) -> serde_json::Value {
        let mut payload = match self {
            Self::Added { id, name } => json!({ "id": id, "name": name }),
            Self::Completed { id, name, result } => {
                json!({ "id": id, "name": name, "result": result })
            }
            Self::Retrying {
                id,
                reason,
                attempts_made,
                delay_ms,
            } => json!({
                "id": id, "reason": reason, "attempts_made": attempts_made, "delay_ms": delay_ms,
            }),
            Self::Stalled { id, attempts_made } => {
                json!({ "id": id, "attempts_made": attempts_made })
            }
            Self::Failed {
                id,
                name,
                reason,
                attempts_made,
            } => json!({
                "id": id, "name": name, "reason": reason, "attempts_made": attempts_made,
            }),
            Self::Progress { id, progress } => json!({ "id": id, "progress": progress }),
            Self::Paused | Self::Resumed => json!({}),
        };
        if let Some(fields) = payload.as_object_mut() {
            fields.insert("queue".to_owned(), json!(queue));
            fields.insert("event".to_owned(), json!(self.kind()));
        }
        payload
    }
}
