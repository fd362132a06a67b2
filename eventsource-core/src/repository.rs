//! The repository: loads aggregates (snapshot + tail), executes commands, retries conflicts.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicI32, Ordering};
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
/// By default the repository keeps aggregates in memory ([`with_cache`](Repository::with_cache)):
/// commands on one aggregate run one at a time in this process and a command costs one append
/// and no load. A write from another process shows up as a conflict, which reloads the tail.
/// [`without_cache`](Repository::without_cache) loads before every command instead.
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

/// Aggregates a new [`Repository`] keeps in memory.
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

/// One slot per aggregate: the lock serializes commands on it, the content is the loaded root
/// (`None` until loaded, or after a failure made it unreliable).
type Slot<A> = Arc<tokio::sync::Mutex<Option<Cached<A>>>>;

/// A cached aggregate.
#[derive(Debug)]
struct Cached<A: Aggregate> {
    root: AggregateRoot<A>,
    /// Another writer moved the stream since the cache last knew it (a command on it met a
    /// conflict): the next command reads the tail before it runs, until a tail read finds
    /// nothing new. Two processes taking turns on one aggregate then cost a tail read and an
    /// append per command, as without the cache, instead of a failed append as well.
    contended: bool,
}

/// What a command learned about its aggregate's stream, for the cache.
#[derive(Debug, Default)]
struct Notes {
    /// A cached state was behind its stream.
    stale: bool,
    /// A guess that the stream was new was tried: whether it was right.
    guess: Option<bool>,
}

/// How far the state a command runs on is known to be current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// Loaded (or caught up) for this command.
    Loaded,
    /// From the cache: current unless another process wrote since.
    Cached,
    /// Not loaded at all: the default state of an aggregate the cache does not know, tried in
    /// case the stream is new.
    Guessed,
}

#[derive(Debug)]
struct AggregateCache<A: Aggregate> {
    capacity: usize,
    slots: Mutex<HashMap<StreamId, Slot<A>>>,
    /// How often a miss was a new stream: a right guess (or a load that found an empty
    /// stream) adds [`GUESS_RIGHT`], a wrong one takes [`GUESS_WRONG`]; misses guess while
    /// the score is not negative, that is while at least four in five guesses are right. A
    /// wrong guess costs a failed append before the load; a right one saves the load. Only a
    /// command that the default state accepts is ever guessed (creating commands, as a rule).
    guess_score: AtomicI32,
}

const GUESS_RIGHT: i32 = 1;
const GUESS_WRONG: i32 = 4;
const GUESS_SCORE_BOUND: i32 = 16;

impl<A: Aggregate> AggregateCache<A> {
    fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            slots: Mutex::new(HashMap::new()),
            // A new cache guesses after its first miss found an empty stream: a repository
            // made for one request and dropped never pays for a wrong guess.
            guess_score: AtomicI32::new(-GUESS_RIGHT),
        }
    }

    fn guessing(&self) -> bool {
        self.guess_score.load(Ordering::Relaxed) >= 0
    }

    fn learn(&self, right: bool) {
        let step = if right { GUESS_RIGHT } else { -GUESS_WRONG };
        // Racing updates may lose a step; the score is a hint.
        let score = self.guess_score.load(Ordering::Relaxed);
        self.guess_score.store(
            (score + step).clamp(-GUESS_SCORE_BOUND, GUESS_SCORE_BOUND),
            Ordering::Relaxed,
        );
    }

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
    /// A repository for the default tenant, without snapshots, with an aggregate cache of
    /// [`DEFAULT_CACHE_CAPACITY`] aggregates (see [`with_cache`](Self::with_cache) and
    /// [`without_cache`](Self::without_cache)).
    ///
    /// Make one repository per aggregate type and clone it where it is needed: clones share the
    /// cache.
    pub fn new(store: S) -> Self {
        Self {
            store,
            snapshots: NoSnapshots,
            policy: SnapshotPolicy::Never,
            retry: RetryPolicy::default(),
            tenant: TenantId::default(),
            cache: Some(Arc::new(AggregateCache::new(DEFAULT_CACHE_CAPACITY))),
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

    /// Keeps up to `capacity` aggregates in memory (a new repository keeps
    /// [`DEFAULT_CACHE_CAPACITY`]) and runs commands on one aggregate one at a time in this
    /// process (no retry storms on a hot aggregate).
    ///
    /// A cached aggregate is not reloaded before a command: the append's version check
    /// detects a write from another process, and the conflict reloads only the new tail,
    /// without the retry policy's wait. An aggregate that met such a conflict reads its tail
    /// before each later command until a read finds nothing new, so processes taking turns
    /// on one aggregate pay a read and an append per command, as without the cache. A
    /// command the cached state rejects, or that changes nothing, is decided again on the
    /// stored state: a stale cache never rejects a command.
    ///
    /// On a miss, a command that the aggregate's default state accepts (a creating command)
    /// is appended as the stream's first events without a load, while most such misses
    /// turned out to be new streams; if the stream exists, the append conflicts and the
    /// aggregate is loaded. Replaces the cache, emptying it.
    ///
    /// A command holds its aggregate's slot until its append returns: a command on the same
    /// aggregate issued from inside that append (a store wrapper or test hook calling this
    /// repository or a clone of it) waits for itself. Give such a writer a repository of its
    /// own.
    #[must_use]
    pub fn with_cache(mut self, capacity: usize) -> Self {
        self.cache = Some(Arc::new(AggregateCache::new(capacity)));
        self
    }

    /// Loads the aggregate before every command, keeping nothing in memory. Commands on one
    /// aggregate then run concurrently and retry their conflicts.
    #[must_use]
    pub fn without_cache(mut self) -> Self {
        self.cache = None;
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
            .read_stream_events(stream, VersionRange::from(root.version().next()))
            .await?;
        for stored in tail {
            if stored.version != root.version().next() {
                return Err(LoadError::Store(StoreError::Corrupt(format!(
                    "stream {stream} skips from version {} to {}",
                    root.version(),
                    stored.version
                ))));
            }
            root.replay(&stored.decode::<A::Event>(stream)?);
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
                return self
                    .run(
                        &stream,
                        &mut root,
                        command,
                        ctx,
                        Known::Loaded,
                        &mut Notes::default(),
                    )
                    .await;
            };
            let slot = cache.slot(&stream);
            let mut guard = slot.lock().await;
            // Whether the stream moved under the cache before this command.
            let mut caught_up = false;
            let (mut root, known) = match guard.take() {
                Some(Cached {
                    root,
                    contended: false,
                }) => (root, Known::Cached),
                Some(Cached {
                    root,
                    contended: true,
                }) => {
                    let version = root.version();
                    let root = self.catch_up(&stream, root).await?;
                    // A tail read that found nothing: this process is alone on it again.
                    caught_up = root.version() != version;
                    (root, Known::Loaded)
                }
                // A miss: the aggregate may well be new (the first command of its life). Try
                // the command on the default state; `run` loads the stream when that state
                // rejects it or the append finds the stream already there.
                // Not with deterministic event ids (a saga's command, perhaps redelivered): an
                // append whose ids are stored replays the stored outcome whatever the
                // expectation, so a guess could cache a state decided on the default one.
                None if cache.guessing() && ctx.id_namespace.is_none() => {
                    (AggregateRoot::new(id), Known::Guessed)
                }
                None => {
                    let root = self.load(id).await?;
                    // Would a guess have been right? Only a command the default state accepts
                    // would have been tried.
                    if matches!(A::default().handle(command.clone()), Ok(e) if !e.is_empty()) {
                        cache.learn(root.version() == Version::ZERO);
                    }
                    (root, Known::Loaded)
                }
            };
            let mut notes = Notes::default();
            let result = self
                .run(&stream, &mut root, command, ctx, known, &mut notes)
                .await;
            if let Some(right) = notes.guess {
                cache.learn(right);
            }
            let contended = caught_up || notes.stale;
            // After a store failure the outcome of the append is unknown: reload next time.
            match &result {
                Err(CommandError::Store(_) | CommandError::Decode(_)) => {}
                _ => *guard = Some(Cached { root, contended }),
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
    ///
    /// `known` says whether `root` was read for this command. A state that was not (cached or
    /// guessed) is trusted only for an append, whose version check proves it current: a
    /// rejection or a command that changes nothing is decided again on the stored state, and a
    /// conflict reloads without waiting (nobody raced this command; the state was old). `notes`
    /// tells the cache what the command found.
    async fn run(
        &self,
        stream: &StreamId,
        root: &mut AggregateRoot<A>,
        command: A::Command,
        ctx: &CommandContext,
        mut known: Known,
        notes: &mut Notes,
    ) -> Result<Executed<A>, CommandError<A::Error>>
    where
        A: Handle,
    {
        let metadata = ctx_metadata(ctx);
        let mut attempt = 1;
        loop {
            let events = match root.state().handle(command.clone()) {
                Ok(events) if !events.is_empty() => events,
                Ok(_) | Err(_) if known != Known::Loaded => {
                    self.refresh(stream, root, known).await?;
                    known = Known::Loaded;
                    continue;
                }
                Ok(events) => {
                    return Ok(Executed {
                        events,
                        version: root.version(),
                        appended: None,
                        attempts: attempt,
                    });
                }
                Err(e) => return Err(CommandError::Rejected(e)),
            };
            let new_events = encode(&events, ctx, &metadata)?;
            let before = root.version();
            match self
                .store
                .append(stream, ExpectedVersion::Exact(before), new_events)
                .await
            {
                Ok(appended) => {
                    tracing::Span::current().record("attempts", attempt);
                    if known == Known::Guessed {
                        notes.guess = Some(true);
                    }
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
                Err(e) if e.is_conflict() && known == Known::Guessed => {
                    // The stream was not new: load it and decide again. Not a retry, since no
                    // other writer raced this command.
                    tracing::debug!(%stream, "not a new stream; loading it");
                    notes.guess = Some(false);
                    self.refresh(stream, root, known).await?;
                    known = Known::Loaded;
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
                    known = Known::Loaded;
                    let id = root.id().to_owned();
                    *root = self.catch_up(stream, AggregateRoot::new(id)).await?;
                }
                Err(e) if e.is_conflict() && attempt < self.retry.max_attempts() => {
                    if known == Known::Cached {
                        // Another process wrote since the cache last knew the stream: read the
                        // tail now, and before the next command too.
                        tracing::debug!(%stream, attempt, "cached state is stale; reading the tail");
                        notes.stale = true;
                    } else {
                        tracing::debug!(%stream, attempt, "conflict; reloading the tail");
                        tokio::time::sleep(self.retry.delay(attempt)).await;
                    }
                    attempt += 1;
                    self.refresh(stream, root, Known::Cached).await?;
                    known = Known::Loaded;
                }
                Err(e) => return Err(CommandError::Store(e)),
            }
        }
    }

    /// Brings `root` up to its stream: the tail after a cached state, a full load (snapshot
    /// and tail) after a guess.
    async fn refresh(
        &self,
        stream: &StreamId,
        root: &mut AggregateRoot<A>,
        known: Known,
    ) -> Result<(), LoadError> {
        let id = root.id().to_owned();
        let current = std::mem::replace(root, AggregateRoot::new(id));
        *root = match known {
            Known::Guessed => self.load(current.id()).await?,
            Known::Cached | Known::Loaded => self.catch_up(stream, current).await?,
        };
        Ok(())
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
