//! The repository's aggregate cache, on by default: what a command costs in store calls, and
//! that a stale cache never decides a command on old state.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use eventsource_core::{
    Aggregate, Appended, DomainEvent, EventStore, ExpectedVersion, Handle, InMemoryEventStore,
    LogFilter, LogPosition, NewEvent, RecordedEvent, Repository, RetryPolicy, StoreError, StreamId,
    TenantId, Version, VersionRange,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum DoorEvent {
    Opened,
    Closed,
    Passed,
}

/// A door: passing needs it open, opening needs it closed.
#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "door", event = DoorEvent)]
struct Door {
    open: bool,
    passed: u64,
}

impl DoorEventHandler for Door {
    fn when_opened(&mut self) {
        self.open = true;
    }
    fn when_closed(&mut self) {
        self.open = false;
    }
    fn when_passed(&mut self) {
        self.passed += 1;
    }
}

#[derive(Debug, Clone, Copy)]
enum DoorCommand {
    Open,
    Close,
    Pass,
}

#[derive(Debug, thiserror::Error)]
#[error("not now")]
struct NotNow;

impl Handle for Door {
    type Command = DoorCommand;
    type Error = NotNow;
    fn handle(&self, command: DoorCommand) -> Result<Vec<DoorEvent>, NotNow> {
        match (command, self.open) {
            (DoorCommand::Open, false) => Ok(vec![DoorEvent::Opened]),
            (DoorCommand::Close, true) => Ok(vec![DoorEvent::Closed]),
            (DoorCommand::Pass, true) => Ok(vec![DoorEvent::Passed]),
            _ => Err(NotNow),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum TallyEvent {
    Counted,
}

/// Accepts every command, even on its default state.
#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "tally", event = TallyEvent)]
struct Tally {
    count: u64,
}

impl TallyEventHandler for Tally {
    fn when_counted(&mut self) {
        self.count += 1;
    }
}

impl Handle for Tally {
    type Command = ();
    type Error = NotNow;
    fn handle(&self, (): ()) -> Result<Vec<TallyEvent>, NotNow> {
        Ok(vec![TallyEvent::Counted])
    }
}

/// Counts the calls a repository makes.
#[derive(Clone, Default)]
struct Counting {
    inner: InMemoryEventStore,
    reads: Arc<AtomicU64>,
    appends: Arc<AtomicU64>,
    conflicts: Arc<AtomicU64>,
}

impl Counting {
    fn calls(&self) -> (u64, u64, u64) {
        (
            self.reads.load(Ordering::SeqCst),
            self.appends.load(Ordering::SeqCst),
            self.conflicts.load(Ordering::SeqCst),
        )
    }
}

impl EventStore for Counting {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        let result = self.inner.append(stream, expected, events).await;
        if matches!(&result, Err(e) if e.is_conflict()) {
            self.conflicts.fetch_add(1, Ordering::SeqCst);
        }
        result
    }
    async fn read_stream(
        &self,
        stream: &StreamId,
        range: VersionRange,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read_stream(stream, range).await
    }
    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
        self.inner.stream_version(stream).await
    }
    async fn read_all(
        &self,
        after: LogPosition,
        limit: usize,
        filter: &LogFilter,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(after, limit, filter).await
    }
    async fn read_by_correlation(
        &self,
        tenant: &TenantId,
        correlation_id: Uuid,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_by_correlation(tenant, correlation_id).await
    }
}

#[tokio::test]
async fn a_new_repository_caches_and_opens_new_aggregates_without_a_read() {
    let store = Counting::default();
    let repo = Repository::<Door, _>::new(store.clone());
    // The first miss reads: a new cache does not guess yet.
    repo.execute("first", DoorCommand::Open).await.unwrap();
    assert_eq!(store.calls(), (1, 1, 0));
    // It found a new stream, so the next creating command is appended unread, and the
    // commands after it find the aggregate in the cache.
    repo.execute("second", DoorCommand::Open).await.unwrap();
    for _ in 0..9 {
        repo.execute("second", DoorCommand::Pass).await.unwrap();
    }
    assert_eq!(
        store.calls(),
        (1, 11, 0),
        "ten commands, ten appends, no read"
    );
    let loaded = repo.load("second").await.unwrap();
    assert_eq!(
        (loaded.version(), loaded.state().passed),
        (Version::new(10), 9)
    );
}

#[tokio::test]
async fn a_miss_on_a_command_the_default_state_rejects_loads_first() {
    let store = Counting::default();
    let writer = Repository::<Door, _>::new(store.clone()).without_cache();
    writer.execute("d", DoorCommand::Open).await.unwrap();
    let repo = Repository::<Door, _>::new(store.clone());
    repo.execute("new", DoorCommand::Open).await.unwrap();
    let before = store.calls();
    let done = repo.execute("d", DoorCommand::Pass).await.unwrap();
    assert_eq!((done.version, done.attempts), (Version::new(2), 1));
    let after = store.calls();
    assert_eq!(
        (after.0 - before.0, after.1 - before.1, after.2 - before.2),
        (1, 1, 0),
        "one load, one append, no failed guess"
    );
}

#[tokio::test]
async fn a_wrong_guess_loads_the_stream_and_stops_the_guessing() {
    let store = Counting::default();
    let writer = Repository::<Tally, _>::new(store.clone()).without_cache();
    for id in ["x", "y", "z"] {
        writer.execute(id, ()).await.unwrap();
    }
    let repo = Repository::<Tally, _>::new(store.clone()).with_retry(RetryPolicy::never());
    repo.execute("new", ()).await.unwrap(); // a new stream: the cache starts guessing
    let before = store.calls();
    // A guess on an existing stream: the append conflicts, the stream is loaded, the command
    // lands on it. The guess is not an attempt: a retry policy of one attempt still succeeds.
    let done = repo.execute("x", ()).await.unwrap();
    assert_eq!((done.version, done.attempts), (Version::new(2), 1));
    let after = store.calls();
    assert_eq!(
        (after.0 - before.0, after.1 - before.1, after.2 - before.2),
        (1, 2, 1)
    );
    // Wrong guesses weigh more than right ones: the next misses load first.
    for id in ["y", "z"] {
        repo.execute(id, ()).await.unwrap();
    }
    let last = store.calls();
    assert_eq!(
        (last.0 - after.0, last.1 - after.1, last.2 - after.2),
        (2, 2, 0)
    );
}

#[tokio::test]
async fn a_stale_cache_never_rejects_a_command() {
    let store = InMemoryEventStore::new();
    let here = Repository::<Door, _>::new(store.clone());
    let elsewhere = Repository::<Door, _>::new(store.clone());
    here.execute("d", DoorCommand::Open).await.unwrap();
    here.execute("d", DoorCommand::Close).await.unwrap();
    // Another process opens the door; this cache still holds it closed.
    elsewhere.execute("d", DoorCommand::Open).await.unwrap();
    let done = here
        .execute("d", DoorCommand::Pass)
        .await
        .expect("decided on the stored state, not the cached one");
    assert_eq!(done.version, Version::new(4));
    // A command that the stored state rejects is still rejected.
    let err = here.execute("d", DoorCommand::Open).await.unwrap_err();
    assert!(err.rejection().is_some(), "{err}");
}

#[tokio::test]
async fn processes_taking_turns_conflict_once_each_then_read_the_tail_first() {
    let store = Counting::default();
    let a = Repository::<Tally, _>::new(store.clone());
    let b = Repository::<Tally, _>::new(store.clone());
    for i in 0..20 {
        let repo = if i % 2 == 0 { &a } else { &b };
        let done = repo.execute("t", ()).await.unwrap();
        assert_eq!(done.version, Version::new(i + 1));
    }
    let (_, appends, conflicts) = store.calls();
    assert!(conflicts <= 2, "{conflicts} conflicts");
    assert_eq!(appends, 20 + conflicts);
    // Alone again, a tail read that finds nothing puts the aggregate back to one append a
    // command.
    a.execute("t", ()).await.unwrap();
    a.execute("t", ()).await.unwrap();
    let before = store.calls();
    a.execute("t", ()).await.unwrap();
    let after = store.calls();
    assert_eq!((after.0 - before.0, after.1 - before.1), (0, 1));
    assert_eq!(a.load("t").await.unwrap().state().count, 23);
}

#[tokio::test]
async fn load_reads_the_store_not_the_cache() {
    let store = Counting::default();
    let repo = Repository::<Door, _>::new(store.clone());
    repo.execute("d", DoorCommand::Open).await.unwrap();
    let before = store.calls().0;
    let loaded = repo.load("d").await.unwrap();
    assert_eq!(loaded.version(), Version::new(1));
    assert_eq!(store.calls().0, before + 1, "a load is a read");
}
