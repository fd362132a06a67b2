//! Projections: read models folded from the global log, with a catch-up runner.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::checkpoint::CheckpointStore;
use crate::envelope::{LogPosition, RecordedEvent};
use crate::store::{EventStore, LogFilter, StoreError};

/// A read model built from the global log.
///
/// Projections see every event in log order. When the read model and the checkpoint live in
/// different places (as with [`ProjectionRunner`] over an in-memory read model) delivery after
/// a crash is at-least-once, so `apply` should be idempotent — for example by skipping events at
/// or below a position it already recorded. Backends that can store the checkpoint in the read
/// model's own transaction (PostgreSQL) give exactly-once effects.
pub trait Projection: Send {
    /// Why applying an event failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The checkpoint name; stable across restarts.
    fn name(&self) -> &str;

    /// Folds one event into the read model.
    fn apply(
        &mut self,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Why a [`ProjectionRunner`] stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError<E: std::error::Error + 'static> {
    /// Reading the log or the checkpoint failed.
    #[error("projection storage failed")]
    Store(#[from] StoreError),
    /// The projection rejected an event; its checkpoint stays before the event.
    #[error("projection failed at {position}")]
    Apply {
        /// The event's position.
        position: LogPosition,
        /// The projection's error.
        #[source]
        source: E,
    },
}

/// How far a [`ProjectionRunner::rebuild`] has come.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct RebuildProgress {
    /// Events applied to the new generation so far.
    pub processed: u64,
    /// Events to apply in all (counted when the rebuild started; appends during the rebuild
    /// are caught up afterwards by the runner).
    pub total: u64,
    /// Events per second since the rebuild started.
    pub rate: f64,
    /// Estimated time left at the current rate.
    pub eta: Option<Duration>,
}

impl RebuildProgress {
    fn at(processed: u64, total: u64, started: Instant) -> Self {
        let elapsed = started.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)] // a rate needs no more than f64's 52 bits
        let rate = if elapsed > 0.0 {
            processed as f64 / elapsed
        } else {
            0.0
        };
        #[allow(clippy::cast_precision_loss)]
        let eta = (rate > 0.0)
            .then(|| Duration::from_secs_f64(total.saturating_sub(processed) as f64 / rate));
        Self {
            processed,
            total,
            rate,
            eta,
        }
    }
}

/// Feeds a [`Projection`] from an event store's log, saving its checkpoint after each batch.
///
/// Polls adaptively: at once after a full batch, otherwise after the store's local append
/// notification or `idle_poll`, whichever comes first.
#[derive(Debug)]
pub struct ProjectionRunner<S, C, P> {
    store: S,
    checkpoints: C,
    projection: P,
    filter: LogFilter,
    batch_size: usize,
    idle_poll: Duration,
}

impl<S: EventStore, C: CheckpointStore, P: Projection> ProjectionRunner<S, C, P> {
    /// A runner reading every tenant's events in batches of 500.
    pub fn new(store: S, checkpoints: C, projection: P) -> Self {
        Self {
            store,
            checkpoints,
            projection,
            filter: LogFilter::all(),
            batch_size: 500,
            idle_poll: Duration::from_millis(250),
        }
    }

    /// Reads only events `filter` admits.
    #[must_use]
    pub fn with_filter(mut self, filter: LogFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Events per read.
    #[must_use]
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Longest wait between polls when the log is idle.
    #[must_use]
    pub fn with_idle_poll(mut self, idle_poll: Duration) -> Self {
        self.idle_poll = idle_poll;
        self
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// Processes everything up to the current end of the log; returns how many events it applied.
    ///
    /// # Errors
    ///
    /// A storage failure, a checkpoint moved by another instance, or the projection's error.
    pub async fn catch_up(&mut self) -> Result<u64, ProjectionError<P::Error>> {
        let mut applied = 0;
        loop {
            let n = self.step().await?;
            applied += n as u64;
            if n < self.batch_size {
                return Ok(applied);
            }
        }
    }

    /// Runs until `shutdown` is cancelled, then returns the projection.
    ///
    /// # Errors
    ///
    /// As [`catch_up`](Self::catch_up).
    ///
    /// # Cancel safety
    ///
    /// Cancellation through `shutdown` is checked between batches: the batch in flight is
    /// applied and checkpointed first.
    pub async fn run(
        mut self,
        shutdown: CancellationToken,
    ) -> Result<P, ProjectionError<P::Error>> {
        let notify = self.store.append_notify();
        while !shutdown.is_cancelled() {
            // Register for the wake-up before reading, so an append that lands between the read
            // and the wait is not missed.
            let notified = notify.as_ref().map(|n| n.notified());
            let mut notified = std::pin::pin!(notified);
            if let Some(n) = notified.as_mut().as_pin_mut() {
                n.enable();
            }
            let n = self.step().await?;
            if n == self.batch_size {
                continue;
            }
            let wake = async {
                match notified.as_mut().as_pin_mut() {
                    Some(n) => n.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = wake => {}
                () = tokio::time::sleep(self.idle_poll) => {}
            }
        }
        Ok(self.projection)
    }

    /// Rebuilds the read model by replay: fills `fresh` from the start of the log in large
    /// batches, reporting progress after each batch, then swaps it in and moves the checkpoint
    /// to where the rebuild stopped. Returns the replaced projection. The current projection is
    /// untouched until the swap, so a read model that can serve while a new generation is
    /// filled (a second table, say) keeps serving.
    ///
    /// A rebuilt projection must not have side effects: it sees every event again. Sagas are
    /// never rebuilt by replay.
    ///
    /// # Errors
    ///
    /// As [`catch_up`](Self::catch_up); on error nothing was swapped.
    pub async fn rebuild(
        &mut self,
        mut fresh: P,
        mut progress: impl FnMut(&RebuildProgress),
    ) -> Result<P, ProjectionError<P::Error>> {
        let name = self.projection.name().to_owned();
        let total = self
            .store
            .count_after(LogPosition::START, &self.filter)
            .await?;
        let started = Instant::now();
        let batch_size = self.batch_size.max(5_000);
        let mut after = LogPosition::START;
        let mut processed = 0;
        loop {
            let batch = self.store.read_all(after, batch_size, &self.filter).await?;
            for event in &batch {
                fresh
                    .apply(event)
                    .await
                    .map_err(|source| ProjectionError::Apply {
                        position: event.position,
                        source,
                    })?;
            }
            processed += batch.len() as u64;
            progress(&RebuildProgress::at(
                processed,
                total.max(processed),
                started,
            ));
            match batch.last() {
                Some(last) if batch.len() == batch_size => after = last.position,
                Some(last) => {
                    after = last.position;
                    break;
                }
                None => break,
            }
        }
        let stored = self.checkpoints.load(&name).await?;
        if after != LogPosition::START || stored.is_some() {
            self.checkpoints.save(&name, stored, after).await?;
        }
        Ok(std::mem::replace(&mut self.projection, fresh))
    }

    async fn step(&mut self) -> Result<usize, ProjectionError<P::Error>> {
        let name = self.projection.name().to_owned();
        let checkpoint = self.checkpoints.load(&name).await?;
        let after = checkpoint.unwrap_or(LogPosition::START);
        let batch = self
            .store
            .read_all(after, self.batch_size, &self.filter)
            .await?;
        let Some(last) = batch.last().map(|e| e.position) else {
            return Ok(0);
        };
        for event in &batch {
            self.projection
                .apply(event)
                .await
                .map_err(|source| ProjectionError::Apply {
                    position: event.position,
                    source,
                })?;
        }
        self.checkpoints.save(&name, checkpoint, last).await?;
        Ok(batch.len())
    }
}
