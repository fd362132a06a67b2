//! Aggregate loads, with and without a snapshot: accounts of 100, 1,000 and 10,000 events with
//! realistic payloads (`Opened`, then deposits with a reference and a description) and the
//! metadata the repository writes (a correlation id, an actor). The framework's side is cold:
//! [`Repository::load`] never reads the repository's cache.

use eventsource_core::{
    Aggregate, DomainEvent, EventStore, ExpectedVersion, Metadata, NewEvent, Repository, Snapshot,
    SnapshotPolicy, SnapshotStore, StreamId, TenantId, Version,
};
use eventsource_postgres::{PgEventStore, PgSnapshotStore};
use sqlx::{PgPool, Row as _};
use uuid::Uuid;

use crate::harness::{Table, median_latencies};
use crate::model::{Account, AccountEvent, account_command, account_payload, raw_account_fold};
use crate::raw::{RAW_INSERT_TYPED_BATCH, RAW_LOAD_AFTER, RAW_LOAD_TYPED, RAW_SNAPSHOT};

/// Events per fill statement.
const CHUNK: u64 = 500;

/// Writes the same account of `n` events to both sides.
async fn fill(pool: &PgPool, store: &PgEventStore, stream: &StreamId, raw_stream: &str, n: u64) {
    let id = stream.aggregate_id().to_owned();
    let metadata = Metadata::new()
        .with_correlation_id(Uuid::now_v7())
        .with_actor("teller-17");
    for from in (0..n).step_by(usize::try_from(CHUNK).expect("small")) {
        let commands: Vec<_> = (from..(from + CHUNK).min(n))
            .map(|k| account_command(&id, k))
            .collect();
        let batch = commands
            .iter()
            .map(|command| {
                let (event_type, payload) = account_payload(command);
                let event = AccountEvent::decode(event_type, 1, payload).expect("event");
                NewEvent::from_event(&event)
                    .expect("encode")
                    .with_metadata(metadata.clone())
            })
            .collect();
        store
            .append(stream, ExpectedVersion::Any, batch)
            .await
            .expect("fill");
        let first = i64::try_from(from).expect("small") + 1;
        let (types, payloads): (Vec<_>, Vec<_>) = commands.iter().map(account_payload).unzip();
        sqlx::query(RAW_INSERT_TYPED_BATCH)
            .bind(raw_stream)
            .bind((first..first + i64::try_from(types.len()).expect("small")).collect::<Vec<_>>())
            .bind(types.iter().map(|_| Uuid::now_v7()).collect::<Vec<_>>())
            .bind(types)
            .bind(payloads)
            .execute(pool)
            .await
            .expect("raw fill");
    }
}

pub(crate) async fn loads(
    pool: &PgPool,
    store: &PgEventStore,
    tenant: &TenantId,
    table: &mut Table,
) {
    let snapshots = PgSnapshotStore::new(pool.clone());
    for n in [100_u64, 1_000, 10_000] {
        let id = format!("load-{n}-{}", Uuid::now_v7().simple());
        let stream = StreamId::new(tenant.clone(), Account::TYPE, &id);
        let raw_stream = format!("raw-{id}");
        fill(pool, store, &stream, &raw_stream, n).await;
        let plain = Repository::<Account, _>::new(store.clone()).with_tenant(tenant.clone());
        let runs = if n >= 10_000 { 41 } else { 201 };
        let (framework, raw) = median_latencies(
            runs,
            || async {
                let root = plain.load(&id).await.expect("load");
                assert_eq!(root.version(), Version::new(n));
                assert_eq!(std::hint::black_box(root.state()).deposits, n - 1);
            },
            || async {
                let rows = sqlx::query(RAW_LOAD_TYPED)
                    .bind(&raw_stream)
                    .fetch_all(pool)
                    .await
                    .expect("raw load");
                let account = raw_account_fold(
                    rows.iter()
                        .map(|row| (row.get::<&str, _>(1), row.get::<serde_json::Value, _>(2))),
                );
                assert_eq!(std::hint::black_box(account).deposits, n - 1);
                assert_eq!(rows.len() as u64, n);
            },
        )
        .await;
        table.latency(&format!("load {n} events, no snapshot"), framework, raw);

        let state = plain
            .load(&id)
            .await
            .expect("load")
            .state()
            .snapshot()
            .expect("state");
        snapshots
            .save(Snapshot::new(
                stream.clone(),
                Version::new(n),
                1,
                state.clone(),
            ))
            .await
            .expect("snapshot");
        sqlx::query("INSERT INTO raw_snapshots VALUES ($1, $2, $3)")
            .bind(&raw_stream)
            .bind(i64::try_from(n).expect("small"))
            .bind(state)
            .execute(pool)
            .await
            .expect("raw snapshot");
        let snapped = Repository::<Account, _>::new(store.clone())
            .with_tenant(tenant.clone())
            .with_snapshots(snapshots.clone(), SnapshotPolicy::Never);
        let (framework, raw) = median_latencies(
            runs,
            || async {
                let root = snapped.load(&id).await.expect("load");
                assert_eq!(root.state().deposits, n - 1);
            },
            || async {
                let snap = sqlx::query(RAW_SNAPSHOT)
                    .bind(&raw_stream)
                    .fetch_one(pool)
                    .await
                    .expect("raw snapshot");
                let version: i64 = snap.get(0);
                let state: Account = serde_json::from_value(snap.get(1)).expect("state");
                let tail = sqlx::query(RAW_LOAD_AFTER)
                    .bind(&raw_stream)
                    .bind(version)
                    .fetch_all(pool)
                    .await
                    .expect("tail");
                assert!(tail.is_empty() && state.deposits == n - 1);
            },
        )
        .await;
        table.latency(&format!("load {n} events, from snapshot"), framework, raw);
    }
}
