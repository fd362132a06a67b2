//! Snapshots: snapshot plus tail equals a full replay; stale, corrupt and older snapshots never
//! win (DESIGN §4.5, §8).

mod support;

use eventsource_core::{
    Aggregate, DomainEvent, Handle, Repository, Snapshot, SnapshotPolicy, SnapshotStore, TenantId,
    Version,
};
use eventsource_postgres::{PgEventStore, PgSnapshotStore};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum TallyEvent {
    Added { amount: u64 },
    Reset,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "tally", event = TallyEvent, snapshot = 1)]
struct Tally {
    total: u64,
    history: Vec<u64>,
    resets: u32,
}

impl TallyEventHandler for Tally {
    fn when_added(&mut self, e: tally_event::Added) {
        self.total += e.amount;
        self.history.push(*e.amount);
    }
    fn when_reset(&mut self) {
        self.total = 0;
        self.resets += 1;
    }
}

#[derive(Debug, Clone)]
enum TallyCommand {
    Add(u64),
    Reset,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Handle for Tally {
    type Command = TallyCommand;
    type Error = Never;

    fn handle(&self, command: TallyCommand) -> Result<Vec<TallyEvent>, Never> {
        Ok(match command {
            TallyCommand::Add(amount) => vec![TallyEvent::Added { amount }],
            TallyCommand::Reset => vec![TallyEvent::Reset],
        })
    }
}

fn repositories(
    pool: &PgPool,
    tenant: &TenantId,
    every: u64,
) -> (
    Repository<Tally, PgEventStore, PgSnapshotStore>,
    Repository<Tally, PgEventStore>,
) {
    let store = PgEventStore::new(pool.clone());
    let with_snapshots = Repository::new(store.clone())
        .with_tenant(tenant.clone())
        .with_snapshots(
            PgSnapshotStore::new(pool.clone()),
            SnapshotPolicy::Every(every),
        );
    let replay_only = Repository::new(store).with_tenant(tenant.clone());
    (with_snapshots, replay_only)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_plus_tail_equals_full_replay() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let tenant = support::tenant("snapshot");
    let snapshots = PgSnapshotStore::new(pool.clone());
    // Random command sequences and snapshot intervals, checked after every command.
    for case in 0..6u64 {
        let every = rand::random_range(1..8u64);
        let (repo, replay) = repositories(&pool, &tenant, every);
        let id = format!("tally-{case}");
        let commands = rand::random_range(1..40u64);
        for _ in 0..commands {
            let command = if rand::random_bool(0.1) {
                TallyCommand::Reset
            } else {
                TallyCommand::Add(rand::random_range(0..1000))
            };
            repo.execute(&id, command).await.unwrap();
            let from_snapshot = repo.load(&id).await.unwrap();
            let from_events = replay.load(&id).await.unwrap();
            assert_eq!(from_snapshot.version(), from_events.version());
            assert_eq!(from_snapshot.state(), from_events.state());
        }
        let stored = snapshots.load(&repo.stream_id(&id), 1).await.unwrap();
        match stored {
            Some(s) => assert!(s.version.get() <= commands && s.version.get() > commands - every),
            None => assert!(
                commands < every,
                "a snapshot every {every} events was taken"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_schema_and_corrupt_snapshots_are_ignored() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let tenant = support::tenant("bad-snapshot");
    let (repo, replay) = repositories(&pool, &tenant, 1000);
    let snapshots = PgSnapshotStore::new(pool.clone());
    for amount in 1..=5 {
        repo.execute("t", TallyCommand::Add(amount)).await.unwrap();
    }
    let stream = repo.stream_id("t");
    let expected = replay.load("t").await.unwrap();

    // A snapshot of another schema version, claiming a lie at a later version: not used.
    snapshots
        .save(Snapshot::new(
            stream.clone(),
            Version::new(5),
            0,
            json!({ "total": 999 }),
        ))
        .await
        .unwrap();
    let loaded = repo.load("t").await.unwrap();
    assert_eq!(loaded.state(), expected.state());

    // A snapshot of the current schema version that no longer decodes: replayed instead.
    snapshots
        .save(Snapshot::new(
            stream.clone(),
            Version::new(4),
            1,
            json!({ "garbage": true }),
        ))
        .await
        .unwrap();
    let loaded = repo.load("t").await.unwrap();
    assert_eq!(loaded.state(), expected.state());
    assert_eq!(loaded.version(), Version::new(5));

    // And commands still work on top of it.
    repo.execute("t", TallyCommand::Add(6)).await.unwrap();
    assert_eq!(repo.load("t").await.unwrap().state().total, 21);
}

/// A snapshot ahead of its stream (the events restored from an older backup than the
/// snapshots): the first command conflicts with the stream's real version and the repository
/// replays the stream, instead of retrying on the snapshot's state until its retries run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_ahead_of_its_stream_costs_one_conflict() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let tenant = support::tenant("ahead-snapshot");
    let (repo, replay) = repositories(&pool, &tenant, 1000);
    for amount in 1..=3 {
        repo.execute("t", TallyCommand::Add(amount)).await.unwrap();
    }
    PgSnapshotStore::new(pool.clone())
        .save(Snapshot::new(
            repo.stream_id("t"),
            Version::new(9),
            1,
            json!({ "total": 999, "history": [], "resets": 0 }),
        ))
        .await
        .unwrap();
    // Without the cache, which holds the aggregate at version 3 since the commands above: the
    // command loads the snapshot.
    let repo = repo
        .without_cache()
        .with_retry(eventsource_core::RetryPolicy::default().with_max_attempts(2));
    let done = repo.execute("t", TallyCommand::Add(4)).await.unwrap();
    assert_eq!((done.version, done.attempts), (Version::new(4), 2));
    let stored = replay.load("t").await.unwrap();
    assert_eq!(stored.state().history, [1, 2, 3, 4]);
    assert_eq!(stored.state().total, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_snapshot_never_overwrites_a_newer_one() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let tenant = support::tenant("monotonic");
    let snapshots = PgSnapshotStore::new(pool.clone());
    let stream = eventsource_core::StreamId::new(tenant, "tally", "t");
    // Writers racing with snapshots at versions 1..=40 in random order: the newest stays.
    let mut versions: Vec<u64> = (1..=40).collect();
    versions.sort_by_cached_key(|_| rand::random::<u32>());
    let tasks: Vec<_> = versions
        .into_iter()
        .map(|v| {
            let (snapshots, stream) = (snapshots.clone(), stream.clone());
            tokio::spawn(async move {
                snapshots
                    .save(Snapshot::new(
                        stream,
                        Version::new(v),
                        1,
                        json!({ "at": v }),
                    ))
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let stored = snapshots.load(&stream, 1).await.unwrap().unwrap();
    assert_eq!(
        (stored.version, stored.state),
        (Version::new(40), json!({ "at": 40 }))
    );
}
