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

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::envelope::{LogPosition, RecordedEvent};
use crate::handler::EventHandler;
use crate::repository::CommandContext;
use crate::store::StoreError;

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

    /// The instance an event belongs to, or `None` if the saga ignores it.
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
        let Some(instance) = self.saga.correlate(event) else {
            return Ok(());
        };
        let stored = self
            .store
            .load(G::NAME, &instance)
            .await
            .map_err(SagaError::Store)?;
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
                },
            )
            .await
            .map_err(SagaError::Store)
    }

    /// Stored state that does not decode will not decode on a redelivery either.
    fn is_permanent(&self, error: &Self::Error) -> bool {
        matches!(error, SagaError::State(_))
    }
}
