//! Optimistic concurrency and idempotent retries (DESIGN §4.2, §8).

mod support;

use std::collections::HashSet;
use std::time::Duration;

use eventsource_core::{
    EventStore, ExpectedVersion, NewEvent, StoreError, StreamId, Version, VersionRange,
};
use eventsource_postgres::{PgEventStore, begin_tenant};
use serde_json::json;
use sqlx::PgPool;

fn event(n: u64) -> NewEvent {
    NewEvent::new("Numbered", 1, json!({ "n": n }))
}

async fn count(pool: &PgPool, stream: &StreamId) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE tenant_id = $1 AND aggregate_type = $2 AND aggregate_id = $3",
    )
    .bind(stream.tenant().as_str())
    .bind(stream.aggregate_type())
    .bind(stream.aggregate_id())
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_race_has_one_winner_and_the_loser_keeps_a_usable_transaction() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let store = PgEventStore::new(pool.clone());
    let tenant = support::tenant("race");
    let hot = StreamId::new(tenant.clone(), "account", "hot");
    let audit = StreamId::new(tenant.clone(), "audit", "loser");
    store
        .append(&hot, ExpectedVersion::NoStream, vec![event(0)])
        .await
        .unwrap();

    let mut winner = begin_tenant(&pool, &tenant).await.unwrap();
    PgEventStore::append_in_tx(
        &mut winner,
        &hot,
        ExpectedVersion::Exact(Version::new(1)),
        vec![event(1)],
    )
    .await
    .unwrap();

    // The loser's append waits on the winner's row lock ...
    let loser = {
        let (pool, tenant, hot) = (pool.clone(), tenant.clone(), hot.clone());
        tokio::spawn(async move {
            let mut tx = begin_tenant(&pool, &tenant).await.unwrap();
            let outcome = PgEventStore::append_in_tx(
                &mut tx,
                &hot,
                ExpectedVersion::Exact(Version::new(1)),
                vec![event(2)],
            )
            .await;
            (tx, outcome)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !loser.is_finished(),
        "the loser waits for the winner's commit"
    );
    winner.commit().await.unwrap();

    // ... and gets a conflict, as data, once the winner commits.
    let (mut tx, outcome) = loser.await.unwrap();
    let err = outcome.unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::Conflict { expected: ExpectedVersion::Exact(v), actual, .. }
                if *v == Version::new(1) && *actual == Version::new(2)
        ),
        "{err}"
    );
    // Its transaction still works: it can do other work and commit it.
    PgEventStore::append_in_tx(&mut tx, &audit, ExpectedVersion::NoStream, vec![event(99)])
        .await
        .expect("the transaction survived the conflict");
    tx.commit().await.unwrap();

    let hot_events = store.read_stream(&hot, VersionRange::all()).await.unwrap();
    let numbers: Vec<_> = hot_events
        .iter()
        .map(|e| e.payload["n"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, vec![0, 1], "only the winner's event");
    assert_eq!(store.stream_version(&audit).await.unwrap(), Version::new(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_parallel_any_appends_lose_nothing_and_leave_dense_versions() {
    let Some(pool) = support::pool_with(24).await else {
        return;
    };
    let store = PgEventStore::new(pool.clone());
    let stream = StreamId::new(support::tenant("any"), "account", "hot");
    let tasks: Vec<_> = (0..20u64)
        .map(|task| {
            let (store, stream) = (store.clone(), stream.clone());
            tokio::spawn(async move {
                for i in 0..5u64 {
                    store
                        .append(&stream, ExpectedVersion::Any, vec![event(task * 100 + i)])
                        .await
                        .expect("Any never conflicts");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let stored = store
        .read_stream(&stream, VersionRange::all())
        .await
        .unwrap();
    let versions: Vec<u64> = stored.iter().map(|e| e.version.get()).collect();
    assert_eq!(versions, (1..=100).collect::<Vec<_>>(), "dense versions");
    let distinct: HashSet<u64> = stored
        .iter()
        .map(|e| e.payload["n"].as_u64().unwrap())
        .collect();
    assert_eq!(distinct.len(), 100, "nothing lost or duplicated");
    assert_eq!(count(&pool, &stream).await, 100);
    assert_eq!(
        store.stream_version(&stream).await.unwrap(),
        Version::new(100)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_with_the_same_event_ids_succeeds_without_duplicates() {
    let Some(pool) = support::pool_with(12).await else {
        return;
    };
    let store = PgEventStore::new(pool.clone());
    let tenant = support::tenant("retry");
    let stream = StreamId::new(tenant.clone(), "account", "a");
    let batch: Vec<NewEvent> = (0..3).map(event).collect();
    let first = store
        .append(&stream, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    // The acknowledgement was "lost": the client retries with every kind of expectation.
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(Version::ZERO),
        ExpectedVersion::Any,
        ExpectedVersion::StreamExists,
    ] {
        let again = store
            .append(&stream, expected, batch.clone())
            .await
            .unwrap();
        assert_eq!(
            again, first,
            "a retry at {expected} returns the original outcome"
        );
    }
    assert_eq!(count(&pool, &stream).await, 3);

    // A retry inside a caller's transaction behaves the same and leaves it usable.
    let mut tx = begin_tenant(&pool, &tenant).await.unwrap();
    let again = PgEventStore::append_in_tx(&mut tx, &stream, ExpectedVersion::Any, batch.clone())
        .await
        .unwrap();
    assert_eq!(again, first);
    sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();

    // Concurrent retries of one batch to a new stream: one writes, all succeed alike.
    let fresh = StreamId::new(tenant.clone(), "account", "b");
    let batch: Vec<NewEvent> = (10..13).map(event).collect();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, fresh, batch) = (store.clone(), fresh.clone(), batch.clone());
            tokio::spawn(async move { store.append(&fresh, ExpectedVersion::Any, batch).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap().expect("every retry succeeds"));
    }
    assert!(outcomes.windows(2).all(|w| w[0] == w[1]), "{outcomes:?}");
    assert_eq!(count(&pool, &fresh).await, 3);

    // Reusing one of the ids in another batch is not a retry.
    let mixed = vec![batch[0].clone(), event(20)];
    let err = store
        .append(&fresh, ExpectedVersion::Any, mixed)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateEventId { event_id } if event_id == batch[0].event_id),
        "{err}"
    );
    assert_eq!(count(&pool, &fresh).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_keeps_each_append_s_own_outcome() {
    let Some(pool) = support::pool_with(8).await else {
        return;
    };
    let store = PgEventStore::new(pool.clone()).with_group_commit(2, 64);
    let tenant = support::tenant("group");
    let contested = StreamId::new(tenant.clone(), "account", "contested");
    // 32 concurrent appends: 16 race for one new stream, 16 go to streams of their own. They
    // share transactions; each still gets its own outcome.
    let tasks: Vec<_> = (0..32u64)
        .map(|i| {
            let (store, tenant, contested) = (store.clone(), tenant.clone(), contested.clone());
            tokio::spawn(async move {
                let stream = if i % 2 == 0 {
                    contested
                } else {
                    StreamId::new(tenant, "account", format!("own-{i}"))
                };
                (
                    i,
                    store
                        .append(&stream, ExpectedVersion::NoStream, vec![event(i)])
                        .await,
                )
            })
        })
        .collect();
    let mut winners = 0;
    for task in tasks {
        let (i, outcome) = task.await.unwrap();
        match outcome {
            Ok(appended) => {
                assert_eq!(appended.version, Version::new(1));
                if i % 2 == 0 {
                    winners += 1;
                }
            }
            Err(StoreError::Conflict { actual, .. }) => {
                assert_eq!(i % 2, 0, "only the contested stream conflicts");
                assert_eq!(actual, Version::new(1));
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(
        winners, 1,
        "exactly one append creates the contested stream"
    );
    assert_eq!(count(&pool, &contested).await, 1);
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE tenant_id = $1")
        .bind(tenant.as_str())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(total, 17);
}

/// The outcome an append must get.
#[derive(Debug)]
enum Want {
    Version(u64),
    Conflict(u64),
    Duplicate,
}

/// One concurrent wave through group commit mixing everything a group can hold: several
/// tenants, `Exact` appends right and stale, `Any` appends, two appends to one stream,
/// idempotent retries of stored batches, reused ids and multi-event batches. Each append
/// must get exactly the outcome it would get alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_handles_a_mixed_wave_like_single_appends() {
    let Some(pool) = support::pool_with(8).await else {
        return;
    };
    let store = PgEventStore::new(pool.clone()).with_group_commit(2, 128);
    let (first, second) = (support::tenant("wave-a"), support::tenant("wave-b"));
    let existing = StreamId::new(first.clone(), "w", "existing");
    let stored = vec![event(0), event(1)];
    store
        .append(&existing, ExpectedVersion::NoStream, stored.clone())
        .await
        .unwrap();

    let mut plans: Vec<(StreamId, ExpectedVersion, Vec<NewEvent>, Want)> = Vec::new();
    for i in 0..8u64 {
        let tenant = if i % 2 == 0 { &first } else { &second };
        plans.push((
            StreamId::new(tenant.clone(), "w", format!("new-{i}")),
            ExpectedVersion::NoStream,
            vec![event(i), event(i + 100)],
            Want::Version(2),
        ));
        plans.push((
            StreamId::new(tenant.clone(), "w", format!("any-{i}")),
            ExpectedVersion::Any,
            vec![event(i)],
            Want::Version(1),
        ));
    }
    plans.push((
        existing.clone(),
        ExpectedVersion::Exact(Version::new(1)),
        vec![event(9)],
        Want::Conflict(2),
    ));
    plans.push((
        existing.clone(),
        ExpectedVersion::NoStream,
        stored.clone(),
        Want::Version(2),
    ));
    plans.push((
        StreamId::new(first.clone(), "w", "thief"),
        ExpectedVersion::Any,
        vec![stored[1].clone()],
        Want::Duplicate,
    ));
    let tasks: Vec<_> = plans
        .into_iter()
        .map(|(stream, expected, events, want)| {
            let store = store.clone();
            tokio::spawn(async move {
                let outcome = store.append(&stream, expected, events).await;
                (stream, want, outcome)
            })
        })
        .collect();
    for task in tasks {
        let (stream, want, outcome) = task.await.unwrap();
        match (&want, &outcome) {
            (Want::Version(v), Ok(appended)) => assert_eq!(appended.version.get(), *v, "{stream}"),
            (Want::Conflict(v), Err(StoreError::Conflict { actual, .. })) => {
                assert_eq!(actual.get(), *v, "{stream}");
            }
            (Want::Duplicate, Err(StoreError::DuplicateEventId { .. })) => {}
            _ => panic!("{stream}: wanted {want:?}, got {outcome:?}"),
        }
    }
    // Two more appends to one stream in the same wave: both land, versions dense.
    let twice = StreamId::new(second.clone(), "w", "twice");
    let (one, two) = tokio::join!(
        store.append(&twice, ExpectedVersion::Any, vec![event(1)]),
        store.append(&twice, ExpectedVersion::Any, vec![event(2)]),
    );
    let mut versions = [one.unwrap().version.get(), two.unwrap().version.get()];
    versions.sort_unstable();
    assert_eq!(versions, [1, 2]);
    assert_eq!(
        count(&pool, &existing).await,
        2,
        "nothing was added to the existing stream"
    );
    let per_tenant = |tenant: &eventsource_core::TenantId| {
        let (pool, tenant) = (pool.clone(), tenant.as_str().to_owned());
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(per_tenant(&first).await, 2 + 4 * 2 + 4);
    assert_eq!(per_tenant(&second).await, 4 * 2 + 4 + 2);
}

/// One concurrent wave of one tenant's appends (the usual group, one plain statement) with
/// every expectation right and wrong: each append must get exactly the outcome it would get
/// alone, and a rejected one must write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_of_one_tenant_keeps_every_expectation() {
    let Some(pool) = support::pool_with(8).await else {
        return;
    };
    let store = PgEventStore::new(pool.clone()).with_group_commit(2, 128);
    let tenant = support::tenant("one-tenant-wave");
    let stream = |name: String| StreamId::new(tenant.clone(), "w", name);
    for i in 0..5u64 {
        store
            .append(
                &stream(format!("existing-{i}")),
                ExpectedVersion::NoStream,
                vec![event(i)],
            )
            .await
            .unwrap();
    }

    let mut plans: Vec<(StreamId, ExpectedVersion, usize, Want)> = Vec::new();
    for i in 0..5u64 {
        let existing = stream(format!("existing-{i}"));
        let missing = stream(format!("missing-{i}"));
        let (exact, stale) = (Version::new(1), Version::new(7));
        // One append per stream: a second would wait for the next group.
        let (target, expected, want) = match i {
            0 => (existing, ExpectedVersion::Exact(exact), Want::Version(3)),
            1 => (existing, ExpectedVersion::Exact(stale), Want::Conflict(1)),
            2 => (existing, ExpectedVersion::StreamExists, Want::Version(3)),
            3 => (existing, ExpectedVersion::NoStream, Want::Conflict(1)),
            _ => (existing, ExpectedVersion::Any, Want::Version(3)),
        };
        plans.push((target, expected, 2, want));
        let (expected, want) = match i {
            0 => (ExpectedVersion::Exact(Version::new(1)), Want::Conflict(0)),
            1 => (ExpectedVersion::StreamExists, Want::Conflict(0)),
            2 => (ExpectedVersion::NoStream, Want::Version(1)),
            3 => (ExpectedVersion::Exact(Version::ZERO), Want::Version(1)),
            _ => (ExpectedVersion::Any, Want::Version(1)),
        };
        plans.push((missing, expected, 1, want));
    }
    for i in 0..12u64 {
        plans.push((
            stream(format!("new-{i}")),
            ExpectedVersion::NoStream,
            1,
            Want::Version(1),
        ));
    }
    let tasks: Vec<_> = plans
        .into_iter()
        .map(|(stream, expected, n, want)| {
            let store = store.clone();
            tokio::spawn(async move {
                let events = (0..n).map(|k| event(k as u64)).collect();
                let outcome = store.append(&stream, expected, events).await;
                (stream, n, want, outcome)
            })
        })
        .collect();
    let mut written = 0;
    for task in tasks {
        let (stream, n, want, outcome) = task.await.unwrap();
        let stored = count(&pool, &stream).await;
        match (&want, &outcome) {
            (Want::Version(v), Ok(appended)) => {
                assert_eq!(appended.version.get(), *v, "{stream}");
                assert_eq!(
                    u64::try_from(stored).unwrap(),
                    *v,
                    "{stream}: dense versions"
                );
                // The answer names exactly this append's events: its first and last position.
                let events = store
                    .read_stream(&stream, VersionRange::all())
                    .await
                    .unwrap();
                let mine = &events[events.len() - n..];
                assert_eq!(appended.first_position, mine[0].position, "{stream}");
                assert_eq!(appended.last_position, mine[n - 1].position, "{stream}");
                written += 1;
            }
            (Want::Conflict(v), Err(StoreError::Conflict { actual, .. })) => {
                assert_eq!(actual.get(), *v, "{stream}");
                assert_eq!(
                    u64::try_from(stored).unwrap(),
                    *v,
                    "{stream}: nothing written"
                );
            }
            _ => panic!("{stream}: wanted {want:?}, got {outcome:?}"),
        }
    }
    assert_eq!(written, 3 + 3 + 12);
}
