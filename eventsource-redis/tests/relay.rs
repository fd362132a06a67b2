//! The relay publishes each event exactly once per key, in log order, whatever kills it.
#![allow(missing_docs)]

mod support;

use support::{Topology, on_both_topologies};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use eventsource_core::{
    CheckpointStore, InMemoryCheckpointStore, InMemoryEventStore, LogPosition, RecordedEvent,
    StoreError,
};
use eventsource_redis::{
    Keys, RedisConnection, RedisRelay, RelayOptions, Router, relay_checkpoint,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A checkpoint store that can be told to hang in `save`: the relay then dies after Redis
/// answered and before its checkpoint moved.
#[derive(Clone, Default)]
struct Stalling {
    inner: InMemoryCheckpointStore,
    stall: Arc<AtomicBool>,
    stalled: Arc<Notify>,
}

impl CheckpointStore for Stalling {
    async fn load(&self, name: &str) -> Result<Option<LogPosition>, StoreError> {
        self.inner.load(name).await
    }

    async fn save(
        &self,
        name: &str,
        expected: Option<LogPosition>,
        position: LogPosition,
    ) -> Result<(), StoreError> {
        if self.stall.load(Ordering::SeqCst) {
            self.stalled.notify_one();
            std::future::pending::<()>().await;
        }
        self.inner.save(name, expected, position).await
    }
}

/// Tenant stream plus aggregate-type stream: every batch touches several keys.
fn router(keys: Keys) -> impl Router + Clone + 'static {
    move |event: &RecordedEvent, out: &mut Vec<String>| {
        out.push(keys.tenant_stream(event.tenant()));
        out.push(keys.aggregate_type_stream(event.tenant(), event.stream.aggregate_type()));
    }
}

/// A per-tenant relay over `store` under `keys` with an empty checkpoint store of its own: it
/// starts from the beginning of the log, as a relay that lost its checkpoint does.
fn fresh_relay(
    store: &InMemoryEventStore,
    conn: &RedisConnection,
    name: &str,
    keys: &Keys,
    batch_size: usize,
) -> RedisRelay<InMemoryEventStore, InMemoryCheckpointStore> {
    RedisRelay::new(
        store.clone(),
        InMemoryCheckpointStore::new(),
        conn.clone(),
        name,
        RelayOptions::default().with_batch_size(batch_size),
    )
    .with_router(eventsource_redis::PerTenant::new(keys.clone()))
}

async fn assert_streams_equal_log(
    conn: &mut RedisConnection,
    store: &InMemoryEventStore,
    router: &impl Router,
) -> usize {
    let mut expected: BTreeMap<String, Vec<RecordedEvent>> = BTreeMap::new();
    for event in support::log(store).await {
        let mut keys = Vec::new();
        router.route(&event, &mut keys);
        for key in keys {
            expected.entry(key).or_default().push(event.clone());
        }
    }
    for (key, events) in &expected {
        let entries = support::entries(conn, key).await;
        assert_eq!(entries.len(), events.len(), "length of {key}");
        for ((id, got), want) in entries.iter().zip(events) {
            assert_eq!(id, &want.position.to_string(), "entry id in {key}");
            assert_eq!(got, want, "entry {id} in {key}");
        }
    }
    expected.len()
}

async fn relay_killed_at_random_points_publishes_each_event_once_in_order(topology: Topology) {
    let Some((_client, mut conn)) = support::connect_to(topology).await else {
        return;
    };
    let keys = Keys::new(&support::prefix());
    let router = router(keys.clone());
    let store = InMemoryEventStore::new();
    let checkpoints = Stalling::default();

    // Writers append concurrently for the whole run.
    let writers_done = CancellationToken::new();
    let mut writers = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        let done = writers_done.clone();
        writers.push(tokio::spawn(async move {
            let tenants = ["acme", "globex", "initech"];
            let mut i = 0usize;
            while !done.is_cancelled() {
                let tenant = tenants[(w + i) % tenants.len()];
                let kind = if i.is_multiple_of(2) {
                    "order"
                } else {
                    "invoice"
                };
                let stream = support::stream(tenant, kind, &format!("{w}-{}", i % 7));
                support::append(&store, &stream, 1 + i % 3, "Happened").await;
                i += 1;
                tokio::time::sleep(Duration::from_micros(rand::random_range(0..800))).await;
            }
        }));
    }

    let mut stalled_kills = 0;
    for round in 0..150 {
        let stall = round % 4 == 3;
        checkpoints.stall.store(stall, Ordering::SeqCst);
        let options = RelayOptions::default()
            .with_batch_size(rand::random_range(1..40))
            .with_instance_id("relay-under-test")
            .with_lease_ttl(Duration::from_secs(5));
        let relay = RedisRelay::new(
            store.clone(),
            checkpoints.clone(),
            conn.clone(),
            "killed",
            options,
        )
        .with_router(router.clone())
        .with_keys(&keys);
        let task = tokio::spawn(relay.run(CancellationToken::new()));
        if stall {
            // Dies after Redis answered, before the checkpoint is saved.
            if tokio::time::timeout(Duration::from_secs(5), checkpoints.stalled.notified())
                .await
                .is_ok()
            {
                stalled_kills += 1;
            }
        } else {
            tokio::time::sleep(Duration::from_micros(rand::random_range(0..15_000))).await;
        }
        task.abort();
        let _ = task.await;
    }
    assert!(
        stalled_kills > 5,
        "the stall point was reached {stalled_kills} times"
    );

    writers_done.cancel();
    for w in writers {
        w.await.unwrap();
    }

    // A last relay catches up; every key then equals the log.
    checkpoints.stall.store(false, Ordering::SeqCst);
    let mut relay = RedisRelay::new(
        store.clone(),
        checkpoints.clone(),
        conn.clone(),
        "killed",
        RelayOptions::default(),
    )
    .with_router(router.clone())
    .with_keys(&keys);
    relay.catch_up().await.unwrap();
    let keys_checked = assert_streams_equal_log(&mut conn, &store, &router).await;
    assert_eq!(keys_checked, 9, "3 tenant streams and 6 type streams");
    assert!(store.len() > 200, "only {} events written", store.len());
}

async fn republishing_from_an_old_checkpoint_adds_nothing(topology: Topology) {
    let Some((_client, mut conn)) = support::connect_to(topology).await else {
        return;
    };
    let keys = Keys::new(&support::prefix());
    let store = InMemoryEventStore::new();
    support::append(
        &store,
        &support::stream("acme", "order", "o-1"),
        25,
        "Placed",
    )
    .await;
    let mut relay = fresh_relay(&store, &conn, "first", &keys, 10);
    assert_eq!(relay.catch_up().await.unwrap(), 25);

    // A relay that lost its checkpoint re-sends everything: Redis rejects every entry.
    let mut again = fresh_relay(&store, &conn, "first", &keys, 100);
    let published = again.publish_batch().await.unwrap();
    assert_eq!((published.added, published.skipped), (0, 25));
    let key = keys.tenant_stream(&"acme".into());
    assert_eq!(support::entries(&mut conn, &key).await.len(), 25);
}

async fn a_second_relay_waits_for_the_lease(topology: Topology) {
    let Some((_client, mut conn)) = support::connect_to(topology).await else {
        return;
    };
    let keys = Keys::new(&support::prefix());
    let store = InMemoryEventStore::new();
    let checkpoints = InMemoryCheckpointStore::new();
    let relay = |instance: &str| {
        RedisRelay::new(
            store.clone(),
            checkpoints.clone(),
            conn.clone(),
            "leased",
            RelayOptions::default()
                .with_instance_id(instance)
                .with_lease_ttl(Duration::from_millis(300)),
        )
        .with_router(eventsource_redis::PerTenant::new(keys.clone()))
        .with_keys(&keys)
    };
    let first_stop = CancellationToken::new();
    let second_stop = CancellationToken::new();
    let first = tokio::spawn(relay("a").run(first_stop.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = tokio::spawn(relay("b").run(second_stop.clone()));
    let lease = keys.relay_lease("leased");
    let holder: Option<String> = redis::AsyncCommands::get(&mut conn, &lease).await.unwrap();
    assert_eq!(holder.as_deref(), Some("a"));

    let stream = support::stream("acme", "order", "o-1");
    support::append(&store, &stream, 5, "Placed").await;
    let key = keys.tenant_stream(&"acme".into());
    let mut c = conn.clone();
    assert!(
        support::eventually(Duration::from_secs(5), || {
            let mut c = c.clone();
            let key = key.clone();
            async move { support::entries(&mut c, &key).await.len() == 5 }
        })
        .await
    );
    let holder: Option<String> = redis::AsyncCommands::get(&mut conn, &lease).await.unwrap();
    assert_eq!(
        holder.as_deref(),
        Some("a"),
        "b never took the lease from a live a"
    );

    first_stop.cancel();
    first.await.unwrap().unwrap();
    support::append(&store, &stream, 5, "Placed").await;
    assert!(
        support::eventually(Duration::from_secs(5), || {
            let mut c = c.clone();
            let key = key.clone();
            async move { support::entries(&mut c, &key).await.len() == 10 }
        })
        .await,
        "b took over after a stopped"
    );
    let holder: Option<String> = redis::AsyncCommands::get(&mut c, &lease).await.unwrap();
    assert_eq!(holder.as_deref(), Some("b"));
    second_stop.cancel();
    second.await.unwrap().unwrap();
    let _ = relay_checkpoint("leased");
}

async fn re_sending_trimmed_entries_is_still_a_no_op(topology: Topology) {
    let Some((_client, mut conn)) = support::connect_to(topology).await else {
        return;
    };
    let keys = Keys::new(&support::prefix());
    let store = InMemoryEventStore::new();
    support::append(
        &store,
        &support::stream("acme", "order", "o-1"),
        10,
        "Placed",
    )
    .await;
    assert_eq!(
        fresh_relay(&store, &conn, "trimmed", &keys, 100)
            .catch_up()
            .await
            .unwrap(),
        10
    );
    let key = keys.tenant_stream(&"acme".into());
    let entries = support::entries(&mut conn, &key).await;
    let _: u64 = redis::cmd("XTRIM")
        .arg(&key)
        .arg("MINID")
        .arg(&entries[6].0)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(support::entries(&mut conn, &key).await.len(), 4);

    let outcome = fresh_relay(&store, &conn, "trimmed", &keys, 100)
        .publish_batch()
        .await
        .unwrap();
    assert_eq!((outcome.added, outcome.skipped), (0, 10));
    assert_eq!(
        support::entries(&mut conn, &key).await.len(),
        4,
        "nothing came back"
    );
}

async fn a_store_reset_behind_the_stream_is_refused_not_dropped(topology: Topology) {
    let Some((_client, mut conn)) = support::connect_to(topology).await else {
        return;
    };
    let keys = Keys::new(&support::prefix());
    let order = support::stream("acme", "order", "o-1");
    let old = InMemoryEventStore::new();
    support::append(&old, &order, 5, "Placed").await;
    let mut relay = fresh_relay(&old, &conn, "reset", &keys, 100);
    assert_eq!(relay.catch_up().await.unwrap(), 5);

    // The database is restored empty: new events get the old positions (and ids in Redis),
    // but they are other events. Skipping them as re-sends would lose them downstream.
    let reset = InMemoryEventStore::new();
    support::append(&reset, &order, 3, "Placed").await;
    let mut relay = fresh_relay(&reset, &conn, "reset", &keys, 100);
    let err = relay
        .publish_batch()
        .await
        .expect_err("the stream holds other events");
    assert!(
        matches!(&err, eventsource_redis::RedisStoreError::PublishRefused { reason, .. } if reason.contains("disagree")),
        "{err}"
    );
    let key = keys.tenant_stream(&"acme".into());
    assert_eq!(
        support::entries(&mut conn, &key).await.len(),
        5,
        "the stream is untouched"
    );
}

/// The relay's old names are deprecated aliases of the new ones: code written against them
/// keeps compiling (with a deprecation warning).
#[test]
#[allow(deprecated)]
fn the_old_relay_names_still_compile() {
    use eventsource_redis::{PublisherOptions, RedisPublisher};
    let options: PublisherOptions = RelayOptions::default().with_batch_size(7);
    assert_eq!(options.batch_size(), 7);
    let same: Option<RedisPublisher<InMemoryEventStore, InMemoryCheckpointStore>> =
        None::<RedisRelay<InMemoryEventStore, InMemoryCheckpointStore>>;
    assert!(same.is_none());
}

on_both_topologies!(
    relay_killed_at_random_points_publishes_each_event_once_in_order,
    republishing_from_an_old_checkpoint_adds_nothing,
    a_second_relay_waits_for_the_lease,
    re_sending_trimmed_entries_is_still_a_no_op,
    a_store_reset_behind_the_stream_is_refused_not_dropped,
);
