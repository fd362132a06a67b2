//! What the relays of a queue's event stream share: the durable cursor, the ids derived from
//! stream ids, and the run loop.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use eventsource_core::{EventId, RetryPolicy};
use tokio_util::sync::CancellationToken;

use super::event::JobEvent;
use super::queue::Queue;
use super::relay::RelayError;
use crate::backoff::sleep_or_cancel;
use crate::error::error_chain;

/// A relay's position in a queue's event stream: the last stream id delivered, kept at
/// `es:jobs:{<queue>}:relay:<name>` so it shares the queue's hash tag.
#[derive(Debug, Clone)]
pub(crate) struct Tail {
    pub(crate) queue: Queue,
    key: String,
    pub(crate) batch_size: usize,
    pub(crate) poll_interval: Duration,
}

impl Tail {
    pub(crate) fn new(queue: Queue, name: &str) -> Self {
        let key = format!("{}relay:{name}", queue.keys.front);
        Self {
            queue,
            key,
            batch_size: 100,
            poll_interval: Duration::from_millis(50),
        }
    }

    pub(crate) fn rename(&mut self, name: &str) {
        self.key = format!("{}relay:{name}", self.queue.keys.front);
    }

    /// The last stream id delivered (`"0"` before the first).
    pub(crate) async fn cursor(&self) -> Result<String, RelayError> {
        let cursor: Option<String> =
            redis::AsyncCommands::get(&mut self.queue.conn.clone(), &self.key).await?;
        Ok(cursor.unwrap_or_else(|| "0".to_owned()))
    }

    /// The next batch after the cursor.
    pub(crate) async fn next(&self) -> Result<Vec<(String, JobEvent)>, RelayError> {
        let after = self.cursor().await?;
        Ok(self.queue.events(&after, self.batch_size).await?)
    }

    /// Moves the cursor to `stream_id`, once its events are delivered.
    pub(crate) async fn advance(&self, stream_id: &str) -> Result<(), RelayError> {
        redis::AsyncCommands::set::<_, _, ()>(&mut self.queue.conn.clone(), &self.key, stream_id)
            .await?;
        Ok(())
    }

    /// The id of the event at `stream_id`: a UUIDv5 of the queue's stream key and the entry id,
    /// the same on every re-delivery, distinct across queues (and key prefixes).
    pub(crate) fn event_id(&self, stream_id: &str) -> EventId {
        let key = format!("{}#{stream_id}", self.queue.keys.events);
        EventId::from_uuid(uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            key.as_bytes(),
        ))
    }

    /// Steps until `shutdown` is cancelled: again at once while there is a backlog, after the
    /// poll interval when there is none; transient failures retried with backoff.
    pub(crate) async fn run<F, Fut>(
        &self,
        shutdown: &CancellationToken,
        mut step: F,
    ) -> Result<(), RelayError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<usize, RelayError>>,
    {
        let errors = RetryPolicy::default()
            .with_base_delay(Duration::from_millis(20))
            .with_max_delay(Duration::from_secs(2));
        let mut failures = 0;
        while !shutdown.is_cancelled() {
            match step().await {
                Ok(n) => {
                    failures = 0;
                    if n < self.batch_size {
                        sleep_or_cancel(shutdown, self.poll_interval).await;
                    }
                }
                Err(e) if e.is_retryable() => {
                    failures += 1;
                    tracing::warn!(queue = %self.queue.name(), error = %error_chain(&e), "relaying job events failed; retrying");
                    sleep_or_cancel(shutdown, errors.delay(failures)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The time of a stream id (`<milliseconds>-<sequence>`).
pub(crate) fn stream_time(stream_id: &str) -> Option<DateTime<Utc>> {
    let millis = stream_id.split('-').next()?.parse().ok()?;
    DateTime::from_timestamp_millis(millis)
}
