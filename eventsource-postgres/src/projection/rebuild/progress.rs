//! What a [`PgRebuild`](crate::PgRebuild) reports: its progress while it runs, and what it did.

use std::time::Duration;

use eventsource_core::LogPosition;

/// What a rebuild is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RebuildPhase {
    /// Taking the lease and preparing the new generation.
    Starting,
    /// Applying the log in batches.
    Filling,
    /// In the cutover's transaction.
    CuttingOver,
    /// Cut over: the new generation serves.
    Done,
}

/// A rebuild's progress, for the caller to render (a progress bar, a log line).
///
/// `processed` counts the events applied since this run started (a resumed rebuild does not
/// count what an earlier run applied); `total` is `processed` plus the events of the log after
/// the rebuild's checkpoint when last counted (at the start, and again when the fill reaches
/// the head), so it grows while writers append.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RebuildProgress {
    /// What the rebuild is doing.
    pub phase: RebuildPhase,
    /// The generation being built (0 while starting).
    pub generation: u64,
    /// Events applied by this run.
    pub processed: u64,
    /// Events this run has to apply, as last counted.
    pub total: u64,
    /// Events applied per second since this run started.
    pub events_per_second: f64,
    /// Time left at that rate, when known.
    pub eta: Option<Duration>,
}

impl RebuildProgress {
    pub(super) fn starting() -> Self {
        Self {
            phase: RebuildPhase::Starting,
            generation: 0,
            processed: 0,
            total: 0,
            events_per_second: 0.0,
            eta: None,
        }
    }

    /// `processed` over `total`, from 0 to 1 (1 when there is nothing to do).
    #[must_use]
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            return 1.0;
        }
        #[allow(clippy::cast_precision_loss, reason = "a ratio for display")]
        let fraction = self.processed as f64 / self.total as f64;
        fraction.min(1.0)
    }
}

/// What a completed rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RebuildReport {
    /// The generation that now serves.
    pub generation: u64,
    /// The log position it was complete up to at the cutover (`None`: an empty log); the live
    /// runner continues after it.
    pub cutover_position: Option<LogPosition>,
    /// Events applied by this run.
    pub processed: u64,
    /// How long this run took.
    pub elapsed: Duration,
}
