//! The queue: adding jobs, pausing, looking a job up.

use std::collections::HashMap;
use std::sync::Arc;

use redis::aio::ConnectionManager;

use super::error::JobError;
use super::options::{JobOptions, millis};
use super::scripts;
use crate::keys::Keys;

/// Every key of one queue, all under the queue's hash tag.
#[derive(Debug)]
pub(crate) struct QueueKeys {
    pub(crate) front: String,
    pub(crate) id: String,
    pub(crate) wait: String,
    pub(crate) delayed: String,
    pub(crate) active: String,
    pub(crate) completed: String,
    pub(crate) failed: String,
    pub(crate) meta: String,
    pub(crate) events: String,
}

impl QueueKeys {
    fn new(front: String) -> Self {
        let key = |suffix: &str| format!("{front}{suffix}");
        Self {
            id: key("id"),
            wait: key("wait"),
            delayed: key("delayed"),
            active: key("active"),
            completed: key("completed"),
            failed: key("failed"),
            meta: key("meta"),
            events: key("events"),
            front,
        }
    }

    pub(crate) fn job(&self, id: &str) -> String {
        format!("{}job:{id}", self.front)
    }
}

/// A job queue on Redis, BullMQ's model: jobs wait (by priority, then in the order added), are
/// delayed, run under a lock that expires if their worker dies, and end completed or failed.
/// Every state transition is one Lua script, so it happens entirely or not at all.
///
/// Cheap to clone; clones share the connection.
///
/// ```no_run
/// # use eventsource_redis::jobs::{JobOptions, Queue};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let conn = redis::Client::open("redis://127.0.0.1/")?.get_connection_manager().await?;
/// let queue = Queue::new(conn, "analysis")
///     .with_default_options(JobOptions::default().with_attempts(3).with_keep_completed(100));
/// let added = queue
///     .add("run-analysis", serde_json::json!({ "repository": 42 }))
///     .await?;
/// let info = queue.job(&added.id).await?.expect("just added");
/// assert_eq!(info.name, "run-analysis");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Queue {
    pub(crate) conn: ConnectionManager,
    pub(crate) name: Arc<str>,
    pub(crate) keys: Arc<QueueKeys>,
    pub(crate) defaults: Arc<JobOptions>,
    pub(crate) events_max_len: u64,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name)
            .field("front", &self.keys.front)
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

/// What [`Queue::add`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Added {
    /// The job's id: generated, or the one given.
    pub id: String,
    /// False when a job with the given id already existed and nothing was added.
    pub created: bool,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobState {
    /// Ready to run.
    Waiting,
    /// Waiting for its delay (or a retry's backoff) to end.
    Delayed,
    /// Held by a worker.
    Active,
    /// Done; its handler's result is kept.
    Completed,
    /// Out of attempts; the last error is kept.
    Failed,
}

/// A job as stored, from [`Queue::job`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct JobInfo {
    /// The id.
    pub id: String,
    /// The name given to [`Queue::add`].
    pub name: String,
    /// The data given to [`Queue::add`].
    pub data: serde_json::Value,
    /// The state.
    pub state: JobState,
    /// Attempts finished so far (succeeded, failed or stalled).
    pub attempts_made: u32,
    /// Attempts allowed.
    pub attempts: u32,
    /// The last progress reported, if any.
    pub progress: Option<serde_json::Value>,
    /// The handler's result, once completed.
    pub return_value: Option<serde_json::Value>,
    /// The last attempt's error, if an attempt failed.
    pub failed_reason: Option<String>,
}

impl Queue {
    /// The queue `name` under the default key prefix, with default job options.
    #[must_use]
    pub fn new(conn: ConnectionManager, name: &str) -> Self {
        Self::with_keys(conn, name, &Keys::default())
    }

    /// The queue `name` under the prefix of `keys` (tests use a unique prefix each).
    #[must_use]
    pub fn with_keys(conn: ConnectionManager, name: &str, keys: &Keys) -> Self {
        Self {
            conn,
            name: name.into(),
            keys: Arc::new(QueueKeys::new(keys.job_queue(name))),
            defaults: Arc::new(JobOptions::default()),
            events_max_len: 10_000,
        }
    }

    /// The options of jobs added with [`add`](Self::add).
    #[must_use]
    pub fn with_default_options(mut self, options: JobOptions) -> Self {
        self.defaults = Arc::new(options);
        self
    }

    /// About how many lifecycle events the queue's event stream keeps (default 10,000; 0 writes
    /// none). See [`Queue::events`].
    #[must_use]
    pub fn with_events_max_len(mut self, max_len: u64) -> Self {
        self.events_max_len = max_len;
        self
    }

    /// The queue's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds a job with the queue's default options.
    pub async fn add(&self, name: &str, data: serde_json::Value) -> Result<Added, JobError> {
        let defaults = Arc::clone(&self.defaults);
        self.add_with(name, data, &defaults).await
    }

    /// Adds a job with `options`. With a job id the queue still holds, adds nothing and returns
    /// that id with `created: false`.
    pub async fn add_with(
        &self,
        name: &str,
        data: serde_json::Value,
        options: &JobOptions,
    ) -> Result<Added, JobError> {
        options.validate()?;
        let mut invocation = scripts::ADD.prepare_invoke();
        invocation
            .key(&self.keys.id)
            .key(&self.keys.wait)
            .key(&self.keys.delayed)
            .key(&self.keys.events)
            .arg(&self.keys.front)
            .arg(options.job_id.as_deref().unwrap_or(""))
            .arg(self.events_max_len)
            .arg(millis(options.delay))
            .arg("name")
            .arg(name)
            .arg("data")
            .arg(data.to_string());
        for (field, value) in options.fields() {
            invocation.arg(field).arg(value);
        }
        let (created, id): (i64, String) = invocation.invoke_async(&mut self.conn.clone()).await?;
        Ok(Added {
            id,
            created: created == 1,
        })
    }

    /// Stops workers from taking new jobs (running ones finish); jobs can still be added.
    pub async fn pause(&self) -> Result<(), JobError> {
        self.set_paused(true).await
    }

    /// Lets workers take jobs again.
    pub async fn resume(&self) -> Result<(), JobError> {
        self.set_paused(false).await
    }

    /// Whether the queue is paused.
    pub async fn is_paused(&self) -> Result<bool, JobError> {
        let paused: Option<String> =
            redis::AsyncCommands::hget(&mut self.conn.clone(), &self.keys.meta, "paused").await?;
        Ok(paused.as_deref() == Some("1"))
    }

    async fn set_paused(&self, paused: bool) -> Result<(), JobError> {
        let _: i64 = scripts::PAUSE
            .key(&self.keys.meta)
            .key(&self.keys.events)
            .arg(if paused { "1" } else { "0" })
            .arg(self.events_max_len)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// The job `id`, or `None` if the queue holds no such job (never added, or removed by
    /// retention).
    pub async fn job(&self, id: &str) -> Result<Option<JobInfo>, JobError> {
        let fields: HashMap<String, String> =
            redis::AsyncCommands::hgetall(&mut self.conn.clone(), self.keys.job(id)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        JobInfo::decode(id, &fields).map(Some)
    }
}

impl JobInfo {
    fn decode(id: &str, fields: &HashMap<String, String>) -> Result<Self, JobError> {
        let malformed = |reason: String| JobError::Malformed {
            id: id.to_owned(),
            reason,
        };
        let state = match fields.get("state").map(String::as_str) {
            Some("wait") => JobState::Waiting,
            Some("delayed") => JobState::Delayed,
            Some("active") => JobState::Active,
            Some("completed") => JobState::Completed,
            Some("failed") => JobState::Failed,
            other => return Err(malformed(format!("unknown state {other:?}"))),
        };
        let json = |field: &str| -> Result<Option<serde_json::Value>, JobError> {
            fields
                .get(field)
                .map(|raw| serde_json::from_str(raw))
                .transpose()
                .map_err(|e| malformed(format!("field {field}: {e}")))
        };
        Ok(Self {
            id: id.to_owned(),
            name: fields.get("name").cloned().unwrap_or_default(),
            data: json("data")?.unwrap_or(serde_json::Value::Null),
            state,
            attempts_made: number(fields, "attemptsMade"),
            attempts: number(fields, "attempts").max(1),
            progress: json("progress")?,
            return_value: json("returnvalue")?,
            failed_reason: fields.get("failedReason").cloned(),
        })
    }
}

pub(crate) fn number(fields: &HashMap<String, String>, field: &str) -> u32 {
    fields.get(field).and_then(|v| v.parse().ok()).unwrap_or(0)
}
