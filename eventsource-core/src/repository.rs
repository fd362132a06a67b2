//! The repository: loads aggregates (snapshot + tail), executes commands, retries conflicts.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::Instrument as _;
use uuid::Uuid;

use crate::aggregate::{Aggregate, AggregateRoot, Handle};
use crate::envelope::{
    EventDecodeError, EventId, Metadata, NewEvent, RecordedEvent, StreamId, TenantId, Version,
};
use crate::retry::RetryPolicy;
use crate::snapshot::{NoSnapshots, Snapshot, SnapshotPolicy, SnapshotStore};
use crate::store::{Appended, EventStore, ExpectedVersion, StoreError, VersionRange};

/// Metadata a command carries into the events it produces.
///
/// Without a correlation id, each command starts a new correlation. [`CommandContext::caused_by`]
/// continues the correlation of an event and records it as the cause, which is what a saga or
/// policy reacting to that event should do.
///
/// ```
/// # use eventsource_core::CommandContext;
/// let ctx = CommandContext::new().with_actor("alice").with_source("api");
/// assert_eq!(ctx.metadata().actor.as_deref(), Some("alice"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct CommandContext {
    metadata: Metadata,
    id_namespace: Option<Uuid>,
}

impl CommandContext {
    /// A context that starts a new correlation.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A context for a command issued in reaction to `event`: same correlation id (the event's
    /// own id if it had none), causation id = the event's id.
    #[must_use]
    pub fn caused_by(event: &RecordedEvent) -> Self {
        let correlation = event
            .metadata
            .correlation_id
            .unwrap_or(*event.event_id.as_uuid());
        Self::new()
            .with_correlation_id(correlation)
            .with_causation_id(*event.event_id.as_uuid())
    }

    /// Sets the correlation id.
    #[must_use]
    pub fn with_correlation_id(mut self, id: Uuid) -> Self {
        self.metadata.correlation_id = Some(id);
        self
    }

    /// Sets the causation id.
    #[must_use]
    pub fn with_causation_id(mut self, id: Uuid) -> Self {
        self.metadata.causation_id = Some(id);
        self
    }

    /// Sets the actor.
    #[must_use]
    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.metadata.actor = Some(actor.into());
        self
    }

    /// Sets the source.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.metadata.source = Some(source.into());
        self
    }

    /// Replaces all metadata.
    #[must_use]
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Derives event ids deterministically from `namespace` (UUIDv5 of the namespace and the
    /// event's index in the command's output), so re-running the same command after a lost
    /// acknowledgement appends nothing twice. Sagas use a namespace derived from their id and
    /// the causing event.
    #[must_use]
    pub fn with_deterministic_ids(mut self, namespace: Uuid) -> Self {
        self.id_namespace = Some(namespace);
        self
    }

    /// The metadata events will carry.
    #[must_use]
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    fn event_id(&self, index: usize) -> EventId {
        match self.id_namespace {
            Some(ns) => EventId::from_uuid(Uuid::new_v5(&ns, &(index as u64).to_be_bytes())),
            None => EventId::new(),
        }
    }
}

/// Why an aggregate could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The store failed.
    #[error("loading the aggregate failed")]
    Store(#[from] StoreError),
    /// A stored event does not decode; the error names it. Nothing is lost.
    #[error(transparent)]
    Decode(#[from] EventDecodeError),
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E: std::error::Error + 'static> {
    /// The aggregate rejected the command; nothing was written.
    #[error("command rejected")]
    Rejected(#[source] E),
    /// The store failed, or conflicts outlasted the retry policy
    /// ([`StoreError::Conflict`] then).
    #[error("storing the command's events failed")]
    Store(#[source] StoreError),
    /// A stored event of the aggregate does not decode.
    #[error(transparent)]
    Decode(EventDecodeError),
    /// An event produced by the command does not serialize.
    #[error("serializing an event failed")]
    Encode(#[source] serde_json::Error),
}

impl<E: std::error::Error + 'static> CommandError<E> {
    /// The domain error, if the aggregate rejected the command.
    pub fn rejection(&self) -> Option<&E> {
        match self {
            Self::Rejected(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the command lost to concurrent writers on every attempt.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_conflict())
    }
}

impl<E: std::error::Error + 'static> From<LoadError> for CommandError<E> {
    fn from(value: LoadError) -> Self {
        match value {
            LoadError::Store(e) => Self::Store(e),
            LoadError::Decode(e) => Self::Decode(e),
        }
    }
}

/// The outcome of a command.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Executed<A: Aggregate> {
    /// The events the command produced (empty when it changed nothing).
    pub events: Vec<A::Event>,
    /// The stream version after the command.
    pub version: Version,
    /// Where the events landed, if any were appended.
    pub appended: Option<Appended>,
    /// Attempts made: 1 plus the conflicts retried.
    pub attempts: u32,
}

/// Loads aggregates and executes commands against an [`EventStore`].
///
/// `execute` loads the aggregate (snapshot + tail), handles the command, and appends the events
/// expecting the version it loaded. On a conflict it reads only the new tail, handles the
/// command again against the fresh state, and retries with bounded, jittered backoff
/// ([`RetryPolicy`]).
///
/// With [`with_cache`](Repository::with_cache), commands on one aggregate run one at a time in
/// this process and the aggregate stays in memory between commands: a command then costs one
/// append and no load. A write from elsewhere shows up as a conflict, which reloads the tail.
///
/// Cloning is as cheap as cloning the store; clones share the cache.
#[derive(Debug)]
pub struct Repository<A: Aggregate, S, P = NoSnapshots> {
    store: S,
    snapshots: P,
    policy: SnapshotPolicy,
    retry: RetryPolicy,
    tenant: TenantId,
    cache: Option<Arc<AggregateCache<A>>>,
    aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate, S: Clone, P: Clone> Clone for Repository<A, S, P> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            snapshots: self.snapshots.clone(),
            policy: self.policy,
            retry: self.retry,
            tenant: self.tenant.clone(),
            cache: self.cache.clone(),
            aggregate: PhantomData,
        }
    }
}

/// One slot per aggregate: the lock serializes commands on it, the content is the loaded root
/// (`None` until loaded, or after a failure made it unreliable).
type Slot<A> = Arc<tokio::sync::Mutex<Option<AggregateRoot<A>>>>;

#[derive(Debug)]
struct AggregateCache<A: Aggregate> {
    capacity: usize,
    slots: Mutex<HashMap<StreamId, Slot<A>>>,
}

impl<A: Aggregate> AggregateCache<A> {
    fn slot(&self, stream: &StreamId) -> Slot<A> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get(stream) {
            return slot.clone();
        }
        if slots.len() >= self.capacity {
            // Evict idle slots. A slot in use keeps working for its holders; a command arriving
            // after the eviction gets a fresh slot and, at worst, a conflict that reloads.
            slots.retain(|_, slot| Arc::strong_count(slot) > 1);
            if slots.len() >= self.capacity {
                slots.clear();
            }
        }
        slots.entry(stream.clone()).or_default().clone()
    }
}

impl<A: Aggregate, S: EventStore> Repository<A, S> {
    /// A repository for the default tenant, without snapshots.
    pub fn new(store: S) -> Self {
        Self {
            store,
            snapshots: NoSnapshots,
            policy: SnapshotPolicy::Never,
            retry: RetryPolicy::default(),
            tenant: TenantId::default(),
            cache: None,
            aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate, S: EventStore, P: SnapshotStore> Repository<A, S, P> {
    /// Stores snapshots in `snapshots` according to `policy`. Only aggregates with a
    /// [`SNAPSHOT_VERSION`](Aggregate::SNAPSHOT_VERSION) are snapshotted.
    pub fn with_snapshots<Q: SnapshotStore>(
        self,
        snapshots: Q,
        policy: SnapshotPolicy,
    ) -> Repository<A, S, Q> {
        Repository {
            store: self.store,
            snapshots,
            policy,
            retry: self.retry,
            tenant: self.tenant,
            cache: self.cache,
            aggregate: PhantomData,
        }
    }

    /// Keeps up to `capacity` aggregates in memory and runs commands on one aggregate one at a
    /// time in this process (no retry storms on a hot aggregate). A cached aggregate is not
    /// reloaded before a command: the append's version check detects a write from elsewhere,
    /// and the conflict reloads only the new tail.
    #[must_use]
    pub fn with_cache(mut self, capacity: usize) -> Self {
        self.cache = Some(Arc::new(AggregateCache {
            capacity: capacity.max(1),
            slots: Mutex::new(HashMap::new()),
        }));
        self
    }

    /// Retries conflicts according to `retry`.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Works on `tenant`'s streams.
    #[must_use]
    pub fn with_tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = tenant;
        self
    }

    /// The tenant this repository works for.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The stream of aggregate `id`.
    pub fn stream_id(&self, id: &str) -> StreamId {
        StreamId::new(self.tenant.clone(), A::TYPE, id)
    }

    /// Loads an aggregate: the newest usable snapshot, then the events after it. An aggregate
    /// without events comes back at [`Version::ZERO`] with default state.
    ///
    /// A snapshot with another schema version, or one that does not decode, is ignored (logged
    /// at warn) and the stream is replayed from the start. A snapshot ahead of its stream (its
    /// version above the stream's) is not detected here, which would cost a round trip per
    /// load: the first command on it conflicts with the stream's real version, and the command
    /// replays the stream from the start and runs again (logged at warn).
    pub async fn load(&self, id: &str) -> Result<AggregateRoot<A>, LoadError> {
        let stream = self.stream_id(id);
        let span = tracing::debug_span!("eventsource.load", stream = %stream);
        async {
            let root = match self.load_snapshot(&stream).await {
                Some(snapshot) => snapshot,
                None => AggregateRoot::new(id),
            };
            self.catch_up(&stream, root).await
        }
        .instrument(span)
        .await
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Option<AggregateRoot<A>> {
        let schema = A::SNAPSHOT_VERSION?;
        let snapshot = match self.snapshots.load(stream, schema).await {
            Ok(s) => s?,
            Err(e) => {
                tracing::warn!(%stream, error = %e, "snapshot load failed; replaying events");
                return None;
            }
        };
        if snapshot.schema_version != schema {
            return None;
        }
        let Some(state) = A::restore(snapshot.state) else {
            tracing::warn!(%stream, "snapshot does not decode; replaying events");
            return None;
        };
        Some(AggregateRoot::from_state(
            stream.aggregate_id(),
            state,
            snapshot.version,
        ))
    }

    /// Applies the events stored after `root`'s version.
    async fn catch_up(
        &self,
        stream: &StreamId,
        mut root: AggregateRoot<A>,
    ) -> Result<AggregateRoot<A>, LoadError> {
        let tail = self
            .store
            .read_stream(stream, VersionRange::from(root.version().next()))
            .await?;
        for recorded in tail {
            if recorded.version != root.version().next() {
                return Err(LoadError::Store(StoreError::Corrupt(format!(
                    "stream {stream} skips from version {} to {}",
                    root.version(),
                    recorded.version
                ))));
            }
            root.replay(&recorded.into_decoded::<A::Event>()?.payload);
        }
        Ok(root)
    }

    /// Appends `root`'s uncommitted events expecting its loaded version, then marks them
    /// committed. Does not retry.
    ///
    /// # Errors
    ///
    /// [`StoreError::Conflict`] (as [`CommandError::Store`]) when someone appended first.
    pub async fn save<E: std::error::Error + 'static>(
        &self,
        root: &mut AggregateRoot<A>,
        ctx: &CommandContext,
    ) -> Result<Option<Appended>, CommandError<E>> {
        if root.uncommitted_events().is_empty() {
            return Ok(None);
        }
        let stream = self.stream_id(root.id());
        let metadata = ctx_metadata(ctx);
        let events = encode(root.uncommitted_events(), ctx, &metadata)?;
        let appended = self
            .store
            .append(&stream, ExpectedVersion::Exact(root.version()), events)
            .await
            .map_err(CommandError::Store)?;
        let before = root.version();
        root.mark_events_as_committed();
        self.maybe_snapshot(&stream, before, root).await;
        Ok(Some(appended))
    }

    /// Executes `command` on aggregate `id` with a fresh correlation.
    ///
    /// # Errors
    ///
    /// See [`CommandError`].
    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
    ) -> Result<Executed<A>, CommandError<A::Error>>
    where
        A: Handle,
    {
        self.execute_with(id, command, &CommandContext::new()).await
    }

    /// Executes `command` on aggregate `id`, carrying `ctx`'s metadata into the events.
    ///
    /// # Errors
    ///
    /// See [`CommandError`].
    pub async fn execute_with(
        &self,
        id: &str,
        command: A::Command,
        ctx: &CommandContext,
    ) -> Result<Executed<A>, CommandError<A::Error>>
    where
        A: Handle,
    {
        let stream = self.stream_id(id);
        let span = tracing::debug_span!("eventsource.execute", stream = %stream, attempts = tracing::field::Empty);
        let started = std::time::Instant::now();
        let result = async {
            let Some(cache) = &self.cache else {
                let mut root = self.load(id).await?;
                return self.run(&stream, &mut root, command, ctx).await;
            };
            let slot = cache.slot(&stream);
            let mut guard = slot.lock().await;
            let mut root = match guard.take() {
                Some(root) => root,
                None => self.load(id).await?,
            };
            let result = self.run(&stream, &mut root, command, ctx).await;
            // After a store failure the outcome of the append is unknown: reload next time.
            if !matches!(
                result,
                Err(CommandError::Store(_) | CommandError::Decode(_))
            ) {
                *guard = Some(root);
            }
            result
        }
        .instrument(span)
        .await;
        let (outcome, events, conflicts) = match &result {
            Ok(done) => ("ok", done.events.len(), done.attempts - 1),
            Err(CommandError::Rejected(_)) => ("rejected", 0, 0),
            Err(e) if e.is_conflict() => ("conflict", 0, self.retry.max_attempts()),
            Err(_) => ("error", 0, 0),
        };
        crate::metrics::command(A::TYPE, outcome, events, conflicts, started);
        result
    }

    /// Handles `command` against `root` and appends, retrying conflicts; on success `root`
    /// holds the new state and version.
    async fn run(
        &self,
        stream: &StreamId,
        root: &mut AggregateRoot<A>,
        command: A::Command,
        ctx: &CommandContext,
    ) -> Result<Executed<A>, CommandError<A::Error>>
    where
        A: Handle,
    {
        let metadata = ctx_metadata(ctx);
        let mut attempt = 1;
        loop {
            let events = root
                .state()
                .handle(command.clone())
                .map_err(CommandError::Rejected)?;
            if events.is_empty() {
                return Ok(Executed {
                    events,
                    version: root.version(),
                    appended: None,
                    attempts: attempt,
                });
            }
            let new_events = encode(&events, ctx, &metadata)?;
            let before = root.version();
            match self
                .store
                .append(stream, ExpectedVersion::Exact(before), new_events)
                .await
            {
                Ok(appended) => {
                    tracing::Span::current().record("attempts", attempt);
                    for event in events.iter().cloned() {
                        root.apply_event(event);
                    }
                    root.mark_events_as_committed();
                    if root.version() != appended.version {
                        // Only possible when an idempotent replay returned an earlier append:
                        // the state must come from the store.
                        let id = root.id().to_owned();
                        *root = self.catch_up(stream, AggregateRoot::new(id)).await?;
                    }
                    self.maybe_snapshot(stream, before, root).await;
                    return Ok(Executed {
                        events,
                        version: appended.version,
                        appended: Some(appended),
                        attempts: attempt,
                    });
                }
                Err(StoreError::Conflict { actual, .. })
                    if actual < before && attempt < self.retry.max_attempts() =>
                {
                    // The stream is behind the state this command ran on: that state came from a
                    // snapshot ahead of its stream (a restored database, a snapshot store shared
                    // by mistake). Reloading the tail would find nothing and conflict again until
                    // the retries ran out; replay the stream from its start instead.
                    tracing::warn!(
                        %stream,
                        loaded = before.get(),
                        actual = actual.get(),
                        "the loaded state is ahead of its stream; replaying the stream"
                    );
                    attempt += 1;
                    let id = root.id().to_owned();
                    *root = self.catch_up(stream, AggregateRoot::new(id)).await?;
                }
                Err(e) if e.is_conflict() && attempt < self.retry.max_attempts() => {
                    tracing::debug!(%stream, attempt, "conflict; reloading the tail");
                    tokio::time::sleep(self.retry.delay(attempt)).await;
                    attempt += 1;
                    let id = root.id().to_owned();
                    let current = std::mem::replace(root, AggregateRoot::new(id));
                    *root = self.catch_up(stream, current).await?;
                }
                Err(e) => return Err(CommandError::Store(e)),
            }
        }
    }

    async fn maybe_snapshot(&self, stream: &StreamId, before: Version, root: &AggregateRoot<A>) {
        let Some(schema) = A::SNAPSHOT_VERSION else {
            return;
        };
        if !self.policy.should_snapshot(before, root.version()) {
            return;
        }
        let Some(state) = root.state().snapshot() else {
            return;
        };
        let snapshot = Snapshot::new(stream.clone(), root.version(), schema, state);
        // A snapshot is an optimisation: failing to store one never fails the command.
        if let Err(e) = self.snapshots.save(snapshot).await {
            tracing::warn!(%stream, error = %e, "snapshot save failed");
        }
    }
}

fn ctx_metadata(ctx: &CommandContext) -> Metadata {
    let mut metadata = ctx.metadata.clone();
    metadata.correlation_id.get_or_insert_with(Uuid::now_v7);
    metadata
}

fn encode<E: crate::DomainEvent, X: std::error::Error + 'static>(
    events: &[E],
    ctx: &CommandContext,
    metadata: &Metadata,
) -> Result<Vec<NewEvent>, CommandError<X>> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            Ok(NewEvent::from_event(e)
                .map_err(CommandError::Encode)?
                .with_event_id(ctx.event_id(i))
                .with_metadata(metadata.clone()))
        })
        .collect()
}

/// Temporal reads: an aggregate as it was at a version or at a time.
impl<A: Aggregate, S: EventStore, P: SnapshotStore> Repository<A, S, P> {
    /// Loads an aggregate as it was at `version`: its first `version` events replayed, through
    /// the same decoding and upcasting as [`load`](Self::load). Snapshots and the cache are not
    /// used (a snapshot holds only the newest state). A `version` past the end of the stream
    /// gives the aggregate as it is now; [`AggregateRoot::version`] says where it stopped.
    ///
    /// ```
    /// # use eventsource_core::{Aggregate, DomainEvent, Handle, InMemoryEventStore, Repository, Version};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
    /// # enum CounterEvent { Added { by: u32 } }
    /// # #[derive(Default, Aggregate)]
    /// # #[aggregate(event = CounterEvent)]
    /// # struct Counter { total: u32 }
    /// # impl CounterEventHandler for Counter {
    /// #     fn when_added(&mut self, e: counter_event::Added) { self.total += e.by; }
    /// # }
    /// # impl Handle for Counter {
    /// #     type Command = u32;
    /// #     type Error = std::convert::Infallible;
    /// #     fn handle(&self, by: u32) -> Result<Vec<CounterEvent>, Self::Error> {
    /// #         Ok(vec![CounterEvent::Added { by }])
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let counters = Repository::<Counter, _>::new(InMemoryEventStore::new());
    /// for by in [1, 10, 100] {
    ///     counters.execute("c-1", by).await?;
    /// }
    /// let then = counters.load_at("c-1", Version::new(2)).await?;
    /// assert_eq!((then.state().total, then.version()), (11, Version::new(2)));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load).
    pub async fn load_at(&self, id: &str, version: Version) -> Result<AggregateRoot<A>, LoadError> {
        let stream = self.stream_id(id);
        let span = tracing::debug_span!("eventsource.load_at", stream = %stream, %version);
        async {
            let root = AggregateRoot::new(id);
            if version == Version::ZERO {
                return Ok(root);
            }
            let range = VersionRange::between(Version::new(1), version);
            let events = self.store.read_stream(&stream, range).await?;
            replay_until(&stream, root, events, |_| true)
        }
        .instrument(span)
        .await
    }

    /// Loads an aggregate as it was at `at`: the events recorded at or before `at`, in stream
    /// order, stopping at the first one recorded later. Same decoding path as
    /// [`load`](Self::load); no snapshot, no cache.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load).
    pub async fn load_as_of(
        &self,
        id: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<AggregateRoot<A>, LoadError> {
        let stream = self.stream_id(id);
        let span = tracing::debug_span!("eventsource.load_as_of", stream = %stream, %at);
        async {
            let events = self.store.read_stream(&stream, VersionRange::all()).await?;
            replay_until(&stream, AggregateRoot::new(id), events, |e| {
                e.recorded_at <= at
            })
        }
        .instrument(span)
        .await
    }
}

/// Replays `events` onto `root` in order while `keep` holds, checking that versions are dense.
fn replay_until<A: Aggregate>(
    stream: &StreamId,
    mut root: AggregateRoot<A>,
    events: Vec<RecordedEvent>,
    keep: impl Fn(&RecordedEvent) -> bool,
) -> Result<AggregateRoot<A>, LoadError> {
    for recorded in events.into_iter().take_while(|e| keep(e)) {
        if recorded.version != root.version().next() {
            return Err(LoadError::Store(StoreError::Corrupt(format!(
                "stream {stream} skips from version {} to {}",
                root.version(),
                recorded.version
            ))));
        }
        root.replay(&recorded.into_decoded::<A::Event>()?.payload);
    }
    Ok(root)
}

/// A repository dispatches saga commands addressed as `(aggregate id, command)`.
impl<A, S, P> crate::saga::CommandDispatcher<(String, A::Command)> for Repository<A, S, P>
where
    A: Handle,
    S: EventStore,
    P: SnapshotStore,
{
    type Error = CommandError<A::Error>;

    async fn dispatch(
        &self,
        (id, command): (String, A::Command),
        ctx: &CommandContext,
    ) -> Result<(), Self::Error> {
        self.execute_with(&id, command, ctx).await.map(|_| ())
    }

    fn rejection<'e>(
        &self,
        error: &'e Self::Error,
    ) -> Option<&'e (dyn std::error::Error + Send + Sync + 'static)> {
        error.rejection().map(|e| e as _)
    }
}

/// A repository decides saga commands addressed as `(aggregate id, command)`: it loads the
/// aggregate, handles the command and encodes the events with `ctx`'s metadata and ids, at the
/// version it loaded; appending is the caller's (in its own transaction).
impl<A, S, P> crate::saga::CommandDecider<(String, A::Command)> for Repository<A, S, P>
where
    A: Handle,
    S: EventStore,
    P: SnapshotStore,
{
    type Error = CommandError<A::Error>;

    async fn decide(
        &self,
        (id, command): (String, A::Command),
        ctx: &CommandContext,
    ) -> Result<Option<crate::saga::Decided>, Self::Error> {
        let root = self.load(&id).await?;
        let events = root
            .state()
            .handle(command)
            .map_err(CommandError::Rejected)?;
        if events.is_empty() {
            return Ok(None);
        }
        let events = encode(&events, ctx, &ctx_metadata(ctx))?;
        Ok(Some(crate::saga::Decided::new(
            self.stream_id(&id),
            ExpectedVersion::Exact(root.version()),
            events,
        )))
    }

    fn rejection<'e>(
        &self,
        error: &'e Self::Error,
    ) -> Option<&'e (dyn std::error::Error + Send + Sync + 'static)> {
        error.rejection().map(|e| e as _)
    }
}
