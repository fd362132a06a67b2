//! Durable deadlines: [`DeadlineRunner`] and the event it appends.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::store::{DueDeadline, SagaStore};
use crate::envelope::{EventId, NewEvent, RecordedEvent, StreamId};
use crate::store::{EventStore, ExpectedVersion, StoreError};

/// Type name of the event a [`DeadlineRunner`] appends when a saga deadline falls due.
pub const DEADLINE_REACHED: &str = "saga-deadline-reached";

/// Aggregate type of the streams deadline events are appended to.
pub const DEADLINE_STREAM_TYPE: &str = "saga-deadline";

/// The payload of a [`DEADLINE_REACHED`] event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct DeadlineReached {
    /// The saga's [`Saga::NAME`](super::Saga::NAME).
    pub saga: String,
    /// The instance.
    pub instance: String,
    /// The deadline that fell due.
    pub due_at: DateTime<Utc>,
}

impl DeadlineReached {
    /// The deadline an event announces, if it is a [`DEADLINE_REACHED`] event.
    #[must_use]
    pub fn from_event(event: &RecordedEvent) -> Option<Self> {
        if event.event_type != DEADLINE_REACHED {
            return None;
        }
        serde_json::from_value(event.payload.clone()).ok()
    }
}

/// The event announcing `deadline` and the stream it goes to: `saga-deadline/<saga>/<instance>`
/// of the instance's tenant, with an id derived from the tenant, the saga, the instance and the
/// due instant, so appending it twice (two runners, a restart) stores it once, and the same
/// instance id with the same deadline in another tenant is another event.
///
/// Deadline runners of other backends build their event with it.
///
/// # Errors
///
/// [`StoreError::Backend`] if the payload does not serialize (it always does).
pub fn deadline_event(deadline: &DueDeadline) -> Result<(StreamId, NewEvent), StoreError> {
    let key = &deadline.key;
    let stream = StreamId::new(
        key.tenant().clone(),
        DEADLINE_STREAM_TYPE,
        format!("{}/{}", key.saga(), key.instance()),
    );
    // The tenant belongs in the id: event ids are unique across tenants, and without it the
    // same instance id and deadline in two tenants collide (the second never fires). Each part
    // is prefixed with its length, so parts holding `/` cannot shift into each other.
    let due = deadline.due_at.to_rfc3339();
    let mut id_key = String::new();
    for part in [key.tenant().as_str(), key.saga(), key.instance(), &due] {
        id_key.push_str(&part.len().to_string());
        id_key.push(':');
        id_key.push_str(part);
    }
    let payload = DeadlineReached {
        saga: key.saga().to_owned(),
        instance: key.instance().to_owned(),
        due_at: deadline.due_at,
    };
    let event = NewEvent::new(
        DEADLINE_REACHED,
        1,
        serde_json::to_value(&payload).map_err(|e| StoreError::Backend(Box::new(e)))?,
    )
    .with_event_id(EventId::from_uuid(Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        id_key.as_bytes(),
    )));
    Ok((stream, event))
}

/// Appends a [`DEADLINE_REACHED`] event for every saga deadline that falls due, then marks it
/// fired in the [`SagaStore`].
///
/// The event is built by [`deadline_event`]: its id is deterministic, so a deadline appended by
/// a runner that died before marking it, or by two runners at once, is stored once. Runs until
/// `shutdown` is cancelled; spawn it beside the saga's runner. Where the saga store and the
/// event store share a PostgreSQL database, `eventsource_postgres::PgDeadlineRunner` appends and
/// marks in one transaction instead.
#[derive(Debug)]
pub struct DeadlineRunner<T, S> {
    store: T,
    events: S,
    poll: Duration,
}

impl<T: SagaStore, S: EventStore> DeadlineRunner<T, S> {
    /// A runner checking `store` for due deadlines every 100 ms and appending to `events`.
    pub fn new(store: T, events: S) -> Self {
        Self {
            store,
            events,
            poll: Duration::from_millis(100),
        }
    }

    /// How often to look for due deadlines.
    #[must_use]
    pub fn with_poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Fires every deadline due at `now`; returns how many it fired.
    ///
    /// # Errors
    ///
    /// A storage failure; deadlines not yet marked fired are fired on the next call.
    pub async fn fire_due(&mut self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        const LIMIT: usize = 1_000;
        let mut fired = 0;
        loop {
            let due = self.store.due(now, LIMIT).await?;
            let page = due.len();
            for deadline in due {
                let (stream, event) = deadline_event(&deadline)?;
                self.events
                    .append(&stream, ExpectedVersion::Any, vec![event])
                    .await?;
                if self.store.mark_fired(&deadline).await? {
                    fired += 1;
                }
            }
            if page < LIMIT {
                return Ok(fired);
            }
        }
    }

    /// Fires due deadlines until `shutdown` is cancelled.
    ///
    /// # Errors
    ///
    /// A storage failure.
    ///
    /// # Cancel safety
    ///
    /// Cancellation is checked between polls.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), StoreError> {
        while !shutdown.is_cancelled() {
            self.fire_due(Utc::now()).await?;
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.poll) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::deadline_event;
    use crate::envelope::TenantId;
    use crate::saga::{DueDeadline, SagaKey};

    #[test]
    fn a_deadline_event_id_is_stable_and_per_tenant() {
        let due_at = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        let id = |tenant: &str| {
            let key = SagaKey::new(TenantId::new(tenant), "checkout", "order-1");
            deadline_event(&DueDeadline::new(key, due_at))
                .expect("event")
                .1
                .event_id
        };
        assert_eq!(id("acme"), id("acme"), "firing twice appends one event");
        assert_ne!(id("acme"), id("globex"), "another tenant, another event");
    }

    #[test]
    fn a_deadline_event_id_keeps_its_parts_apart() {
        let due_at = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        let id = |tenant: &str, instance: &str| {
            let key = SagaKey::new(TenantId::new(tenant), "s", instance);
            deadline_event(&DueDeadline::new(key, due_at))
                .expect("event")
                .1
                .event_id
        };
        // Joined by `/`, both would read `a/s/b/s/c`.
        assert_ne!(id("a", "b/s/c"), id("a/s/b", "c"));
    }
}
