//! Lifecycle events: every transition script appends one to the queue's event stream
//! (`es:jobs:{<queue>}:events`) in the same atomic step, so the stream never misses or
//! invents a transition. [`JobEventsRelay`](super::JobEventsRelay) (onto an event bus) and
//! [`JobEventsStoreRelay`](super::JobEventsStoreRelay) (into an event store) tail it with
//! [`Queue::events`] from a cursor.

use std::collections::HashMap;

use super::error::JobError;
use super::queue::{Queue, number};

/// One transition of a job or the queue.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum JobEvent {
    /// A job was added.
    Added {
        /// The job id.
        id: String,
        /// The job name.
        name: String,
    },
    /// A job completed.
    Completed {
        /// The job id.
        id: String,
        /// The job name.
        name: String,
        /// The handler's result.
        result: serde_json::Value,
    },
    /// A job's attempt failed and the job will run again.
    Retrying {
        /// The job id.
        id: String,
        /// The attempt's error.
        reason: String,
        /// Attempts made so far.
        attempts_made: u32,
        /// The backoff before the next attempt, in milliseconds.
        delay_ms: u64,
    },
    /// A job's lock expired (its worker died or hung); it waits to run again.
    Stalled {
        /// The job id.
        id: String,
        /// Attempts made so far; a stall spends none (see `WorkerOptions::with_max_stalled`).
        attempts_made: u32,
    },
    /// A job failed for good: its attempts are spent.
    Failed {
        /// The job id.
        id: String,
        /// The job name.
        name: String,
        /// The last attempt's error.
        reason: String,
        /// Attempts made.
        attempts_made: u32,
    },
    /// A running job reported progress.
    Progress {
        /// The job id.
        id: String,
        /// The progress reported.
        progress: serde_json::Value,
    },
    /// The queue was paused.
    Paused,
    /// The queue was resumed.
    Resumed,
}

impl Queue {
    /// Up to `count` lifecycle events after stream id `after` (`"0"` for the oldest kept), each
    /// with its stream id; pass the last id back to read on. The stream keeps about
    /// [`with_events_max_len`](Queue::with_events_max_len) events.
    pub async fn events(
        &self,
        after: &str,
        count: usize,
    ) -> Result<Vec<(String, JobEvent)>, JobError> {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.keys.events)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(&mut self.conn.clone())
            .await?;
        reply
            .ids
            .into_iter()
            .map(|entry| {
                let fields: HashMap<String, String> = entry
                    .map
                    .iter()
                    .filter_map(|(k, v)| {
                        redis::from_redis_value_ref::<String>(v)
                            .ok()
                            .map(|v| (k.clone(), v))
                    })
                    .collect();
                let event = JobEvent::decode(&entry.id, &fields)?;
                Ok((entry.id, event))
            })
            .collect()
    }
}

impl JobEvent {
    fn decode(entry: &str, f: &HashMap<String, String>) -> Result<Self, JobError> {
        let text = |k: &str| f.get(k).cloned().unwrap_or_default();
        let json = |k: &str| -> Result<serde_json::Value, JobError> {
            serde_json::from_str(&text(k)).map_err(|e| JobError::Malformed {
                id: entry.to_owned(),
                reason: format!("event field {k}: {e}"),
            })
        };
        Ok(match f.get("event").map(String::as_str) {
            Some("added") => Self::Added {
                id: text("id"),
                name: text("name"),
            },
            Some("completed") => Self::Completed {
                id: text("id"),
                name: text("name"),
                result: json("returnvalue")?,
            },
            Some("retrying") => Self::Retrying {
                id: text("id"),
                reason: text("reason"),
                attempts_made: number(f, "attemptsMade"),
                delay_ms: f.get("delay").and_then(|d| d.parse().ok()).unwrap_or(0),
            },
            Some("stalled") => Self::Stalled {
                id: text("id"),
                attempts_made: number(f, "attemptsMade"),
            },
            Some("failed") => Self::Failed {
                id: text("id"),
                name: text("name"),
                reason: text("reason"),
                attempts_made: number(f, "attemptsMade"),
            },
            Some("progress") => Self::Progress {
                id: text("id"),
                progress: json("progress")?,
            },
            Some("paused") => Self::Paused,
            Some("resumed") => Self::Resumed,
            other => {
                return Err(JobError::Malformed {
                    id: entry.to_owned(),
                    reason: format!("unknown event {other:?}"),
                });
            }
        })
    }
}
