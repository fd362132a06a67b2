//! Options of a job (priority, delay, attempts, backoff, retention) and of a worker.

use std::time::Duration;

use super::error::JobError;

/// The largest priority: scores stay exact in Redis's doubles (`priority * 2^32 + order`).
pub const MAX_PRIORITY: u32 = (1 << 21) - 1;

/// How long a failed job waits before its next attempt.
///
/// ```
/// # use eventsource_redis::jobs::Backoff;
/// # use std::time::Duration;
/// let backoff = Backoff::exponential(Duration::from_millis(100));
/// assert_eq!(backoff.delay(1), Duration::from_millis(100));
/// assert_eq!(backoff.delay(3), Duration::from_millis(400));
/// let jittered = Backoff::fixed(Duration::from_secs(1)).with_jitter(0.5);
/// assert!(jittered.delay(1) >= Duration::from_millis(500));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    kind: BackoffKind,
    delay: Duration,
    jitter: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackoffKind {
    Fixed,
    Exponential,
}

impl Default for Backoff {
    /// Retry at once.
    fn default() -> Self {
        Self::fixed(Duration::ZERO)
    }
}

impl Backoff {
    /// The same delay before every retry.
    #[must_use]
    pub fn fixed(delay: Duration) -> Self {
        Self {
            kind: BackoffKind::Fixed,
            delay,
            jitter: 0.0,
        }
    }

    /// `delay`, then twice, four times … as long before each further retry.
    #[must_use]
    pub fn exponential(delay: Duration) -> Self {
        Self {
            kind: BackoffKind::Exponential,
            delay,
            jitter: 0.0,
        }
    }

    /// Draws each delay uniformly from `[d * (1 - jitter), d]` (`jitter` clamped to `0..=1`), so
    /// jobs that failed together do not all retry at the same moment.
    #[must_use]
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        self
    }

    /// The delay before retry number `retry` (1 for the first retry).
    #[must_use]
    pub fn delay(&self, retry: u32) -> Duration {
        let bound = match self.kind {
            BackoffKind::Fixed => self.delay,
            BackoffKind::Exponential => self
                .delay
                .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1))),
        };
        if self.jitter > 0.0 {
            bound.mul_f64(1.0 - self.jitter * rand::random::<f64>())
        } else {
            bound
        }
    }

    pub(crate) fn encode(&self) -> [(&'static str, String); 3] {
        let kind = match self.kind {
            BackoffKind::Fixed => "fixed",
            BackoffKind::Exponential => "exponential",
        };
        [
            ("backoff", kind.to_owned()),
            ("backoffDelay", millis(self.delay).to_string()),
            ("backoffJitter", self.jitter.to_string()),
        ]
    }

    pub(crate) fn decode(kind: Option<&str>, delay: Option<&str>, jitter: Option<&str>) -> Self {
        let delay = Duration::from_millis(delay.and_then(|d| d.parse().ok()).unwrap_or(0));
        let base = match kind {
            Some("exponential") => Self::exponential(delay),
            _ => Self::fixed(delay),
        };
        base.with_jitter(jitter.and_then(|j| j.parse().ok()).unwrap_or(0.0))
    }
}

/// How a job is run: priority, delay, attempts, backoff, its id and how many finished jobs are
/// kept. A [`Queue`](super::Queue) applies its defaults to jobs added without options.
///
/// ```
/// # use eventsource_redis::jobs::{Backoff, JobOptions};
/// # use std::time::Duration;
/// let options = JobOptions::default()
///     .with_priority(1)
///     .with_attempts(3)
///     .with_backoff(Backoff::exponential(Duration::from_secs(2)).with_jitter(0.2))
///     .with_keep_completed(100)
///     .with_keep_failed(1_000);
/// assert_eq!(options.attempts(), 3);
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobOptions {
    pub(crate) job_id: Option<String>,
    pub(crate) priority: u32,
    pub(crate) delay: Duration,
    pub(crate) attempts: Option<u32>,
    pub(crate) backoff: Backoff,
    pub(crate) keep_completed: Option<u64>,
    pub(crate) keep_failed: Option<u64>,
}

impl JobOptions {
    /// The job's id. Adding a job whose id the queue still holds (waiting, running or kept
    /// after it finished) adds nothing and returns the existing id. Ids made only of digits are
    /// reserved for generated ids.
    #[must_use]
    pub fn with_job_id(mut self, id: impl Into<String>) -> Self {
        self.job_id = Some(id.into());
        self
    }

    /// Lower runs first (default 0, the highest); jobs of equal priority run in the order they
    /// were added. At most [`MAX_PRIORITY`].
    #[must_use]
    pub fn with_priority(mut self, priority: u32) -> Self {
        self.priority = priority;
        self
    }

    /// Runs the job no earlier than `delay` after it was added.
    #[must_use]
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Total attempts, the first included (default 1, at least 1). A worker that dies holding
    /// the job (its lock expired) spends an attempt too.
    #[must_use]
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = Some(attempts.max(1));
        self
    }

    /// The wait before each retry of a failed attempt (default: none).
    #[must_use]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Keep only the last `n` completed jobs (default: all); older ones are deleted when a job
    /// completes.
    #[must_use]
    pub fn with_keep_completed(mut self, n: u64) -> Self {
        self.keep_completed = Some(n);
        self
    }

    /// Keep only the last `n` failed jobs (default: all).
    #[must_use]
    pub fn with_keep_failed(mut self, n: u64) -> Self {
        self.keep_failed = Some(n);
        self
    }

    /// Total attempts.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempts.unwrap_or(1)
    }

    pub(crate) fn validate(&self) -> Result<(), JobError> {
        if self.priority > MAX_PRIORITY {
            return Err(JobError::InvalidOptions(format!(
                "priority {} is above {MAX_PRIORITY}",
                self.priority
            )));
        }
        if let Some(id) = &self.job_id
            && (id.is_empty() || id.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(JobError::InvalidOptions(format!(
                "job id {id:?} is empty or made of digits only, which generated ids use"
            )));
        }
        Ok(())
    }

    /// The fields stored in the job's hash.
    pub(crate) fn fields(&self) -> Vec<(&'static str, String)> {
        let keep = |n: Option<u64>| n.map_or_else(|| "-1".to_owned(), |n| n.to_string());
        let mut fields = vec![
            ("priority", self.priority.to_string()),
            ("attempts", self.attempts().to_string()),
            ("delay", millis(self.delay).to_string()),
            ("keepCompleted", keep(self.keep_completed)),
            ("keepFailed", keep(self.keep_failed)),
        ];
        fields.extend(self.backoff.encode());
        fields
    }
}

/// Tuning of a [`Worker`](super::Worker).
///
/// ```
/// # use eventsource_redis::jobs::WorkerOptions;
/// # use std::time::Duration;
/// let options = WorkerOptions::default()
///     .with_concurrency(5)
///     .with_lock_duration(Duration::from_secs(30));
/// assert_eq!(options.concurrency(), 5);
/// ```
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub(crate) concurrency: usize,
    pub(crate) lock_duration: Duration,
    pub(crate) stalled_interval: Duration,
    pub(crate) max_stalled: u32,
    pub(crate) max_idle_poll: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            concurrency: 1,
            lock_duration: Duration::from_secs(30),
            stalled_interval: Duration::from_secs(15),
            max_stalled: 1,
            max_idle_poll: Duration::from_millis(100),
        }
    }
}

impl WorkerOptions {
    /// Jobs run at the same time by this worker (default 1, at least 1).
    #[must_use]
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// How long a job's lock lives without renewal (default 30 s, at least 20 ms); the worker
    /// renews it every half of this while the job runs. A job whose worker died runs again
    /// once its lock expired and a worker checked for stalled jobs.
    #[must_use]
    pub fn with_lock_duration(mut self, lock: Duration) -> Self {
        self.lock_duration = lock.max(Duration::from_millis(20));
        self
    }

    /// How often the worker looks for jobs whose lock expired (default 15 s).
    #[must_use]
    pub fn with_stalled_interval(mut self, interval: Duration) -> Self {
        self.stalled_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// How many times a job may stall (its lock expired before it finished) and still run
    /// again (default 1, as BullMQ's `maxStalledCount`); the next stall fails it with "job
    /// stalled more than N times". Stalls spend no attempt: the reply handing a job to a worker
    /// can be lost before its handler starts. 0 fails a job at its first stall.
    #[must_use]
    pub fn with_max_stalled(mut self, max_stalled: u32) -> Self {
        self.max_stalled = max_stalled;
        self
    }

    /// Longest wait between two polls of an empty queue (default 100 ms); the wait doubles
    /// from 1 ms up to this bound, and is cut short when a delayed job falls due.
    #[must_use]
    pub fn with_max_idle_poll(mut self, poll: Duration) -> Self {
        self.max_idle_poll = poll.max(Duration::from_millis(1));
        self
    }

    /// Jobs run at the same time.
    #[must_use]
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
