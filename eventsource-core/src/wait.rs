//! Request / response over the log: [`EventWaiter::wait_for_event`] waits for an event that
//! carries a correlation id and matches a filter (the seeds' `waitForEvent`, ADR-006).
//!
//! A caller issues a command with a correlation id of its own (a
//! [`CommandContext`](crate::CommandContext) with
//! [`with_correlation_id`](crate::CommandContext::with_correlation_id)); sagas and handlers
//! carry that id into every event they cause. The waiter then looks the id up in the store's
//! correlation index ([`EventStore::read_by_correlation`]) — every committed event with that id,
//! wherever it sits in the log — so an answer appended between issuing the command and starting
//! to wait, or before the command returned, is found by the first look: nothing is missed, and
//! no position has to be taken before the command. It looks again when an append in this
//! process wakes it ([`EventStore::append_notify`]) and at least every poll interval, for
//! appends by other processes (or inside another transaction).

use std::time::Duration;

use uuid::Uuid;

use crate::envelope::{RecordedEvent, TenantId};
use crate::store::{EventStore, StoreError};

/// Why [`EventWaiter::wait_for_event`] returned without an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// No event with the correlation id matched the filter before the timeout.
    #[error("no event correlated with {correlation_id} matched within {timeout:?}")]
    Timeout {
        /// The correlation id waited for.
        correlation_id: Uuid,
        /// How long the waiter waited.
        timeout: Duration,
    },
    /// Reading the store failed.
    #[error("reading the log while waiting for an event failed")]
    Store(#[source] StoreError),
}

impl WaitError {
    /// Whether the wait timed out.
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }
}

/// Waits for correlated events in one tenant's log; cheap to clone when the store is.
///
/// ```
/// use std::time::Duration;
///
/// use eventsource_core::{
///     EventStore, EventWaiter, ExpectedVersion, InMemoryEventStore, NewEvent, StreamId, TenantId,
/// };
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = InMemoryEventStore::new();
/// let waiter = EventWaiter::new(store.clone());
/// let request = uuid::Uuid::now_v7();
///
/// // A responder answers (here before the wait starts: it is found all the same).
/// let mut reply = NewEvent::new("embedding-generated", 1, serde_json::json!({ "dims": 3 }));
/// reply.metadata.correlation_id = Some(request);
/// let stream = StreamId::new(TenantId::default(), "embedding", "e-1");
/// store.append(&stream, ExpectedVersion::Any, vec![reply]).await?;
///
/// let event = waiter
///     .wait_for_event(request, |e| e.event_type == "embedding-generated", Duration::from_secs(30))
///     .await?;
/// assert_eq!(event.payload["dims"], 3);
///
/// let missing = waiter.wait_for_event(uuid::Uuid::now_v7(), |_| true, Duration::from_millis(10)).await;
/// assert!(missing.is_err_and(|e| e.is_timeout()));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct EventWaiter<S> {
    store: S,
    tenant: TenantId,
    poll: Duration,
}

impl<S: EventStore> EventWaiter<S> {
    /// A waiter on the default tenant's log of `store`, looking at least every 250 ms.
    pub fn new(store: S) -> Self {
        Self {
            store,
            tenant: TenantId::default(),
            poll: Duration::from_millis(250),
        }
    }

    /// Waits in `tenant`'s log.
    #[must_use]
    pub fn for_tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = tenant;
        self
    }

    /// Looks for the event at least this often (appends in this process wake the waiter at
    /// once when the store tells of them).
    #[must_use]
    pub fn with_poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// The first event, in log order, that carries `correlation_id` and matches `filter`,
    /// whether it was appended before the call or arrives within `timeout`.
    ///
    /// # Errors
    ///
    /// [`WaitError::Timeout`] when none matched in time; [`WaitError::Store`] when reading
    /// the store failed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads; dropping it stops waiting.
    #[tracing::instrument(name = "eventsource.wait_for_event", skip_all, fields(tenant = %self.tenant, %correlation_id))]
    pub async fn wait_for_event(
        &self,
        correlation_id: Uuid,
        filter: impl Fn(&RecordedEvent) -> bool + Send,
        timeout: Duration,
    ) -> Result<RecordedEvent, WaitError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let notify = self.store.append_notify();
        loop {
            // Listen before looking: an append committed while we look wakes the next wait.
            let notified = notify.as_ref().map(|n| n.notified());
            let mut notified = std::pin::pin!(notified);
            if let Some(n) = notified.as_mut().as_pin_mut() {
                n.enable();
            }
            let events = self
                .store
                .read_by_correlation(&self.tenant, correlation_id)
                .await
                .map_err(WaitError::Store)?;
            if let Some(event) = events.into_iter().find(|e| filter(e)) {
                return Ok(event);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(WaitError::Timeout {
                    correlation_id,
                    timeout,
                });
            }
            let sleep = tokio::time::sleep_until(deadline.min(now + self.poll));
            match notified.as_mut().as_pin_mut() {
                Some(n) => {
                    tokio::select! {
                        () = n => {}
                        () = sleep => {}
                    }
                }
                None => sleep.await,
            }
        }
    }
}
