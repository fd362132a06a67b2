//! Sagas (process managers): react to events, keep state, issue commands exactly once.
//!
//! A saga instance is chosen per event by [`Saga::correlate`]. [`SagaHandler`] loads the
//! instance's state, skips the event if the instance already handled it (redelivery is a
//! no-op), lets the saga react, dispatches the commands it returns, then stores the new state
//! with an optimistic version and the event's position. Commands carry the event's correlation
//! id, the event as causation, and event ids derived from the saga instance and the event, so a
//! command re-dispatched after a crash appends nothing twice.
//!
//! `SagaHandler` is an [`EventHandler`]: run it with any runner (a catch-up loop, a Redis
//! consumer group). Sagas are never rebuilt by replay.
//!
//! **Timeouts** are durable: after each reaction the saga states its next deadline
//! ([`Saga::deadline`]), which is stored with its state. A [`DeadlineRunner`] appends a
//! [`DEADLINE_REACHED`] event for each deadline that falls due (with a deterministic id, so
//! firing twice appends once); the saga receives it like any other event, on the instance it
//! belongs to, and reacts — typically with compensating commands. A deadline the saga moved or
//! cleared before it fired is not delivered.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::envelope::{EventId, LogPosition, NewEvent, RecordedEvent, StreamId, TenantId};
use crate::handler::EventHandler;
use crate::repository::CommandContext;
use crate::store::{EventStore, ExpectedVersion, StoreError};

/// Type name of the event a [`DeadlineRunner`] appends when a saga deadline falls due.
pub const DEADLINE_REACHED: &str = "saga-deadline-reached";

/// Aggregate type of the streams deadline events are appended to.
pub const DEADLINE_STREAM_TYPE: &str = "saga-deadline";

/// A process manager.
pub trait Saga: Send + Sync + 'static {
    /// Stable name; part of state keys and derived event ids.
    const NAME: &'static str;
    /// Per-instance state.
    type State: Default + Serialize + DeserializeOwned + Send + Sync;
    /// What the saga asks others to do.
    type Command: Send + Sync;
    /// Why reacting failed (the event is retried, then dead-lettered, by the runner).
    type Error: std::error::Error + Send + Sync + 'static;

    /// The instance an event belongs to, or `None` if the saga ignores it. Deadline events are
    /// routed to their instance without asking.
    fn correlate(&self, event: &RecordedEvent) -> Option<String>;

    /// Updates `state` for `event` and returns the commands to issue.
    ///
    /// # Errors
    ///
    /// The saga's error; state changes are discarded and the event will be delivered again.
    fn react(
        &self,
        state: &mut Self::State,
        event: &RecordedEvent,
    ) -> Result<Vec<Self::Command>, Self::Error>;

    /// When the instance wants a [`DEADLINE_REACHED`] event if nothing else happens first, given
    /// its state after a reaction; `None` (the default) means no deadline, which also cancels a
    /// pending one. Returning the deadline that just fired consumes it.
    fn deadline(&self, state: &Self::State) -> Option<DateTime<Utc>> {
        let _ = state;
        None
    }

    /// Whether `error`, returned by [`react`](Self::react), recurs on every delivery (an event
    /// that does not decode, say); [`SagaHandler`] then reports it as permanent and runners
    /// dead-letter the event at once. The default treats every error as transient.
    fn is_permanent(&self, error: &Self::Error) -> bool {
        let _ = error;
        false
    }
}

/// The payload of a [`DEADLINE_REACHED`] event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct DeadlineReached {
    /// The saga's [`Saga::NAME`].
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

/// Sends a saga's commands to their aggregates (usually through a [`Repository`](crate::Repository)).
pub trait CommandDispatcher<C>: Send + Sync {
    /// Why a command could not be dispatched.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Dispatches `command` with `ctx`, which carries correlation, causation and deterministic
    /// event ids: pass it to [`Repository::execute_with`](crate::Repository::execute_with).
    fn dispatch(
        &self,
        command: C,
        ctx: &CommandContext,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// A saga instance's stored state.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SagaState {
    /// The state as JSON.
    pub state: serde_json::Value,
    /// Optimistic version: how many events the instance handled.
    pub version: u64,
    /// Position of the last event handled.
    pub last_position: LogPosition,
    /// The tenant of the events the instance handles (where its deadline events go).
    pub tenant: TenantId,
    /// The pending deadline, if any.
    pub deadline: Option<DateTime<Utc>>,
}

/// A deadline that fell due, as [`SagaStore::due`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DueDeadline {
    /// The saga's name.
    pub saga: String,
    /// The instance.
    pub instance: String,
    /// The instance's tenant.
    pub tenant: TenantId,
    /// When it fell due.
    pub due_at: DateTime<Utc>,
}

/// Storage for saga state with optimistic versions.
pub trait SagaStore: Send + Sync {
    /// The instance's state, if it handled anything yet.
    fn load(
        &self,
        saga: &str,
        instance: &str,
    ) -> impl Future<Output = Result<Option<SagaState>, StoreError>> + Send;

    /// Stores `state` if the stored version is still `expected` (0 = no state yet).
    ///
    /// # Errors
    ///
    /// [`StoreError::Conflict`]-like races are reported as [`StoreError::CheckpointConflict`]
    /// with the saga key as name.
    fn save(
        &self,
        saga: &str,
        instance: &str,
        expected: u64,
        state: SagaState,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Up to `limit` pending deadlines at or before `now`, earliest first.
    fn due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DueDeadline>, StoreError>> + Send;
}

/// A [`SagaStore`] in process memory.
#[derive(Debug, Clone, Default)]
pub struct InMemorySagaStore {
    states: Arc<Mutex<HashMap<(String, String), SagaState>>>,
}

impl InMemorySagaStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

impl SagaStore for InMemorySagaStore {
    async fn load(&self, saga: &str, instance: &str) -> Result<Option<SagaState>, StoreError> {
        let states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(states.get(&(saga.to_owned(), instance.to_owned())).cloned())
    }

    async fn save(
        &self,
        saga: &str,
        instance: &str,
        expected: u64,
        state: SagaState,
    ) -> Result<(), StoreError> {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (saga.to_owned(), instance.to_owned());
        let actual = states.get(&key).map(|s| s.version);
        if actual.unwrap_or(0) != expected {
            return Err(StoreError::CheckpointConflict {
                name: format!("{saga}/{instance}"),
                expected: None,
                actual: states.get(&key).map(|s| s.last_position),
            });
        }
        states.insert(key, state);
        Ok(())
    }

    async fn due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<DueDeadline>, StoreError> {
        let states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        let mut due: Vec<DueDeadline> = states
            .iter()
            .filter_map(|((saga, instance), s)| {
                let due_at = s.deadline.filter(|d| *d <= now)?;
                Some(DueDeadline {
                    saga: saga.clone(),
                    instance: instance.clone(),
                    tenant: s.tenant.clone(),
                    due_at,
                })
            })
            .collect();
        due.sort_by_key(|d| d.due_at);
        due.truncate(limit);
        Ok(due)
    }
}

/// Why a saga failed to handle an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError<S: std::error::Error + 'static, D: std::error::Error + 'static> {
    /// The saga's own `react` failed.
    #[error("saga rejected the event")]
    React(#[source] S),
    /// A command could not be dispatched; the event will be delivered again and commands
    /// already dispatched are deduplicated by their deterministic event ids.
    #[error("dispatching a saga command failed")]
    Dispatch(#[source] D),
    /// Loading or storing the saga state failed (or another instance raced it).
    #[error("saga state storage failed")]
    Store(#[source] StoreError),
    /// The stored state does not deserialize into the saga's state type.
    #[error("stored saga state does not decode")]
    State(#[source] serde_json::Error),
}

/// Runs a [`Saga`] as an [`EventHandler`].
#[derive(Debug, Clone)]
pub struct SagaHandler<G, D, T> {
    saga: G,
    dispatcher: D,
    store: T,
}

impl<G: Saga, D: CommandDispatcher<G::Command>, T: SagaStore> SagaHandler<G, D, T> {
    /// Wires a saga to its command dispatcher and state store.
    pub fn new(saga: G, dispatcher: D, store: T) -> Self {
        Self {
            saga,
            dispatcher,
            store,
        }
    }

    /// The namespace of the event ids of commands caused by `event` in `instance`.
    fn id_namespace(instance: &str, event: &RecordedEvent) -> Uuid {
        let key = format!("{}/{instance}/{}", G::NAME, event.event_id);
        Uuid::new_v5(&Uuid::NAMESPACE_OID, key.as_bytes())
    }
}

impl<G, D, T> EventHandler for SagaHandler<G, D, T>
where
    G: Saga,
    D: CommandDispatcher<G::Command>,
    T: SagaStore,
{
    type Error = SagaError<G::Error, D::Error>;

    async fn handle(&self, event: &RecordedEvent) -> Result<(), Self::Error> {
        let fired = DeadlineReached::from_event(event);
        let instance = match &fired {
            Some(d) if d.saga == G::NAME => d.instance.clone(),
            Some(_) => return Ok(()),
            None => match self.saga.correlate(event) {
                Some(instance) => instance,
                None => return Ok(()),
            },
        };
        let stored = self
            .store
            .load(G::NAME, &instance)
            .await
            .map_err(SagaError::Store)?;
        let pending = stored.as_ref().and_then(|s| s.deadline);
        let (mut state, version) = match stored {
            Some(s) if s.last_position >= event.position => {
                tracing::debug!(saga = G::NAME, %instance, position = %event.position, "already handled");
                return Ok(());
            }
            Some(s) => (
                serde_json::from_value(s.state).map_err(SagaError::State)?,
                s.version,
            ),
            None => (G::State::default(), 0),
        };
        if let Some(d) = &fired
            && pending != Some(d.due_at)
        {
            tracing::debug!(saga = G::NAME, %instance, due_at = %d.due_at, "stale deadline");
            return Ok(());
        }
        let commands = self
            .saga
            .react(&mut state, event)
            .map_err(SagaError::React)?;
        for (i, command) in commands.into_iter().enumerate() {
            let ns = Self::id_namespace(&instance, event);
            let ns = Uuid::new_v5(&ns, &(i as u64).to_be_bytes());
            let ctx = CommandContext::caused_by(event).with_deterministic_ids(ns);
            self.dispatcher
                .dispatch(command, &ctx)
                .await
                .map_err(SagaError::Dispatch)?;
        }
        // A deadline that just fired is consumed even if the saga names it again.
        let deadline = self
            .saga
            .deadline(&state)
            .filter(|d| fired.as_ref().is_none_or(|f| f.due_at != *d));
        let state = serde_json::to_value(&state).map_err(SagaError::State)?;
        self.store
            .save(
                G::NAME,
                &instance,
                version,
                SagaState {
                    state,
                    version: version + 1,
                    last_position: event.position,
                    tenant: event.tenant().clone(),
                    deadline,
                },
            )
            .await
            .map_err(SagaError::Store)
    }

    /// Stored state that does not decode will not decode on a redelivery either; nor will an
    /// error the saga itself calls permanent ([`Saga::is_permanent`]).
    fn is_permanent(&self, error: &Self::Error) -> bool {
        match error {
            SagaError::State(_) => true,
            SagaError::React(error) => self.saga.is_permanent(error),
            _ => false,
        }
    }
}

/// Appends a [`DEADLINE_REACHED`] event for every saga deadline that falls due.
///
/// The event goes to the stream `saga-deadline/<saga>/<instance>` of the instance's tenant, with
/// an id derived from the saga, the instance and the deadline: firing the same deadline twice
/// (two runners, a restart) appends it once. Runs until `shutdown` is cancelled; spawn it
/// beside the saga's runner.
#[derive(Debug)]
pub struct DeadlineRunner<T, S> {
    store: T,
    events: S,
    poll: Duration,
    fired: HashSet<(String, String, DateTime<Utc>)>,
}

impl<T: SagaStore, S: EventStore> DeadlineRunner<T, S> {
    /// A runner checking `store` for due deadlines every 100 ms and appending to `events`.
    pub fn new(store: T, events: S) -> Self {
        Self {
            store,
            events,
            poll: Duration::from_millis(100),
            fired: HashSet::new(),
        }
    }

    /// How often to look for due deadlines.
    #[must_use]
    pub fn with_poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Fires every deadline due at `now`; returns how many events it appended.
    ///
    /// # Errors
    ///
    /// A storage failure; deadlines not yet fired are fired on the next call.
    pub async fn fire_due(&mut self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        const LIMIT: usize = 1_000;
        let due = self.store.due(now, LIMIT).await?;
        // Every pending deadline, if the page was not cut: fired ones no longer in it were
        // consumed by their sagas and can be forgotten.
        let pending: Option<HashSet<_>> = (due.len() < LIMIT).then(|| {
            due.iter()
                .map(|d| (d.saga.clone(), d.instance.clone(), d.due_at))
                .collect()
        });
        let mut appended = 0;
        for d in due {
            let key = (d.saga.clone(), d.instance.clone(), d.due_at);
            if self.fired.contains(&key) {
                continue;
            }
            let stream = StreamId::new(
                d.tenant.clone(),
                DEADLINE_STREAM_TYPE,
                format!("{}/{}", d.saga, d.instance),
            );
            let id_key = format!("{}/{}/{}", d.saga, d.instance, d.due_at.to_rfc3339());
            let payload = DeadlineReached {
                saga: d.saga,
                instance: d.instance,
                due_at: d.due_at,
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
            self.events
                .append(&stream, ExpectedVersion::Any, vec![event])
                .await?;
            self.fired.insert(key);
            appended += 1;
        }
        if let Some(pending) = pending {
            self.fired.retain(|k| pending.contains(k));
        }
        Ok(appended)
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
