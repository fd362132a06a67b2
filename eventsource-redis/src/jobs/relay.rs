//! The bridge from a queue's event stream to an [`EventBus`]: lifecycle events become bus
//! events on `jobs.<queue>.<kind>` topics.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use eventsource_core::RetryPolicy;
use eventsource_core::bus::{BusError, BusEvent, EventBus, PatternError, validate_topic};
use eventsource_core::{EventId, Metadata};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::error::JobError;
use super::event::JobEvent;
use super::queue::Queue;
use crate::publisher::sleep_or_cancel;
use crate::runner::error_chain;

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
}

impl RelayError {
    /// Whether retrying later may succeed (Redis or the bus's backend unavailable).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Jobs(e) => e.is_retryable(),
            Self::Bus(e) => matches!(e, BusError::Backend(_)),
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
    queue: Queue,
    bus: Arc<dyn EventBus>,
    prefix: String,
    cursor_key: String,
    batch_size: usize,
    poll_interval: Duration,
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
        let cursor_key = format!("{}relay:bus", queue.keys.front);
        Ok(Self {
            queue,
            bus,
            prefix: prefix.to_owned(),
            cursor_key,
            batch_size: 100,
            poll_interval: Duration::from_millis(50),
        })
    }

    /// Names the cursor (default `bus`), so that relays of one queue onto different buses keep
    /// their own position.
    #[must_use]
    pub fn with_cursor_name(mut self, name: &str) -> Self {
        self.cursor_key = format!("{}relay:{name}", self.queue.keys.front);
        self
    }

    /// How many events one [`step`](Self::step) publishes at most (default 100).
    #[must_use]
    pub fn with_batch_size(mut self, size: usize) -> Self {
        self.batch_size = size.max(1);
        self
    }

    /// How long [`run`](Self::run) waits when the stream has nothing new (default 50 ms).
    #[must_use]
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The topic prefix: events go to `<prefix>.<kind>`.
    #[must_use]
    pub fn topic_prefix(&self) -> &str {
        &self.prefix
    }

    /// The stream id of the last event published (`"0"` before the first).
    pub async fn cursor(&self) -> Result<String, RelayError> {
        let cursor: Option<String> =
            redis::AsyncCommands::get(&mut self.queue.conn.clone(), &self.cursor_key).await?;
        Ok(cursor.unwrap_or_else(|| "0".to_owned()))
    }

    /// Publishes the next batch of events after the cursor, then moves the cursor past them.
    /// Returns how many were published (0 when the stream has nothing new). When the publish
    /// fails the cursor stays, and the next step publishes the same events again.
    pub async fn step(&self) -> Result<usize, RelayError> {
        let after = self.cursor().await?;
        let page = self.queue.events(&after, self.batch_size).await?;
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
        redis::AsyncCommands::set::<_, _, ()>(&mut self.queue.conn.clone(), &self.cursor_key, last)
            .await?;
        Ok(count)
    }

    /// Relays until `shutdown` is cancelled: steps while there is a backlog, waits the poll
    /// interval when there is none. Transient failures (Redis, the bus's backend) are retried
    /// with backoff; a permanent one stops the relay with that error.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RelayError> {
        let errors = RetryPolicy::default()
            .with_base_delay(Duration::from_millis(20))
            .with_max_delay(Duration::from_secs(2));
        let mut failures = 0;
        while !shutdown.is_cancelled() {
            match self.step().await {
                Ok(n) => {
                    failures = 0;
                    if n < self.batch_size {
                        sleep_or_cancel(&shutdown, self.poll_interval).await;
                    }
                }
                Err(e) if e.is_retryable() => {
                    failures += 1;
                    tracing::warn!(queue = %self.queue.name(), error = %error_chain(&e), "relaying job events failed; retrying");
                    sleep_or_cancel(&shutdown, errors.delay(failures)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The bus event of the stream entry `stream_id`.
    fn bus_event(&self, stream_id: &str, event: &JobEvent) -> BusEvent {
        let key = format!("{}#{stream_id}", self.queue.keys.events);
        let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, key.as_bytes());
        let mut metadata = Metadata::new();
        metadata.source = Some("jobs".to_owned());
        metadata.extra.insert(
            JOB_EVENT_FIELD.to_owned(),
            json!({ "queue": self.queue.name(), "stream_id": stream_id }),
        );
        let mut bus_event = BusEvent::new(
            format!("{}.{}", self.prefix, event.kind()),
            event.payload(self.queue.name()),
        )
        .with_id(EventId::from_uuid(id))
        .with_metadata(metadata);
        if let Some(at) = stream_time(stream_id) {
            bus_event = bus_event.with_published_at(at);
        }
        bus_event
    }
}

/// The time of a stream id (`<milliseconds>-<sequence>`).
fn stream_time(stream_id: &str) -> Option<DateTime<Utc>> {
    let millis = stream_id.split('-').next()?.parse().ok()?;
    DateTime::from_timestamp_millis(millis)
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
