//! Every stream's versions increase along the global log, whichever transaction wrote them
//! (DESIGN §4.1, issue 13).
//!
//! The log is ordered by transaction id, and PostgreSQL assigns that id at a transaction's
//! first write. A transaction that wrote something before it appends to a stream can therefore
//! be older than the stream's last writer; appending there must not put version n + 1 before
//! version n in the log. These tests build that interleaving deterministically, through
//! `append_in_tx` and through a group commit, and check the log, the typed error that tells
//! the caller to retry, and that retries never duplicate an event.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use eventsource_core::{
    EventId, EventStore, ExpectedVersion, LogFilter, LogPosition, NewEvent, RecordedEvent,
    StoreError, StreamId, TenantId, Version,
};
use eventsource_postgres::{PgEventStore, begin_tenant};
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

fn event(label: &str) -> NewEvent {
    NewEvent::new("Labelled", 1, json!({ "label": label }))
}

/// Whether `err` asks the caller to retry its whole transaction because of `stream`: its
/// transaction is older than the stream's last writer.
fn is_retry_transaction(err: &StoreError, stream: &StreamId) -> bool {
    matches!(err, StoreError::RetryTransaction { stream: s } if s == stream)
}

/// Reads the tenant's whole log, page by page.
async fn drain(store: &PgEventStore, tenant: &TenantId) -> Vec<RecordedEvent> {
    let filter = LogFilter::tenant(tenant.clone());
    let mut after = LogPosition::START;
    let mut all = Vec::new();
    loop {
        let page = store.read_all(after, 100, &filter).await.expect("read_all");
        let Some(last) = page.last() else {
            return all;
        };
        after = last.position;
        all.extend(page);
    }
}

/// The tenant's log once it shows `count` events (transactions of other tests may hold the
/// readable horizon back for a moment).
async fn log_of(store: &PgEventStore, tenant: &TenantId, count: usize) -> Vec<RecordedEvent> {
    for _ in 0..1_000 {
        let log = drain(store, tenant).await;
        if log.len() >= count {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the log of {tenant} never showed {count} events");
}

/// Panics at the first event whose version is not its stream's previous one plus one.
fn assert_versions_increase(log: &[RecordedEvent]) {
    let mut last: HashMap<&StreamId, u64> = HashMap::new();
    for (i, e) in log.iter().enumerate() {
        let previous = last.entry(&e.stream).or_insert(0);
        assert_eq!(
            e.version.get(),
            *previous + 1,
            "read_all shows {} v{} (at {}, log index {i}) where v{} belongs: the log is out \
             of version order\n{}",
            e.stream,
            e.version,
            e.position,
            *previous + 1,
            describe(log)
        );
        *previous = e.version.get();
    }
}

/// Panics unless the log holds exactly the events `ids`, each once.
fn assert_exactly_once(log: &[RecordedEvent], ids: &[EventId]) {
    let seen: Vec<EventId> = log.iter().map(|e| e.event_id).collect();
    let distinct: HashSet<&EventId> = seen.iter().collect();
    assert_eq!(
        distinct.len(),
        seen.len(),
        "an event appears twice\n{}",
        describe(log)
    );
    let want: HashSet<&EventId> = ids.iter().collect();
    assert_eq!(
        distinct,
        want,
        "the log holds other events than those appended\n{}",
        describe(log)
    );
}

fn describe(log: &[RecordedEvent]) -> String {
    log.iter()
        .map(|e| {
            format!(
                "  {} {}/{} v{} {}",
                e.position,
                e.stream.aggregate_type(),
                e.stream.aggregate_id(),
                e.version,
                e.payload["label"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `appends` in one transaction of `tenant`, retrying the whole transaction while an
/// append answers that the transaction must be retried. Returns the attempts made.
async fn run_transaction(
    pool: &PgPool,
    tenant: &TenantId,
    appends: &[(StreamId, ExpectedVersion, Vec<NewEvent>)],
) -> u32 {
    for attempt in 1..=5 {
        let mut tx = begin_tenant(pool, tenant).await.expect("begin");
        let mut retry = false;
        for (stream, expected, events) in appends {
            match PgEventStore::append_in_tx(&mut tx, stream, *expected, events.clone()).await {
                Ok(_) => {}
                Err(e) if is_retry_transaction(&e, stream) => {
                    assert!(e.is_retryable(), "{e}");
                    retry = true;
                    break;
                }
                Err(e) => panic!("append to {stream} in attempt {attempt}: {e:?}"),
            }
        }
        if retry {
            tx.rollback().await.expect("roll back");
            continue;
        }
        tx.commit().await.expect("commit");
        return attempt;
    }
    panic!("the transaction still had to be retried after 5 attempts");
}

/// The three steps of issue 13, once per expectation that admits an existing stream:
/// (1) a transaction writes X and so takes its transaction id; (2) S v1 commits under a younger
/// id; (3) the old transaction appends S v2. The log must never show S v2 before S v1: step 3
/// answers "retry the transaction" (and nothing of the transaction lands), and the retried
/// transaction writes S v2 after S v1, each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_in_a_transaction_older_than_the_streams_last_writer_keeps_version_order() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let store = PgEventStore::new(pool.clone());
    for expected in [
        ExpectedVersion::Exact(Version::new(1)),
        ExpectedVersion::Any,
        ExpectedVersion::StreamExists,
    ] {
        let tenant = support::tenant("order-in-tx");
        let x = StreamId::new(tenant.clone(), "log", "x");
        let s = StreamId::new(tenant.clone(), "log", "s");
        let (x1, s1, s2) = (event("x1"), event("s1"), event("s2"));

        let mut tx = begin_tenant(&pool, &tenant).await.expect("begin");
        PgEventStore::append_in_tx(&mut tx, &x, ExpectedVersion::NoStream, vec![x1.clone()])
            .await
            .expect("(1) x1 in the open transaction");
        store
            .append(&s, ExpectedVersion::NoStream, vec![s1.clone()])
            .await
            .expect("(2) s1 commits under a younger transaction");
        match PgEventStore::append_in_tx(&mut tx, &s, expected, vec![s2.clone()]).await {
            Ok(_) => tx.commit().await.expect("commit"),
            Err(e) => {
                assert!(is_retry_transaction(&e, &s), "(3) at {expected}: {e:?}");
                assert!(e.is_retryable(), "{e}");
                tx.rollback().await.expect("roll back");
                assert_eq!(
                    store.stream_version(&x).await.expect("version of x"),
                    Version::ZERO,
                    "nothing of the refused transaction landed"
                );
                let appends = [
                    (x.clone(), ExpectedVersion::NoStream, vec![x1.clone()]),
                    (s.clone(), expected, vec![s2.clone()]),
                ];
                run_transaction(&pool, &tenant, &appends).await;
            }
        }

        let log = log_of(&store, &tenant, 3).await;
        assert_versions_increase(&log);
        let ids = [x1.event_id, s1.event_id, s2.event_id];
        assert_exactly_once(&log, &ids);

        // The retried transaction's acknowledgement may be lost: running it once more with the
        // same event ids writes nothing.
        let appends = [
            (x.clone(), ExpectedVersion::NoStream, vec![x1.clone()]),
            (s.clone(), expected, vec![s2.clone()]),
        ];
        run_transaction(&pool, &tenant, &appends).await;
        assert_eq!(
            store.stream_version(&s).await.expect("version"),
            Version::new(2)
        );
        let log = log_of(&store, &tenant, 3).await;
        assert_versions_increase(&log);
        assert_exactly_once(&log, &ids);
    }
}

/// A pool whose sessions carry `name` as their application name, so the test can see them
/// wait on a lock in `pg_stat_activity`.
async fn named_pool(name: &str) -> PgPool {
    let server = support::server().expect("a server");
    PgPoolOptions::new()
        .max_connections(8)
        .test_before_acquire(false)
        .connect_with(
            server
                .database(&support::test_database())
                .application_name(name),
        )
        .await
        .expect("connect the named pool")
}

/// An open transaction that appended `event` to `stream` and so holds the stream's row.
async fn hold_row(
    pool: &PgPool,
    stream: &StreamId,
    event: &NewEvent,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = begin_tenant(pool, stream.tenant()).await.expect("begin");
    PgEventStore::append_in_tx(&mut tx, stream, ExpectedVersion::Any, vec![event.clone()])
        .await
        .expect("an append that holds the row");
    tx
}

/// Waits until a session of `name` waits on a lock.
async fn wait_until_blocked(admin: &PgPool, name: &str) {
    for _ in 0..500 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = $1 AND wait_event_type = 'Lock'",
        )
        .bind(name)
        .fetch_one(admin)
        .await
        .expect("look at pg_stat_activity");
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no session of {name} ever waited on a lock");
}

/// The group-commit path of the same hazard. A group of three appends (a new stream `1-fresh`,
/// then `2-held`, then `3-hot`, the order the group locks them in) inserts `1-fresh`'s row, which
/// gives the group its transaction id, then waits on `2-held`, whose row an open transaction
/// holds. Meanwhile a younger transaction commits `3-hot` v2. When the group goes on, its
/// `3-hot` append would write v3 under the older transaction id, before v2 in the log. The
/// store must not let that happen: every caller still gets its append (the store retries its
/// own statement), the log keeps each stream in version order, and a retry of the same
/// batches after that internal retry writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_commit_older_than_a_streams_last_writer_keeps_version_order() {
    let Some(admin) = support::pool().await else {
        return;
    };
    let name = format!("order-group-{}", uuid::Uuid::now_v7().simple());
    let grouped = PgEventStore::new(named_pool(&name).await).with_group_commit(1, 128);
    let plain = PgEventStore::new(admin.clone()).without_group_commit();
    let tenant = support::tenant("order-group");
    let stream = |id: &str| StreamId::new(tenant.clone(), "log", id);
    let (gate, fresh, held, hot) = (
        stream("0-gate"),
        stream("1-fresh"),
        stream("2-held"),
        stream("3-hot"),
    );

    let mut ids = Vec::new();
    let mut append_plain = async |s: &StreamId, label: &str| {
        let e = event(label);
        ids.push(e.event_id);
        plain
            .append(s, ExpectedVersion::Any, vec![e])
            .await
            .expect(label);
    };
    append_plain(&gate, "gate v1").await;
    append_plain(&held, "held v1").await;
    append_plain(&hot, "hot v1").await;

    // Open transactions hold the rows of `0-gate` and `2-held`.
    let (gate_v2, held_v2) = (event("gate v2"), event("held v2"));
    let gate_tx = hold_row(&admin, &gate, &gate_v2).await;
    let held_tx = hold_row(&admin, &held, &held_v2).await;

    // The store's only commit lane waits on `0-gate`, so the next appends queue up together.
    let gate_v3 = event("gate v3");
    let gate_append = {
        let (grouped, gate, e) = (grouped.clone(), gate.clone(), gate_v3.clone());
        tokio::spawn(async move { grouped.append(&gate, ExpectedVersion::Any, vec![e]).await })
    };
    wait_until_blocked(&admin, &name).await;
    let batches = [
        (
            fresh.clone(),
            ExpectedVersion::NoStream,
            vec![event("fresh v1")],
        ),
        (held.clone(), ExpectedVersion::Any, vec![event("held v3")]),
        (hot.clone(), ExpectedVersion::Any, vec![event("hot v3")]),
    ];
    let group: Vec<_> = batches
        .iter()
        .cloned()
        .map(|(s, expected, events)| {
            let grouped = grouped.clone();
            tokio::spawn(async move { grouped.append(&s, expected, events).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        group.iter().all(|t| !t.is_finished()),
        "the appends queue while the lane is busy"
    );

    // The lane frees up and takes the three queued appends as one group, which stops at
    // `2-held` after inserting `1-fresh`.
    gate_tx.commit().await.expect("commit gate v2");
    gate_append
        .await
        .expect("join")
        .expect("gate v3 after the gate's transaction committed");
    wait_until_blocked(&admin, &name).await;

    // A younger transaction moves `3-hot` on while the group waits.
    append_plain(&hot, "hot v2").await;
    held_tx.commit().await.expect("commit held v2");

    let mut outcomes = Vec::new();
    for task in group {
        outcomes.push(task.await.expect("join").expect("a grouped append lands"));
    }
    assert_eq!(
        outcomes.iter().map(|a| a.version.get()).collect::<Vec<_>>(),
        [1, 3, 3],
        "versions of 1-fresh, 2-held, 3-hot"
    );
    ids.extend([gate_v2.event_id, held_v2.event_id, gate_v3.event_id]);
    ids.extend(
        batches
            .iter()
            .flat_map(|(_, _, events)| events.iter().map(|e| e.event_id)),
    );

    let store = PgEventStore::new(admin.clone());
    let log = log_of(&store, &tenant, ids.len()).await;
    assert_versions_increase(&log);
    assert_exactly_once(&log, &ids);

    // The callers retry as if their acknowledgements were lost: same ids, same expectations,
    // same outcomes, nothing written twice.
    for ((s, expected, events), first) in batches.iter().zip(&outcomes) {
        let again = grouped
            .append(s, *expected, events.clone())
            .await
            .expect("an idempotent retry");
        assert_eq!(&again, first, "a retry of {s} returns the original outcome");
    }
    let log = log_of(&store, &tenant, ids.len()).await;
    assert_versions_increase(&log);
    assert_exactly_once(&log, &ids);
}

/// A stream whose last writer is younger than every transaction the cluster can start (a
/// database restored into a cluster whose ids have not caught up): the store gives up after
/// its bounded retries with a retryable error, a caller's transaction is told to retry, and
/// nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_written_by_a_future_transaction_refuses_appends_without_writing() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let store = PgEventStore::new(pool.clone());
    let tenant = support::tenant("future-writer");
    let stream = StreamId::new(tenant.clone(), "log", "ahead");
    store
        .append(&stream, ExpectedVersion::NoStream, vec![event("v1")])
        .await
        .expect("first event");
    let mut tx = begin_tenant(&pool, &tenant).await.expect("begin");
    sqlx::query("UPDATE streams SET last_xid = '9223372036854775000' WHERE aggregate_id = 'ahead'")
        .execute(&mut *tx)
        .await
        .expect("move the last writer ahead");
    tx.commit().await.expect("commit");

    let err = store
        .append(&stream, ExpectedVersion::Any, vec![event("v2")])
        .await
        .expect_err("no transaction is younger than the stream's last writer");
    assert!(
        matches!(err, StoreError::Unavailable(_)) && err.is_retryable(),
        "{err:?}"
    );
    let mut tx = begin_tenant(&pool, &tenant).await.expect("begin");
    let err = PgEventStore::append_in_tx(
        &mut tx,
        &stream,
        ExpectedVersion::Exact(Version::new(1)),
        vec![event("v2")],
    )
    .await
    .expect_err("refused in a caller's transaction too");
    assert!(is_retry_transaction(&err, &stream), "{err:?}");
    tx.rollback().await.expect("rollback");
    assert_eq!(
        store.stream_version(&stream).await.expect("version"),
        Version::new(1),
        "nothing was written"
    );
}
