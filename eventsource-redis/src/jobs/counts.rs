//! How many jobs are in each state.

use super::error::JobError;
use super::queue::Queue;

/// Jobs per state, read in one atomic step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobCounts {
    /// Ready to run.
    pub waiting: u64,
    /// Held by workers.
    pub active: u64,
    /// Waiting for a delay or a retry's backoff.
    pub delayed: u64,
    /// Completed and kept.
    pub completed: u64,
    /// Failed and kept.
    pub failed: u64,
}

impl Queue {
    /// Counts of waiting, active, delayed, completed and failed jobs (one `MULTI`, so the
    /// counts are of one moment).
    pub async fn counts(&self) -> Result<JobCounts, JobError> {
        let k = &self.keys;
        let (waiting, active, delayed, completed, failed): (u64, u64, u64, u64, u64) =
            redis::pipe()
                .atomic()
                .zcard(&k.wait)
                .zcard(&k.active)
                .zcard(&k.delayed)
                .zcard(&k.completed)
                .zcard(&k.failed)
                .query_async(&mut self.conn.clone())
                .await?;
        Ok(JobCounts {
            waiting,
            active,
            delayed,
            completed,
            failed,
        })
    }
}
