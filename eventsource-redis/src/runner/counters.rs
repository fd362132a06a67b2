//! What a runner did, counted while it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::trim::TrimCounters;

/// Counters of what a runner did, readable while it runs.
#[derive(Debug, Default)]
pub struct RunnerCounters {
    pub(super) handled: AtomicU64,
    pub(super) failed_attempts: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) reclaimed: AtomicU64,
    pub(super) missing: AtomicU64,
    pub(super) refetched: AtomicU64,
    pub(super) blocking_connections: AtomicU64,
    pub(super) trim: Arc<TrimCounters>,
}

impl RunnerCounters {
    /// Entries handled successfully and acknowledged.
    #[must_use]
    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    /// Handler calls that failed.
    #[must_use]
    pub fn failed_attempts(&self) -> u64 {
        self.failed_attempts.load(Ordering::Relaxed)
    }

    /// Entries moved to the dead-letter stream.
    #[must_use]
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }

    /// Entries claimed from idle consumers (this one included).
    #[must_use]
    pub fn reclaimed(&self) -> u64 {
        self.reclaimed.load(Ordering::Relaxed)
    }

    /// Pending entries found deleted from their stream.
    #[must_use]
    pub fn missing(&self) -> u64 {
        self.missing.load(Ordering::Relaxed)
    }

    /// Missing entries refetched from the event store.
    #[must_use]
    pub fn refetched(&self) -> u64 {
        self.refetched.load(Ordering::Relaxed)
    }

    /// Blocking-read connections open now: at most
    /// [`RunnerOptions::with_max_blocking_reads`](crate::RunnerOptions::with_max_blocking_reads),
    /// 0 once the runner stopped.
    #[must_use]
    pub fn blocking_connections(&self) -> u64 {
        self.blocking_connections.load(Ordering::Relaxed)
    }

    /// Entries the runner's scheduled trimming removed from its streams
    /// ([`RunnerOptions::with_trim`](crate::RunnerOptions::with_trim)).
    #[must_use]
    pub fn trimmed(&self) -> u64 {
        self.trim.removed()
    }

    /// The scheduled trimming's own counters (passes, removed, failures).
    #[must_use]
    pub fn trim(&self) -> &TrimCounters {
        &self.trim
    }
}
