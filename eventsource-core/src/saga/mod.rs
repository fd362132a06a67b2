//! Sagas (process managers): react to events, keep state, issue commands exactly once.
//!
//! A saga instance is chosen per event by [`Saga::correlate`] and named by a [`SagaKey`]
//! (tenant, saga, instance). [`SagaHandler`] loads the instance's state, skips the event if the
//! instance already handled **that** event (redelivery is a no-op), lets the saga react,
//! dispatches the commands it returns, then stores the new state with an optimistic version and
//! records the event as handled. Commands carry the event's correlation id, the event as
//! causation, and event ids derived from the saga instance and the event, so a command
//! re-dispatched after a crash appends nothing twice.
//!
//! Deduplication is per event, never a high-water mark: runners keep order only within a
//! stream, so an instance fed by two streams (its own deadline stream counts) receives their
//! events interleaved, and "skip anything at or below the last position handled" would drop a
//! redelivered event (ADR 0017).
//!
//! `SagaHandler` is an [`EventHandler`]: run it with any runner (a catch-up loop, a Redis
//! consumer group). Sagas are never rebuilt by replay. The pure part of a handler (routing,
//! deduplication, reaction, the next deadline) is [`plan`], for handlers that keep state and
//! append events in one transaction (`eventsource_postgres::PgSagaHandler`).
//!
//! **Timeouts** are durable: after each reaction the saga states its next deadline
//! ([`Saga::deadline`]), which is stored with its state. A [`DeadlineRunner`] appends a
//! [`DEADLINE_REACHED`] event for each deadline that falls due (with a deterministic id, so
//! firing twice appends once) and marks it fired; the saga receives it like any other event, on
//! the instance it belongs to, and reacts — typically with compensating commands. A deadline the
//! saga moved or cleared before it fired is not delivered.
//!
//! **Compensation**: a saga declares, for each command it issues, the command that undoes it
//! ([`Saga::compensation`]) and keeps a [`Compensations`] record in its state
//! ([`Saga::compensations`]). Each command that succeeds has its compensation recorded. A
//! command the aggregate rejects is an outcome the saga hears ([`Saga::on_rejected`]; the
//! dispatcher tells a rejection from a failure, [`CommandDispatcher::rejection`]): the
//! reaction's later commands are dropped and, by default, the completed steps' compensations
//! are issued, last first, each once, and recorded in the state. A reaction (to a deadline,
//! say) asks for the same with [`Compensations::compensate`]. Compensations carry
//! deterministic event ids like every command, and once stored they never run again.

mod compensation;
mod deadline;
mod store;

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

pub use compensation::{Compensations, Reaction, Rejection};
pub use deadline::{
    DEADLINE_REACHED, DEADLINE_STREAM_TYPE, DeadlineReached, DeadlineRunner, deadline_event,
};
pub use store::{
    DueDeadline, HandledEvent, InMemorySagaStore, Loaded, SagaKey, SagaState, SagaStore,
};

use crate::envelope::{NewEvent, RecordedEvent, StreamId, TenantId};
use crate::handler::EventHandler;
use crate::repository::CommandContext;
use crate::store::{ExpectedVersion, StoreError};

/// A process manager.
pub trait Saga: Send + Sync + 'static {
    /// Stable name; part of state keys and derived event ids.
    const NAME: &'static str;
    /// Per-instance state.
    type State: Default + Serialize + DeserializeOwned + Send + Sync;
    /// What the saga asks others to do. `Clone` (as aggregate commands are) so that a
    /// compensation can be issued and recorded in the state as issued.
    type Command: Clone + Send + Sync;
    /// Why reacting failed (the event is retried, then dead-lettered, by the runner).
    type Error: std::error::Error + Send + Sync + 'static;
    /// Schema version of [`State`](Self::State) as stored. Raise it when the state's shape
    /// changes incompatibly: a stored state of another version is reported as
    /// [`SagaError::State`], never decoded into the new shape or reset.
    const STATE_VERSION: u32 = 1;

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

    /// The command that undoes `command` once it succeeded, if it is a step to compensate when
    /// a later one fails; `None` (the default) when nothing needs undoing. Handlers record it
    /// in [`compensations`](Self::compensations) when `command` succeeds. Called once per
    /// issued command; keep it pure.
    fn compensation(&self, command: &Self::Command) -> Option<Self::Command> {
        let _ = command;
        None
    }

    /// Where `state` keeps the record of completed steps' compensations, if the saga
    /// compensates; `None` (the default) otherwise. See [`Compensations`].
    fn compensations<'s>(
        &self,
        state: &'s mut Self::State,
    ) -> Option<&'s mut Compensations<Self::Command>> {
        let _ = state;
        None
    }

    /// Reacts to the aggregate rejecting a command of this saga (the dispatcher or decider
    /// recognises the rejection, see [`CommandDispatcher::rejection`]). Commands the reaction
    /// had not issued yet are dropped; the commands returned here are issued next, then the
    /// compensations asked for with [`Compensations::compensate`]. `Ok(None)` keeps the
    /// rejection a failure of the delivery ([`SagaError::Dispatch`]), as for a saga that
    /// does not handle rejections.
    ///
    /// The default compensates when the saga keeps [`compensations`](Self::compensations)
    /// and otherwise returns `Ok(None)`.
    ///
    /// # Errors
    ///
    /// As [`react`](Self::react).
    fn on_rejected(
        &self,
        state: &mut Self::State,
        rejection: &Rejection<'_>,
    ) -> Result<Option<Vec<Self::Command>>, Self::Error> {
        let _ = rejection;
        Ok(self.compensations(state).map(|record| {
            record.compensate();
            Vec::new()
        }))
    }

    /// Whether `error`, returned by [`react`](Self::react), recurs on every delivery (an event
    /// that does not decode, say); [`SagaHandler`] then reports it as permanent and runners
    /// dead-letter the event at once. The default treats every error as transient.
    fn is_permanent(&self, error: &Self::Error) -> bool {
        let _ = error;
        false
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

    /// The aggregate's rejection `error` carries, if it is one: the saga then hears it as an
    /// outcome ([`Saga::on_rejected`]) instead of failing the delivery. `None` by default; a
    /// [`Repository`](crate::Repository) returns its aggregate's error from
    /// [`CommandError::Rejected`](crate::CommandError::Rejected).
    fn rejection<'e>(
        &self,
        error: &'e Self::Error,
    ) -> Option<&'e (dyn std::error::Error + Send + Sync + 'static)> {
        let _ = error;
        None
    }
}

/// Decides the events a saga command appends, without appending them: for handlers that
/// append in a transaction of their own, with the saga's state (see [`plan`]).
///
/// A [`Repository`](crate::Repository) decides commands addressed as `(aggregate id, command)`.
pub trait CommandDecider<C>: Send + Sync {
    /// Why a command could not be decided (the aggregate rejected it, loading it failed).
    type Error: std::error::Error + Send + Sync + 'static;

    /// The events `command` appends with `ctx` (correlation, causation, deterministic ids), and
    /// where; `None` when it appends nothing.
    fn decide(
        &self,
        command: C,
        ctx: &CommandContext,
    ) -> impl Future<Output = Result<Option<Decided>, Self::Error>> + Send;

    /// The aggregate's rejection `error` carries, if it is one (see
    /// [`CommandDispatcher::rejection`]).
    fn rejection<'e>(
        &self,
        error: &'e Self::Error,
    ) -> Option<&'e (dyn std::error::Error + Send + Sync + 'static)> {
        let _ = error;
        None
    }
}

/// The events a command appends, as [`CommandDecider::decide`] returns them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Decided {
    /// The aggregate's stream.
    pub stream: StreamId,
    /// The version the command was decided on.
    pub expected: ExpectedVersion,
    /// The events, with their ids and metadata.
    pub events: Vec<NewEvent>,
}

impl Decided {
    /// Appending `events` to `stream` at `expected`.
    #[must_use]
    pub fn new(stream: StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        Self {
            stream,
            expected,
            events,
        }
    }
}

/// A saga instance's stored state that does not decode: written with another
/// [`Saga::STATE_VERSION`], or no longer matching [`Saga::State`]. Permanent; the state is
/// left as stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[error(
    "stored state of saga {saga}, instance {instance} (tenant {tenant}), schema version \
     {stored_version}, does not decode as schema version {expected_version}"
)]
pub struct StateError {
    /// The saga's name.
    pub saga: String,
    /// The instance.
    pub instance: String,
    /// The instance's tenant.
    pub tenant: TenantId,
    /// The schema version the state was stored with.
    pub stored_version: u32,
    /// [`Saga::STATE_VERSION`].
    pub expected_version: u32,
    /// Why the JSON did not deserialize (`None` when the versions differ).
    #[source]
    pub source: Option<serde_json::Error>,
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
    /// The stored state does not decode; it names saga and instance. Permanent.
    #[error(transparent)]
    State(StateError),
    /// The new state does not serialize. Permanent.
    #[error("saga state does not serialize")]
    Encode(#[source] serde_json::Error),
}

/// The instance `event` belongs to: the one its deadline names for a [`DEADLINE_REACHED`] event
/// of this saga, else the one [`Saga::correlate`] chooses; `None` when the saga ignores it.
pub fn route<G: Saga>(saga: &G, event: &RecordedEvent) -> Option<SagaKey> {
    let instance = match DeadlineReached::from_event(event) {
        Some(d) if d.saga == G::NAME => d.instance,
        Some(_) => return None,
        None => saga.correlate(event)?,
    };
    Some(SagaKey::new(event.tenant().clone(), G::NAME, instance))
}

/// What a saga instance does with one event, as [`plan`] decides it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Plan<'a, G: Saga> {
    /// Nothing: the instance handled this event already, or the deadline it announces is no
    /// longer pending.
    Skip,
    /// Issue the reaction's commands one by one, reporting each outcome, then store its state
    /// over [`Reaction::expected`] and record the event as handled.
    React(Reaction<'a, G>),
}

/// The pure step of a saga handler, given what the store loaded for `key` and `event`: skips a
/// handled event or a stale deadline, decodes the state (refusing another schema version) and
/// lets the saga react. The [`Reaction`] then hands out the commands one at a time, hears
/// their outcomes (a rejection may make the saga compensate) and computes the new state and
/// deadline. [`SagaHandler`] is this plus a [`SagaStore`] and a [`CommandDispatcher`].
///
/// # Errors
///
/// [`SagaError::State`] when the stored state does not decode, [`SagaError::React`] when the
/// saga fails.
pub fn plan<'a, G: Saga, D: std::error::Error + 'static>(
    saga: &'a G,
    key: &'a SagaKey,
    loaded: Loaded,
    event: &'a RecordedEvent,
) -> Result<Plan<'a, G>, SagaError<G::Error, D>> {
    if loaded.handled {
        tracing::debug!(saga = G::NAME, instance = key.instance(), event = %event.event_id, "already handled");
        return Ok(Plan::Skip);
    }
    let fired = DeadlineReached::from_event(event);
    let pending = loaded.state.as_ref().and_then(|s| s.deadline);
    if let Some(d) = &fired
        && pending != Some(d.due_at)
    {
        tracing::debug!(saga = G::NAME, instance = key.instance(), due_at = %d.due_at, "stale deadline");
        return Ok(Plan::Skip);
    }
    let (mut state, expected) = match loaded.state {
        Some(stored) => (
            decode_state::<G>(key, stored.state, stored.schema_version)
                .map_err(SagaError::State)?,
            stored.version,
        ),
        None => (G::State::default(), 0),
    };
    let commands = saga.react(&mut state, event).map_err(SagaError::React)?;
    Ok(Plan::React(Reaction::new(
        saga, key, event, fired, state, expected, commands,
    )))
}

fn decode_state<G: Saga>(
    key: &SagaKey,
    state: serde_json::Value,
    schema_version: u32,
) -> Result<G::State, StateError> {
    let error = |source| StateError {
        saga: G::NAME.to_owned(),
        instance: key.instance().to_owned(),
        tenant: key.tenant().clone(),
        stored_version: schema_version,
        expected_version: G::STATE_VERSION,
        source,
    };
    if schema_version != G::STATE_VERSION {
        return Err(error(None));
    }
    serde_json::from_value(state).map_err(|e| error(Some(e)))
}

/// The namespace of the event ids of commands caused by `event` in `instance`.
fn id_namespace(saga: &str, instance: &str, event: &RecordedEvent) -> Uuid {
    let key = format!("{saga}/{instance}/{}", event.event_id);
    Uuid::new_v5(&Uuid::NAMESPACE_OID, key.as_bytes())
}

/// Whether a [`SagaError`] recurs on every delivery: a state that does not decode or encode,
/// or an error the saga calls permanent.
fn is_permanent<G: Saga, D: std::error::Error + 'static>(
    saga: &G,
    error: &SagaError<G::Error, D>,
) -> bool {
    match error {
        SagaError::State(_) | SagaError::Encode(_) => true,
        SagaError::React(error) => saga.is_permanent(error),
        _ => false,
    }
}

impl<S: std::error::Error + 'static, D: std::error::Error + 'static> SagaError<S, D> {
    /// Whether this error recurs on every delivery of the event to `saga`: a stored state that
    /// does not decode, a new one that does not serialize, or a reaction error the saga calls
    /// permanent ([`Saga::is_permanent`]). Handlers report it through
    /// [`EventHandler::is_permanent`].
    pub fn is_permanent_for<G: Saga<Error = S>>(&self, saga: &G) -> bool {
        is_permanent(saga, self)
    }
}

/// Runs a [`Saga`] as an [`EventHandler`] over a [`SagaStore`] and a [`CommandDispatcher`].
///
/// Commands are dispatched before the state is saved; a crash between the two redelivers the
/// event, which re-dispatches the same commands with the same event ids (appending nothing
/// twice) and saves the state. Two deliveries of one event racing each other: one saves, the
/// other gets [`SagaError::Store`] (a conflict, retryable) and then finds the event handled.
///
/// A command the aggregate rejects (as the dispatcher's [`CommandDispatcher::rejection`] tells)
/// is an outcome the saga hears ([`Saga::on_rejected`]): by default a saga that keeps
/// [`Compensations`] drops the reaction's remaining commands and issues the compensations of
/// its completed steps, last first, each once; any other dispatch error fails the delivery.
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
}

impl<G, D, T> EventHandler for SagaHandler<G, D, T>
where
    G: Saga,
    D: CommandDispatcher<G::Command>,
    T: SagaStore,
{
    type Error = SagaError<G::Error, D::Error>;

    async fn handle(&self, event: &RecordedEvent) -> Result<(), Self::Error> {
        let Some(key) = route(&self.saga, event) else {
            return Ok(());
        };
        let handled = HandledEvent::of(event);
        let loaded = self
            .store
            .load_for(&key, &handled)
            .await
            .map_err(SagaError::Store)?;
        let Plan::React(mut reaction) = plan(&self.saga, &key, loaded, event)? else {
            return Ok(());
        };
        while let Some((command, ctx)) = reaction.next_command() {
            match self.dispatcher.dispatch(command, &ctx).await {
                Ok(()) => reaction.succeeded(),
                Err(e) => match self.dispatcher.rejection(&e) {
                    Some(rejection) if reaction.rejected(rejection)? => {}
                    _ => return Err(SagaError::Dispatch(e)),
                },
            }
        }
        let expected = reaction.expected();
        let state = reaction.finish()?;
        self.store
            .save(&key, expected, state, handled)
            .await
            .map_err(SagaError::Store)
    }

    /// Stored state that does not decode will not decode on a redelivery either; nor will an
    /// error the saga itself calls permanent ([`Saga::is_permanent`]).
    fn is_permanent(&self, error: &Self::Error) -> bool {
        is_permanent(&self.saga, error)
    }
}
