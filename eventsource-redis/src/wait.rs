//! Request / response over a Redis stream: [`RedisEventWaiter::wait_for_event`].

use std::time::Duration;

use eventsource_core::{LogPosition, RecordedEvent, StoreError, WaitError};
use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;
use redis::streams::{StreamReadOptions, StreamReadReply};
use uuid::Uuid;

use crate::codec;

/// Waits for a correlated event among the entries the relay publishes to one Redis stream
/// (the seeds' `waitForEvent(stream, type, correlationId, timeout)`); the counterpart of
/// [`eventsource_core::EventWaiter`], which reads the event store.
///
/// Entry ids are log positions, and an answer caused by a command is appended by a
/// transaction that starts after the command's committed: its position is above the
/// command's. Reading from the command's position (its [`Appended`](eventsource_core::Appended)
/// `last_position`) therefore misses no answer, however early the answer was published; pass
/// [`LogPosition::START`] to read the whole stream (as far as it is not trimmed) when the
/// position is unknown.
///
/// Reads block on the server (`XREAD BLOCK`) for at most the block interval (default 1 s), so
/// give the waiter a [`ConnectionManager`] of its own: a blocked read holds up other commands
/// multiplexed on the same connection.
///
/// ```no_run
/// use std::time::Duration;
///
/// use eventsource_core::LogPosition;
/// use eventsource_redis::{Keys, RedisEventWaiter};
///
/// # async fn run(conn: redis::aio::ConnectionManager, request: uuid::Uuid, after: LogPosition)
/// # -> Result<(), Box<dyn std::error::Error>> {
/// let stream = Keys::new("app").tenant_stream(&eventsource_core::TenantId::default());
/// let waiter = RedisEventWaiter::new(conn, stream);
/// let reply = waiter
///     .wait_for_event(after, request, |e| e.event_type == "payment-confirmed", Duration::from_secs(30))
///     .await?;
/// println!("confirmed at {}", reply.position);
/// # Ok(()) }
/// # fn main() { let _ = run; }
/// ```
#[derive(Clone)]
pub struct RedisEventWaiter {
    conn: ConnectionManager,
    stream: String,
    block: Duration,
}

impl std::fmt::Debug for RedisEventWaiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEventWaiter")
            .field("stream", &self.stream)
            .field("block", &self.block)
            .finish_non_exhaustive()
    }
}

impl RedisEventWaiter {
    /// A waiter reading the stream `stream` (a key from [`Keys`](crate::Keys)) through `conn`.
    #[must_use]
    pub fn new(conn: ConnectionManager, stream: impl Into<String>) -> Self {
        Self {
            conn,
            stream: stream.into(),
            block: Duration::from_secs(1),
        }
    }

    /// How long one read blocks on the server at most (default 1 s).
    #[must_use]
    pub fn with_block(mut self, block: Duration) -> Self {
        self.block = block;
        self
    }

    /// The first entry after `after` whose event carries `correlation_id` and matches
    /// `filter`, whether it was published before the call or arrives within `timeout`.
    /// Entries that do not decode are skipped.
    ///
    /// # Errors
    ///
    /// [`WaitError::Timeout`] when none matched in time; [`WaitError::Store`] (wrapping the
    /// Redis error as [`StoreError::Unavailable`]) when a read failed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    #[tracing::instrument(name = "eventsource.redis.wait_for_event", skip_all, fields(stream = %self.stream, %correlation_id))]
    pub async fn wait_for_event(
        &self,
        after: LogPosition,
        correlation_id: Uuid,
        filter: impl Fn(&RecordedEvent) -> bool + Send,
        timeout: Duration,
    ) -> Result<RecordedEvent, WaitError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut conn = self.conn.clone();
        let mut cursor = codec::entry_id(after);
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            // A zero BLOCK would block forever: the last look does not block.
            let block = remaining.min(self.block);
            let mut options = StreamReadOptions::default().count(100);
            if !block.is_zero() {
                let millis = usize::try_from(block.as_millis())
                    .unwrap_or(usize::MAX)
                    .max(1);
                options = options.block(millis);
            }
            let reply: Option<StreamReadReply> = conn
                .xread_options(&[&self.stream], &[&cursor], &options)
                .await
                .map_err(|e| WaitError::Store(StoreError::Unavailable(Box::new(e))))?;
            for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                cursor.clone_from(&entry.id);
                match codec::decode(&entry.map) {
                    Ok(event)
                        if event.metadata.correlation_id == Some(correlation_id)
                            && filter(&event) =>
                    {
                        return Ok(event);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(entry = %entry.id, error = %e, "entry skipped"),
                }
            }
            if remaining.is_zero() {
                return Err(WaitError::Timeout {
                    correlation_id,
                    timeout,
                });
            }
        }
    }
}
