//! Saga instance storage: [`SagaStore`], its keys and records, and [`InMemorySagaStore`].

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};

use crate::envelope::{EventId, LogPosition, RecordedEvent, TenantId};
use crate::store::StoreError;

/// Names a saga instance: its tenant, the saga's [`Saga::NAME`](super::Saga::NAME) and the
/// instance id [`Saga::correlate`](super::Saga::correlate) chose.
///
/// The same instance id in two tenants names two instances.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SagaKey {
    tenant: TenantId,
    saga: String,
    instance: String,
}

impl SagaKey {
    /// The key of `instance` of `saga` in `tenant`.
    pub fn new(tenant: TenantId, saga: impl Into<String>, instance: impl Into<String>) -> Self {
        Self {
            tenant,
            saga: saga.into(),
            instance: instance.into(),
        }
    }

    /// The instance's tenant (where its deadline events go).
    #[must_use]
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The saga's name.
    #[must_use]
    pub fn saga(&self) -> &str {
        &self.saga
    }

    /// The instance id.
    #[must_use]
    pub fn instance(&self) -> &str {
        &self.instance
    }
}

impl fmt::Display for SagaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} (tenant {})",
            self.saga, self.instance, self.tenant
        )
    }
}

/// An event as a saga instance's record of handled events keeps it: its id, which decides
/// whether a delivery is a duplicate, and its log position, which pruning goes by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandledEvent {
    event_id: EventId,
    position: LogPosition,
}

impl HandledEvent {
    /// The record of the event `event_id` at `position` in the log.
    #[must_use]
    pub fn new(event_id: EventId, position: LogPosition) -> Self {
        Self { event_id, position }
    }

    /// The record of `event`.
    #[must_use]
    pub fn of(event: &RecordedEvent) -> Self {
        Self::new(event.event_id, event.position)
    }

    /// The event's id.
    #[must_use]
    pub fn event_id(&self) -> EventId {
        self.event_id
    }

    /// The event's log position.
    #[must_use]
    pub fn position(&self) -> LogPosition {
        self.position
    }
}

/// A saga instance's stored state.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SagaState {
    /// The state as JSON.
    pub state: serde_json::Value,
    /// The schema version the state was written with ([`Saga::STATE_VERSION`](super::Saga::STATE_VERSION)).
    pub schema_version: u32,
    /// Optimistic version: how many events the instance handled.
    pub version: u64,
    /// Position of the last event handled. Informational: deduplication goes by the record of
    /// handled events, never by this position (events of several streams arrive interleaved).
    pub last_position: LogPosition,
    /// The pending deadline, if any.
    pub deadline: Option<DateTime<Utc>>,
}

impl SagaState {
    /// A state without a deadline.
    #[must_use]
    pub fn new(
        state: serde_json::Value,
        schema_version: u32,
        version: u64,
        last_position: LogPosition,
    ) -> Self {
        Self {
            state,
            schema_version,
            version,
            last_position,
            deadline: None,
        }
    }

    /// Sets the pending deadline.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Option<DateTime<Utc>>) -> Self {
        self.deadline = deadline;
        self
    }
}

/// What [`SagaStore::load_for`] found: the instance's state, and whether it handled the event
/// asked about.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Loaded {
    /// The instance's state, if it handled anything yet.
    pub state: Option<SagaState>,
    /// Whether the instance handled the event (it is in the record, or at or below the floor
    /// the record was pruned to).
    pub handled: bool,
}

impl Loaded {
    /// A load result.
    #[must_use]
    pub fn new(state: Option<SagaState>, handled: bool) -> Self {
        Self { state, handled }
    }
}

/// A deadline that fell due, as [`SagaStore::due`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DueDeadline {
    /// The instance.
    pub key: SagaKey,
    /// When it fell due.
    pub due_at: DateTime<Utc>,
}

impl DueDeadline {
    /// The deadline `due_at` of the instance `key`.
    #[must_use]
    pub fn new(key: SagaKey, due_at: DateTime<Utc>) -> Self {
        Self { key, due_at }
    }
}

/// Storage for saga instances: state with an optimistic version, the record of the events each
/// instance handled, and pending deadlines.
///
/// The contract, checked by [`saga_store_conformance_tests!`](crate::saga_store_conformance_tests):
///
/// - **Deduplication never drops.** [`load_for`](Self::load_for) says an event was handled only
///   if [`save`](Self::save) recorded that very event for that instance (or the record was
///   pruned past it, see [`prune_handled`](Self::prune_handled)), whatever the order in which
///   events arrive; never because a later event was handled.
/// - State and record move together: `save` stores the state and records the event atomically,
///   and refuses (writing nothing) when the version moved or the event is recorded already.
/// - A deadline is listed by [`due`](Self::due) until [`mark_fired`](Self::mark_fired) marks it;
///   saving another deadline makes it pending again, saving the same one keeps its mark.
pub trait SagaStore: Send + Sync {
    /// The instance's state, if it handled anything yet.
    fn load(
        &self,
        key: &SagaKey,
    ) -> impl Future<Output = Result<Option<SagaState>, StoreError>> + Send;

    /// The instance's state and whether it handled `event` already.
    fn load_for(
        &self,
        key: &SagaKey,
        event: &HandledEvent,
    ) -> impl Future<Output = Result<Loaded, StoreError>> + Send;

    /// Stores `state` if the stored version is still `expected` (0 = no state yet), and records
    /// `handled` in the instance's record of handled events, atomically.
    ///
    /// # Errors
    ///
    /// [`StoreError::CheckpointConflict`] named after the key, writing nothing, when the version
    /// moved or `handled` is recorded already (another delivery of the event won a race).
    fn save(
        &self,
        key: &SagaKey,
        expected: u64,
        state: SagaState,
        handled: HandledEvent,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Up to `limit` pending deadlines at or before `now` that are not marked fired, earliest
    /// first.
    fn due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DueDeadline>, StoreError>> + Send;

    /// Marks `deadline` fired, so [`due`](Self::due) no longer lists it; `false` when the
    /// instance's pending deadline is another one now, or is marked already.
    fn mark_fired(
        &self,
        deadline: &DueDeadline,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Forgets the handled events at or before `floor` of every instance of `saga` in `tenant`,
    /// and remembers the floor on each of those instances: from then on every event at or
    /// before it counts as handled by them. An instance created later has no floor (it handled
    /// nothing before it). Returns how many records were removed.
    ///
    /// Call it only with a position up to which **every** event was fully handled (the
    /// committed checkpoint of a runner reading the log in order); an event at or below the
    /// floor that was not handled would be skipped.
    fn prune_handled(
        &self,
        tenant: &TenantId,
        saga: &str,
        floor: LogPosition,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// One instance in [`InMemorySagaStore`].
#[derive(Debug, Clone)]
struct Instance {
    state: SagaState,
    fired: bool,
    handled: HashMap<EventId, LogPosition>,
    floor: Option<LogPosition>,
}

impl Instance {
    fn handled(&self, event: &HandledEvent) -> bool {
        self.handled.contains_key(&event.event_id)
            || self.floor.is_some_and(|floor| event.position <= floor)
    }
}

/// A [`SagaStore`] in process memory, with the same contract as the durable ones (and the
/// same conformance suite); state dies with the process.
#[derive(Debug, Clone, Default)]
pub struct InMemorySagaStore {
    instances: Arc<Mutex<HashMap<SagaKey, Instance>>>,
}

impl InMemorySagaStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SagaKey, Instance>> {
        self.instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn conflict(key: &SagaKey) -> StoreError {
    StoreError::CheckpointConflict {
        name: key.to_string(),
        expected: None,
        actual: None,
    }
}

impl SagaStore for InMemorySagaStore {
    async fn load(&self, key: &SagaKey) -> Result<Option<SagaState>, StoreError> {
        Ok(self.lock().get(key).map(|i| i.state.clone()))
    }

    async fn load_for(&self, key: &SagaKey, event: &HandledEvent) -> Result<Loaded, StoreError> {
        let instances = self.lock();
        let instance = instances.get(key);
        Ok(Loaded::new(
            instance.map(|i| i.state.clone()),
            instance.is_some_and(|i| i.handled(event)),
        ))
    }

    async fn save(
        &self,
        key: &SagaKey,
        expected: u64,
        state: SagaState,
        handled: HandledEvent,
    ) -> Result<(), StoreError> {
        let mut instances = self.lock();
        match instances.get_mut(key) {
            None if expected == 0 => {
                instances.insert(
                    key.clone(),
                    Instance {
                        state,
                        fired: false,
                        handled: HashMap::from([(handled.event_id, handled.position)]),
                        floor: None,
                    },
                );
                Ok(())
            }
            Some(instance) if instance.state.version == expected && !instance.handled(&handled) => {
                instance.fired &= instance.state.deadline == state.deadline;
                instance.state = state;
                instance.handled.insert(handled.event_id, handled.position);
                Ok(())
            }
            _ => Err(conflict(key)),
        }
    }

    async fn due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<DueDeadline>, StoreError> {
        let mut due: Vec<DueDeadline> = self
            .lock()
            .iter()
            .filter(|(_, i)| !i.fired)
            .filter_map(|(key, i)| {
                let due_at = i.state.deadline.filter(|d| *d <= now)?;
                Some(DueDeadline::new(key.clone(), due_at))
            })
            .collect();
        due.sort_by_key(|d| d.due_at);
        due.truncate(limit);
        Ok(due)
    }

    async fn mark_fired(&self, deadline: &DueDeadline) -> Result<bool, StoreError> {
        let mut instances = self.lock();
        Ok(match instances.get_mut(&deadline.key) {
            Some(i) if !i.fired && i.state.deadline == Some(deadline.due_at) => {
                i.fired = true;
                true
            }
            _ => false,
        })
    }

    async fn prune_handled(
        &self,
        tenant: &TenantId,
        saga: &str,
        floor: LogPosition,
    ) -> Result<u64, StoreError> {
        let mut removed = 0;
        for (_, instance) in self
            .lock()
            .iter_mut()
            .filter(|(k, _)| k.tenant() == tenant && k.saga() == saga)
        {
            let before = instance.handled.len();
            instance.handled.retain(|_, position| *position > floor);
            removed += before - instance.handled.len();
            instance.floor = Some(instance.floor.map_or(floor, |f| f.max(floor)));
        }
        Ok(removed as u64)
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::InMemorySagaStore;

    crate::saga_store_conformance_tests!(InMemorySagaStore::new());
}
