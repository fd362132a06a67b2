//! What a user sees when PostgreSQL drops the connection: a typed, retryable error, nothing
//! half-written, and a retry with the same event ids that lands exactly once.

mod support;

use eventsource_core::{
    Aggregate, CommandError, DomainEvent, EventStore, ExpectedVersion, Handle, NewEvent,
    Repository, StoreError, StreamId, TenantId, Version, VersionRange,
};
use eventsource_postgres::{MIGRATOR, PgEventStore};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgPool, PgPoolOptions};

async fn pool(url: &str, max: u32) -> PgPool {
    let pool = PgPoolOptions::new()
        .max_connections(max)
        .test_before_acquire(false)
        .connect(url)
        .await
        .unwrap();
    MIGRATOR.run(&pool).await.unwrap();
    pool
}

/// Terminates the session `pid`, as a failover or an idle-connection reaper would, and waits
/// until it is gone (`pg_terminate_backend` only signals).
async fn terminate(admin: &PgPool, pid: i32) {
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(admin)
        .await
        .unwrap();
    assert!(killed);
    support::wait_for("the terminated session to end", async || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_one(admin)
            .await
            .unwrap()
            == 0
    })
    .await;
}

/// Terminates the one connection of `victim`'s pool while it sits idle in the pool.
async fn drop_connections(admin: &PgPool, victim: &PgPool) {
    let mut conn = victim.acquire().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    terminate(admin, pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_a_retryable_error_and_the_retry_lands_once() {
    let Some(url) = support::service_url("DATABASE_URL") else {
        return;
    };
    let admin = pool(&url, 2).await;
    let victim = pool(&url, 1).await;
    let store = PgEventStore::new(victim.clone());
    let stream = StreamId::new(TenantId::new(support::unique("faults")), "thing", "t-1");
    let batch = vec![
        NewEvent::new("happened", 1, serde_json::json!({ "n": 1 })),
        NewEvent::new("happened", 1, serde_json::json!({ "n": 2 })),
    ];

    // The connection dies under a transaction the application holds: the append inside it
    // must fail with a typed, retryable error (a pool may replace an idle dead connection
    // silently, so the pool is not where to provoke this deterministically).
    let mut tx = eventsource_postgres::begin_tenant(&victim, stream.tenant())
        .await
        .unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    terminate(&admin, pid).await;
    let err =
        PgEventStore::append_in_tx(&mut tx, &stream, ExpectedVersion::NoStream, batch.clone())
            .await
            .expect_err("the connection was terminated");
    drop(tx);
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.is_retryable());

    let appended = store
        .append(&stream, ExpectedVersion::NoStream, batch.clone())
        .await
        .expect("a retry on a fresh connection");
    assert_eq!(appended.version, Version::new(2));
    // The acknowledgement of that retry could have been lost too: one more retry is a no-op.
    let again = store
        .append(&stream, ExpectedVersion::NoStream, batch)
        .await
        .expect("idempotent");
    assert_eq!(again, appended);
    let stored = store
        .read_stream(&stream, VersionRange::all())
        .await
        .unwrap();
    assert_eq!(stored.len(), 2, "exactly once");
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum CounterEvent {
    Added { by: u32 },
}

#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "counter", event = CounterEvent, snapshot = 1)]
struct Counter {
    total: u64,
}

impl CounterEventHandler for Counter {
    fn when_added(&mut self, e: counter_event::Added) {
        self.total += u64::from(*e.by);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Handle for Counter {
    type Command = u32;
    type Error = Never;

    fn handle(&self, by: u32) -> Result<Vec<CounterEvent>, Never> {
        Ok(vec![CounterEvent::Added { by }])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cached_repository_recovers_from_a_dropped_connection() {
    let Some(url) = support::service_url("DATABASE_URL") else {
        return;
    };
    let admin = pool(&url, 2).await;
    let victim = pool(&url, 1).await;
    let repo = Repository::<Counter, _>::new(PgEventStore::new(victim.clone()))
        .with_tenant(TenantId::new(support::unique("faults")))
        .with_snapshots(
            eventsource_postgres::PgSnapshotStore::new(victim.clone()),
            eventsource_core::SnapshotPolicy::Every(3),
        )
        .with_cache(16);
    for _ in 0..5 {
        repo.execute("c", 1).await.unwrap();
    }
    drop_connections(&admin, &victim).await;
    // Either the pooled connection is found dead (a typed, retryable error; the cache forgets
    // the aggregate because the append's outcome is unknown, and the retry reloads it) or the
    // pool already replaced it. Either way the command lands exactly once.
    let done = match repo.execute("c", 10).await {
        Ok(done) => done,
        Err(CommandError::Store(e)) if e.is_retryable() => {
            repo.execute("c", 10).await.expect("retry")
        }
        Err(other) => panic!("unexpected error: {other:?}"),
    };
    assert_eq!(done.version, Version::new(6));
    assert_eq!(repo.load("c").await.unwrap().state().total, 15);
}

/// Connections die at random while writers append through group commit (kept lane connections,
/// groups in flight, idle pooled connections alike). Every writer retries a failed append with
/// the same event ids, as the contract allows; in the end each stream holds exactly its events,
/// once each, in order, with dense versions. Every error on the way is typed and retryable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_under_group_commit_lose_no_event_and_duplicate_none() {
    use std::str::FromStr as _;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    const WRITERS: usize = 12;
    const EVENTS: u64 = 60;

    let Some(url) = support::service_url("DATABASE_URL") else {
        return;
    };
    let admin = pool(&url, 2).await;
    let name = support::unique("chaos");
    let options = sqlx::postgres::PgConnectOptions::from_str(&url)
        .unwrap()
        .application_name(&name);
    let victim = PgPoolOptions::new()
        .max_connections(8)
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .unwrap();
    let store = PgEventStore::new(victim.clone());
    let tenant = TenantId::new(support::unique("chaos"));

    let done = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicU64::new(0));
    let terminator = {
        let (admin, name, done, killed) =
            (admin.clone(), name.clone(), done.clone(), killed.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE application_name = $1 ORDER BY random() LIMIT 1) AS t",
                )
                .bind(&name)
                .fetch_one(&admin)
                .await
                .unwrap();
                killed.fetch_add(u64::try_from(n).unwrap(), Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(3)).await;
            }
        })
    };

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, tenant) = (store.clone(), tenant.clone());
            tokio::spawn(async move {
                let stream = StreamId::new(tenant, "thing", format!("w-{w}"));
                let mut ids = Vec::new();
                for n in 0..EVENTS {
                    let event = NewEvent::new("happened", 1, serde_json::json!({ "n": n }));
                    ids.push(event.event_id);
                    let expected = ExpectedVersion::Exact(Version::new(n));
                    let mut attempts = 0;
                    loop {
                        attempts += 1;
                        match store.append(&stream, expected, vec![event.clone()]).await {
                            Ok(appended) => {
                                assert_eq!(appended.version, Version::new(n + 1));
                                break;
                            }
                            Err(e) if e.is_retryable() && attempts < 100 => {
                                assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
                            }
                            Err(e) => panic!("append {n} of {stream}: {e:?}"),
                        }
                    }
                }
                (stream, ids)
            })
        })
        .collect();
    let mut streams = Vec::new();
    for writer in writers {
        streams.push(writer.await.unwrap());
    }
    done.store(true, Ordering::Relaxed);
    terminator.await.unwrap();
    assert!(
        killed.load(Ordering::Relaxed) > 0,
        "the test killed no connection: it proved nothing"
    );

    let reader = PgEventStore::new(admin.clone());
    for (stream, ids) in streams {
        let stored = reader
            .read_stream(&stream, VersionRange::all())
            .await
            .unwrap();
        let versions: Vec<u64> = stored.iter().map(|e| e.version.get()).collect();
        assert_eq!(versions, (1..=EVENTS).collect::<Vec<_>>(), "{stream}");
        let stored_ids: Vec<_> = stored.iter().map(|e| e.event_id).collect();
        assert_eq!(stored_ids, ids, "{stream}: each event once, in order");
    }
}
