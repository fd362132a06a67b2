//! Errors of the job queue.

use redis::RedisError;

/// Why a queue or worker operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// A Redis command failed (connection lost, timeout, server error).
    #[error("redis command failed")]
    Redis(#[source] RedisError),
    /// The job's options cannot be honoured.
    #[error("invalid job options: {0}")]
    InvalidOptions(String),
    /// The job is no longer held by this attempt: its lock expired and the job was taken back
    /// (it runs again or failed), so this attempt's progress and result are refused.
    #[error("job {id} is no longer held by this worker: its lock expired")]
    LockLost {
        /// The job id.
        id: String,
    },
    /// A job hash or event in Redis is not what this crate writes.
    #[error("malformed job {id}: {reason}")]
    Malformed {
        /// The job id (or event id).
        id: String,
        /// What is wrong.
        reason: String,
    },
}

impl JobError {
    /// Whether retrying later may succeed (connection problems, timeouts, a busy server).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Redis(e) => crate::error::redis_retryable(e),
            Self::InvalidOptions(_) | Self::LockLost { .. } | Self::Malformed { .. } => false,
        }
    }
}

impl From<RedisError> for JobError {
    fn from(e: RedisError) -> Self {
        Self::Redis(e)
    }
}
