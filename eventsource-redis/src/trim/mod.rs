//! Trimming streams on a schedule (ADR 0032).
//!
//! - `floor`: one trim of one stream, by `MINID` below the slowest consumer group, lowered by
//!   the retention;
//! - `options`: the interval and the retention;
//! - here, [`Trimmer`]: passes over a set of streams on an interval, and what they counted.

mod floor;
mod options;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

pub use floor::{Trimmed, trim, trim_with_retention};
pub use options::TrimOptions;

use crate::backoff::sleep_or_cancel;
use crate::connection::RedisConnection;

/// Counters of what a [`Trimmer`] did, readable while it runs.
#[derive(Debug, Default)]
pub struct TrimCounters {
    pub(crate) passes: AtomicU64,
    pub(crate) removed: AtomicU64,
    pub(crate) failures: AtomicU64,
}

impl TrimCounters {
    /// Passes over every stream completed.
    #[must_use]
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::Relaxed)
    }

    /// Entries removed.
    #[must_use]
    pub fn removed(&self) -> u64 {
        self.removed.load(Ordering::Relaxed)
    }

    /// Trims of one stream that failed (retried at the next pass).
    #[must_use]
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// Trims a set of streams on an interval, never past an entry a consumer group still needs.
///
/// Each pass calls [`trim_with_retention`] on every stream: `MINID` below the oldest entry
/// some group has not acknowledged (or not yet read), and below everything recorded within
/// the [retention](TrimOptions::with_retention). A stream without consumer groups is never
/// trimmed: the relay writes streams before any runner exists, and a group created later that
/// starts from the beginning must find every event. Dead-letter streams are never trimmed.
///
/// A [`ConsumerRunner`](crate::ConsumerRunner) runs one over its streams by default
/// ([`RunnerOptions::with_trim`](crate::RunnerOptions::with_trim)); run a `Trimmer` yourself
/// for streams no runner of yours reads. Several trimmers on one stream are harmless (each
/// trim is one `XTRIM`). Every command names one key, so it works the same on a Redis Cluster.
///
/// A group created *while* a pass runs, starting at `0`, may find entries gone that were
/// older than the retention; create groups before entries age out, or start them later.
///
/// ```no_run
/// # use eventsource_redis::{Keys, RedisConnection, TrimOptions, Trimmer};
/// # use tokio_util::sync::CancellationToken;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let conn = RedisConnection::open("redis://127.0.0.1/").await?;
/// let stream = Keys::default().tenant_stream(&"acme".into());
/// let trimmer = Trimmer::new(conn, [stream], TrimOptions::default());
/// trimmer.run(CancellationToken::new()).await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Trimmer {
    conn: RedisConnection,
    streams: Vec<String>,
    options: TrimOptions,
    own_group: Option<String>,
    counters: Arc<TrimCounters>,
}

impl Trimmer {
    /// A trimmer of `streams`, not started.
    pub fn new(
        conn: impl Into<RedisConnection>,
        streams: impl IntoIterator<Item = impl Into<String>>,
        options: TrimOptions,
    ) -> Self {
        Self {
            conn: conn.into(),
            streams: streams.into_iter().map(Into::into).collect(),
            options,
            own_group: None,
            counters: Arc::default(),
        }
    }

    /// Skips a stream until `group` exists on it: a runner's trimmer must not trim before its
    /// own group is there to hold the floor.
    pub(crate) fn for_group(mut self, group: &str, counters: Arc<TrimCounters>) -> Self {
        self.own_group = Some(group.to_owned());
        self.counters = counters;
        self
    }

    /// The trimmer's counters; clone the `Arc` before [`run`](Self::run) to watch them.
    #[must_use]
    pub fn counters(&self) -> Arc<TrimCounters> {
        Arc::clone(&self.counters)
    }

    /// One pass over every stream; returns the entries removed. A stream that fails is
    /// logged, counted in [`TrimCounters::failures`] and skipped, and the pass goes on.
    pub async fn trim_once(&self) -> u64 {
        let mut conn = self.conn.clone();
        let mut removed = 0;
        for key in &self.streams {
            match floor::trim_key(
                &mut conn,
                key,
                self.options.retention,
                self.own_group.as_deref(),
            )
            .await
            {
                Ok(trimmed) => removed += trimmed.removed,
                Err(e) => {
                    self.counters.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(stream = %key, error = %e, "trimming failed; retried next pass");
                }
            }
        }
        self.counters.removed.fetch_add(removed, Ordering::Relaxed);
        self.counters.passes.fetch_add(1, Ordering::Relaxed);
        removed
    }

    /// Runs a pass every [interval](TrimOptions::with_interval), the first one interval after
    /// the start, until `shutdown` is cancelled. Failures never stop it (see
    /// [`trim_once`](Self::trim_once)).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping it mid-pass at worst leaves a stream untrimmed until the next run.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            sleep_or_cancel(&shutdown, self.options.interval).await;
            if shutdown.is_cancelled() {
                return;
            }
            self.trim_once().await;
        }
    }
}
