//! Errors of the relay, the runners, the codec and the admin functions, and how handler
//! failures are put into words.

use eventsource_core::{LogPosition, StoreError, StreamId, Version};
use redis::RedisError;

/// Why a Redis-side operation (relay, admin, stats) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisStoreError {
    /// A Redis command failed (connection lost, timeout, server error).
    #[error("redis command failed")]
    Redis(#[source] RedisError),
    /// The event store or the checkpoint store failed.
    #[error("event store failed")]
    Store(#[source] StoreError),
    /// Redis refused to append an entry for a reason other than "already published".
    #[error("publishing entry {id} to {key} was refused: {reason}")]
    PublishRefused {
        /// The stream key.
        key: String,
        /// The entry id that was refused.
        id: String,
        /// Redis's message.
        reason: String,
    },
    /// The log gave a stream's event out of version order: version `version` of `stream` came
    /// right after `previous`, at `position`. The relay stops without publishing the batch
    /// (its checkpoint stays before it): a store that honours the core contract never does
    /// this, and no consumer could put the stream back in order.
    #[error(
        "the log gives version {version} of stream {stream} after version {previous} (at {position}); the relay refuses to publish it"
    )]
    OutOfOrder {
        /// The stream.
        stream: StreamId,
        /// The version the relay read last of that stream.
        previous: Version,
        /// The version the log gave next.
        version: Version,
        /// Where in the log.
        position: LogPosition,
    },
    /// Another relay instance holds the lease, or took it over while this one was publishing.
    #[error("relay lease {key} is held by another instance")]
    LeaseLost {
        /// The lease key.
        key: String,
    },
    /// Fewer replicas than [`RelayOptions::with_replicas`](crate::RelayOptions::with_replicas)
    /// asks for acknowledged a batch in time; its checkpoint did not move, the relay re-sends
    /// it.
    #[error("only {acknowledged} of {wanted} replicas acknowledged the batch in time")]
    NotReplicated {
        /// Replicas asked for.
        wanted: u32,
        /// Replicas that acknowledged (on a cluster, the fewest of any master).
        acknowledged: u64,
    },
    /// A dead letter asked for does not exist.
    #[error("no dead letter {id} in {key}")]
    NoSuchEntry {
        /// The dead-letter stream.
        key: String,
        /// The entry id.
        id: String,
    },
    /// The dead letter carries no fields of the original entry, so there is nothing to send
    /// back; the event can be read from the store by the dead letter's source id.
    #[error("dead letter {id} in {key} carries no event to requeue")]
    NothingToRequeue {
        /// The dead-letter stream.
        key: String,
        /// The dead letter's id.
        id: String,
    },
}

impl RedisStoreError {
    /// Whether retrying later may succeed: connection problems, timeouts, a busy or loading
    /// server, cluster redirections, an unavailable store.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Redis(e) => redis_retryable(e),
            Self::Store(e) => e.is_retryable(),
            Self::LeaseLost { .. } | Self::NotReplicated { .. } => true,
            Self::PublishRefused { .. }
            | Self::OutOfOrder { .. }
            | Self::NoSuchEntry { .. }
            | Self::NothingToRequeue { .. } => false,
        }
    }
}

impl From<RedisError> for RedisStoreError {
    fn from(e: RedisError) -> Self {
        Self::Redis(e)
    }
}

impl From<StoreError> for RedisStoreError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// Why a consumer runner stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// A Redis command failed in a way retrying did not fix.
    #[error("redis command failed")]
    Redis(#[source] RedisError),
    /// Refetching a deleted entry from the event store failed.
    #[error("event store failed")]
    Store(#[source] StoreError),
    /// The runner was configured with no stream to read.
    #[error("a runner needs at least one stream key")]
    NoStreams,
    /// On a Redis Cluster, this stream key and its dead-letter and requeue streams lie in
    /// different hash slots, so the scripts that touch two of them at once cannot run: the key
    /// needs a hash tag (`{...}`), as every key [`Keys`](crate::Keys) builds has.
    #[error(
        "stream key {key:?} has no hash tag: on a Redis Cluster its dead-letter and requeue streams would lie in other slots"
    )]
    SplitSlots {
        /// The stream key.
        key: String,
    },
}

impl RunnerError {
    /// Whether restarting the runner later may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Redis(e) => redis_retryable(e),
            Self::Store(e) => e.is_retryable(),
            Self::NoStreams | Self::SplitSlots { .. } => false,
        }
    }
}

impl From<RedisError> for RunnerError {
    fn from(e: RedisError) -> Self {
        Self::Redis(e)
    }
}

impl From<StoreError> for RunnerError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// Whether a Redis error is transient, by redis-rs's own predicates.
pub(crate) fn redis_retryable(e: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
            )
        )
}

/// Whether the error says the consumer group (or its stream) does not exist.
pub(crate) fn is_no_group(e: &RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

/// Why a stream entry is not a valid event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The entry lacks a field (or was deleted, leaving no fields at all).
    #[error("entry has no field `{0}`")]
    Missing(&'static str),
    /// A field holds something that does not parse.
    #[error("entry field `{field}` is invalid: {reason}")]
    Invalid {
        /// The field's name.
        field: &'static str,
        /// What did not parse.
        reason: String,
    },
}

/// "handler panicked: <message>" for a caught panic's payload (a `&str` or `String`; other
/// payloads read "a non-string payload").
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".to_owned());
    format!("handler panicked: {message}")
}

/// An error and its sources, `: `-separated (`outer: inner: root`).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
