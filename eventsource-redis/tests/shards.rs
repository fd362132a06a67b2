//! Relay shards (leases, takeover, exactly once per key) and tenant discovery by runners.
#![allow(missing_docs)]

mod support;

use support::{Topology, on_both_topologies};

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventsource_core::{
    CheckpointStore, EventHandler, EventStore as _, InMemoryCheckpointStore, InMemoryEventStore,
    LogPosition, RecordedEvent, StoreError, TenantId,
};
use eventsource_redis::{
    ConsumerRunner, Keys, RedisClient, RedisConnection, RedisRelay, RedisStoreError, RelayOptions,
    RunnerOptions, TenantDiscovery, registered_tenants, relay_checkpoint, shard_of,
};
use tokio_util::sync::CancellationToken;

/// Records the events it handles.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<RecordedEvent>>>);

impl Recorder {
    fn of_tenant(&self, tenant: &str) -> Vec<RecordedEvent> {
        let seen = self.0.lock().unwrap();
        seen.iter()
            .filter(|e| e.tenant().as_str() == tenant)
            .cloned()
            .collect()
    }
}

impl EventHandler for Recorder {
    type Error = std::convert::Infallible;

    async fn handle(&self, event: &RecordedEvent) -> Result<(), Self::Error> {
        self.0.lock().unwrap().push(event.clone());
        Ok(())
    }
}

/// `n` tenant names under `prefix`, covering every one of `shards` shards.
fn tenants(prefix: &str, n: usize, shards: u32) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}-t{i}")).collect();
    let covered: HashSet<u32> = names
        .iter()
        .map(|t| shard_of(&TenantId::new(t.as_str()), shards))
        .collect();
    assert_eq!(covered.len(), shards as usize, "pick more tenants");
    names
}

fn sharded_relay(
    store: &InMemoryEventStore,
    checkpoints: &InMemoryCheckpointStore,
    conn: &RedisConnection,
    keys: &Keys,
    instance: &str,
) -> RedisRelay<InMemoryEventStore, InMemoryCheckpointStore> {
    RedisRelay::new(
        store.clone(),
        checkpoints.clone(),
        conn.clone(),
        "sharded",
        RelayOptions::default()
            .with_shards(3)
            .with_batch_size(20)
            .with_lease_ttl(Duration::from_millis(300))
            .with_max_idle_poll(Duration::from_millis(20))
            .with_instance_id(instance),
    )
    .with_keys(keys)
}

/// Whether every tenant's stream holds exactly the tenant's events of the log, in log order
/// (panics on a wrong or doubled entry).
async fn streams_match_log(
    conn: &mut RedisConnection,
    store: &InMemoryEventStore,
    keys: &Keys,
) -> bool {
    let mut expected: BTreeMap<String, Vec<RecordedEvent>> = BTreeMap::new();
    for event in support::log(store).await {
        expected
            .entry(keys.tenant_stream(event.tenant()))
            .or_default()
            .push(event);
    }
    for (key, events) in &expected {
        let entries = support::entries(conn, key).await;
        assert!(
            entries.len() <= events.len(),
            "{key} has more entries than events"
        );
        for ((id, got), want) in entries.iter().zip(events) {
            assert_eq!(id, &want.position.to_string(), "entry id in {key}");
            assert_eq!(got, want, "entry {id} in {key}");
        }
        if entries.len() < events.len() {
            return false;
        }
    }
    true
}

/// Three relay instances over three shards, one of them aborted mid-run (its leases are not
/// released): the others take its shards over once the leases expire, and every tenant's
/// stream ends with each of its events once, in log order.
async fn three_relays_share_three_shards_and_take_over_a_dead_ones(topology: Topology) {
    let Some((_client, mut conn)) = support::connect_to(topology).await else {
        return;
    };
    let prefix = support::prefix();
    let keys = Keys::new(&prefix);
    let store = InMemoryEventStore::new();
    let checkpoints = InMemoryCheckpointStore::new();
    let tenants = tenants(&prefix, 12, 3);
    let shutdown = CancellationToken::new();
    let mut relays: BTreeMap<String, _> = (0..3)
        .map(|i| {
            let instance = format!("relay-{i}");
            let relay = sharded_relay(&store, &checkpoints, &conn, &keys, &instance);
            (instance, tokio::spawn(relay.run(shutdown.clone())))
        })
        .collect();
    let lease = keys.relay_shard_lease("sharded", 0, 3);
    let holder = || {
        let (mut conn, lease) = (conn.clone(), lease.clone());
        async move {
            let holder: Option<String> =
                redis::AsyncCommands::get(&mut conn, &lease).await.unwrap();
            holder
        }
    };
    assert!(
        support::eventually(Duration::from_secs(5), || async {
            holder().await.is_some()
        })
        .await,
        "shard 0 taken"
    );
    let victim = holder().await.unwrap();
    for round in 0..6 {
        for tenant in &tenants {
            let stream = support::stream(tenant, "order", &format!("o{}", round % 2));
            support::append(&store, &stream, 5, "Placed").await;
        }
        if round == 2 {
            // A crash: the task is gone, its leases stay until they expire.
            relays.remove(&victim).unwrap().abort();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = support::eventually(Duration::from_secs(20), || {
        let (mut conn, store, keys) = (conn.clone(), store.clone(), keys.clone());
        async move { streams_match_log(&mut conn, &store, &keys).await }
    })
    .await;
    assert!(done, "every event published after the takeover");
    let successor = holder().await;
    assert!(
        successor.is_some() && successor.as_ref() != Some(&victim),
        "shard 0 taken over from {victim}: {successor:?}"
    );
    // Every shard moved its own checkpoint to the end of the log.
    let last = support::log(&store).await.last().unwrap().position;
    for index in 0..3 {
        let name = eventsource_redis::relay_shard_checkpoint("sharded", index, 3);
        let reached = support::eventually(Duration::from_secs(5), || {
            let (checkpoints, name) = (checkpoints.clone(), name.clone());
            async move {
                eventsource_core::CheckpointStore::load(&checkpoints, &name)
                    .await
                    .unwrap()
                    == Some(last)
            }
        })
        .await;
        assert!(reached, "shard {index} checkpoint at the end of the log");
    }
    shutdown.cancel();
    for relay in relays.into_values() {
        relay.await.unwrap().unwrap();
    }
    assert!(streams_match_log(&mut conn, &store, &keys).await);
}

/// A runner started before a tenant exists reads that tenant's stream once the relay first
/// publishes to it, without a restart, from the stream's first entry.
async fn a_running_runner_picks_up_a_new_tenant(topology: Topology) {
    picks_up_new_tenants(topology, None).await;
}

/// The same with at most one blocking connection (ADR 0036): on a cluster the loops of the
/// second and third tenants' slots poll, and every discovery restart keeps to the cap.
async fn a_discovering_runner_keeps_to_its_blocking_connection_cap(topology: Topology) {
    picks_up_new_tenants(topology, Some(1)).await;
}

/// Three tenants appear one after the other while a discovering runner runs (at most
/// `max_blocking` blocking connections, if given); each one's events reach it.
async fn picks_up_new_tenants(topology: Topology, max_blocking: Option<usize>) {
    let Some((client, conn)) = support::connect_to(topology).await else {
        return;
    };
    let prefix = support::prefix();
    let keys = Keys::new(&prefix);
    let store = InMemoryEventStore::new();
    let shutdown = CancellationToken::new();
    let relay = RedisRelay::new(
        store.clone(),
        InMemoryCheckpointStore::new(),
        conn.clone(),
        "discovery",
        RelayOptions::default().with_max_idle_poll(Duration::from_millis(20)),
    )
    .with_keys(&keys);
    let relay = tokio::spawn(relay.run(shutdown.clone()));
    let mut options = RunnerOptions::default().with_block_timeout(Duration::from_millis(100));
    if let Some(max) = max_blocking {
        options = options.with_max_blocking_reads(max);
    }
    let (runner, seen) = discovering_runner(&client, &conn, &keys, None, options);
    let counters = runner.counters();
    let runner = tokio::spawn(runner.run(shutdown.clone()));
    // Tenants in several slots on a cluster: a new read loop each.
    let names = ["alpha", "beta", "gamma"].map(|t| format!("{prefix}-{t}"));
    let slots: HashSet<_> = names
        .iter()
        .map(|t| {
            redis::cluster_routing::Slot::for_key(keys.tenant_stream(&TenantId::new(t.as_str())))
        })
        .collect();
    assert!(slots.len() >= 2, "the tenants share one slot; pick others");
    for (i, tenant) in ["alpha", "beta", "gamma"].iter().enumerate() {
        let tenant = format!("{prefix}-{tenant}");
        support::append(
            &store,
            &support::stream(&tenant, "order", "1"),
            3 + i,
            "Placed",
        )
        .await;
        let got = support::eventually(Duration::from_secs(15), || {
            let (seen, tenant) = (seen.clone(), tenant.clone());
            async move { seen.of_tenant(&tenant).len() == 3 + i }
        })
        .await;
        assert!(got, "{tenant}'s events reached the running runner");
        if let Some(max) = max_blocking {
            assert!(counters.blocking_connections() <= max as u64);
        }
    }
    shutdown.cancel();
    relay.await.unwrap().unwrap();
    runner.await.unwrap().unwrap();
}

fn discovering_runner(
    client: &RedisClient,
    conn: &RedisConnection,
    keys: &Keys,
    filter: Option<String>,
    options: RunnerOptions,
) -> (ConsumerRunner<Recorder>, Recorder) {
    let seen = Recorder::default();
    let mut discovery =
        TenantDiscovery::new(keys.clone()).with_poll_interval(Duration::from_millis(30));
    if let Some(only) = filter {
        discovery = discovery.with_filter(move |t| t.as_str() == only);
    }
    let runner = ConsumerRunner::new(
        conn.clone(),
        client.clone(),
        Vec::<String>::new(),
        "discover",
        "c1",
        seen.clone(),
        options,
    )
    .with_discovery(discovery);
    (runner, seen)
}

/// A sharded relay refuses a key that is not tagged with the event's tenant (two shards could
/// write it), before sending anything.
async fn a_sharded_relay_refuses_a_key_shared_by_tenants(topology: Topology) {
    let Some((_client, conn)) = support::connect_to(topology).await else {
        return;
    };
    let prefix = support::prefix();
    let store = InMemoryEventStore::new();
    support::append(&store, &support::stream(&prefix, "order", "1"), 2, "Placed").await;
    let global = format!("{prefix}:{{all}}:events");
    let target = global.clone();
    let mut relay = RedisRelay::new(
        store.clone(),
        InMemoryCheckpointStore::new(),
        conn.clone(),
        "global",
        RelayOptions::default()
            .with_shards(2)
            .with_shard(shard_of(&TenantId::new(prefix.as_str()), 2)),
    )
    .with_router(move |_: &RecordedEvent, out: &mut Vec<String>| out.push(target.clone()));
    let refused = relay.publish_batch().await;
    assert!(
        matches!(refused, Err(RedisStoreError::PublishRefused { ref key, .. }) if *key == global),
        "{refused:?}"
    );
    let mut conn = conn;
    assert!(support::entries(&mut conn, &global).await.is_empty());
}

/// A relay moved from one shard to several starts each shard at the unsharded checkpoint.
async fn shards_start_from_the_unsharded_checkpoint(topology: Topology) {
    let Some((_client, conn)) = support::connect_to(topology).await else {
        return;
    };
    let prefix = support::prefix();
    let keys = Keys::new(&prefix);
    let store = InMemoryEventStore::new();
    let checkpoints = InMemoryCheckpointStore::new();
    for tenant in tenants(&prefix, 8, 2) {
        support::append(&store, &support::stream(&tenant, "order", "1"), 3, "Placed").await;
    }
    let mut single = RedisRelay::new(
        store.clone(),
        checkpoints.clone(),
        conn.clone(),
        "moved",
        RelayOptions::default(),
    )
    .with_keys(&keys);
    assert_eq!(single.catch_up().await.unwrap(), 24);
    let old = eventsource_core::CheckpointStore::load(&checkpoints, &relay_checkpoint("moved"))
        .await
        .unwrap();
    assert!(old.is_some());
    let mut sharded = RedisRelay::new(
        store.clone(),
        checkpoints.clone(),
        conn.clone(),
        "moved",
        RelayOptions::default().with_shards(2),
    )
    .with_keys(&keys);
    let published = sharded.publish_batch().await.unwrap();
    assert_eq!(published.events, 0, "nothing read again");
    assert_eq!(published.checkpoint, old);
}

/// A shard reads only its own tenants' events from the store, and while its tenants are quiet
/// its checkpoint follows the log's end (so a poll never starts behind the other shards'
/// events); what its tenants append later is still published, each event once.
async fn a_shard_reads_its_tenants_and_follows_the_log_end(topology: Topology) {
    let Some((_client, conn)) = support::connect_to(topology).await else {
        return;
    };
    let prefix = support::prefix();
    let keys = Keys::new(&prefix);
    let store = InMemoryEventStore::new();
    let checkpoints = InMemoryCheckpointStore::new();
    let names = tenants(&prefix, 8, 2);
    let (quiet, busy): (Vec<&String>, Vec<&String>) = names
        .iter()
        .partition(|t| shard_of(&TenantId::new(t.as_str()), 2) == 1);
    for tenant in &busy {
        support::append(&store, &support::stream(tenant, "order", "1"), 3, "Placed").await;
    }
    let relay = |index: u32| {
        RedisRelay::new(
            store.clone(),
            checkpoints.clone(),
            conn.clone(),
            "quiet",
            RelayOptions::default()
                .with_shards(2)
                .with_shard(index)
                .with_batch_size(4),
        )
        .with_keys(&keys)
    };
    let (mut quiet_relay, mut busy_relay) = (relay(1), relay(0));
    let head = store.log_head().await.unwrap();
    assert!(head.is_some());
    let published = quiet_relay.publish_batch().await.unwrap();
    assert_eq!(
        published.events, 0,
        "none of the busy shard's events is read"
    );
    assert_eq!(
        published.checkpoint, head,
        "the checkpoint follows the log's end"
    );
    assert_eq!(
        busy_relay.catch_up().await.unwrap(),
        u64::try_from(busy.len() * 3).unwrap(),
        "the busy shard reads its events, not the whole log"
    );

    for tenant in &quiet {
        support::append(&store, &support::stream(tenant, "order", "1"), 2, "Placed").await;
    }
    for tenant in &busy {
        support::append(&store, &support::stream(tenant, "order", "1"), 1, "Placed").await;
    }
    assert_eq!(
        quiet_relay.catch_up().await.unwrap(),
        u64::try_from(quiet.len() * 2).unwrap()
    );
    busy_relay.catch_up().await.unwrap();
    let mut conn = conn;
    assert!(streams_match_log(&mut conn, &store, &keys).await);
    let published = quiet_relay.publish_batch().await.unwrap();
    assert_eq!(published.checkpoint, store.log_head().await.unwrap());
}

/// Instances started together whose ids hash to different shards take one shard each.
async fn instances_started_together_take_a_shard_each(topology: Topology) {
    let Some((_client, conn)) = support::connect_to(topology).await else {
        return;
    };
    let prefix = support::prefix();
    let keys = Keys::new(&prefix);
    let store = InMemoryEventStore::new();
    let checkpoints = InMemoryCheckpointStore::new();
    // One instance id per shard, by the hash the relay uses to pick its first shard.
    let mut ids: BTreeMap<u32, String> = BTreeMap::new();
    for i in 0.. {
        let id = format!("{prefix}-instance-{i}");
        ids.entry(shard_of(&TenantId::new(id.as_str()), 3))
            .or_insert(id);
        if ids.len() == 3 {
            break;
        }
    }
    let shutdown = CancellationToken::new();
    let relays: Vec<_> = ids
        .values()
        .map(|id| {
            let relay = RedisRelay::new(
                store.clone(),
                checkpoints.clone(),
                conn.clone(),
                "spread",
                RelayOptions::default()
                    .with_shards(3)
                    .with_lease_ttl(Duration::from_secs(1))
                    .with_instance_id(id.as_str()),
            )
            .with_keys(&keys);
            tokio::spawn(relay.run(shutdown.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut holders = BTreeMap::new();
    let mut conn = conn;
    for index in 0..3 {
        let lease = keys.relay_shard_lease("spread", index, 3);
        let holder: Option<String> = redis::AsyncCommands::get(&mut conn, &lease).await.unwrap();
        holders.insert(index, holder);
    }
    let expected: BTreeMap<u32, Option<String>> = ids
        .into_iter()
        .map(|(shard, id)| (shard, Some(id)))
        .collect();
    assert_eq!(
        holders, expected,
        "each instance holds the shard its id hashes to"
    );
    shutdown.cancel();
    for relay in relays {
        relay.await.unwrap().unwrap();
    }
}

/// A checkpoint store whose next save fails once `fail` is set: a relay's error path.
#[derive(Clone, Default)]
struct FailingSave {
    inner: InMemoryCheckpointStore,
    fail: Arc<AtomicBool>,
}

impl CheckpointStore for FailingSave {
    async fn load(&self, name: &str) -> Result<Option<LogPosition>, StoreError> {
        self.inner.load(name).await
    }

    async fn save(
        &self,
        name: &str,
        expected: Option<LogPosition>,
        position: LogPosition,
    ) -> Result<(), StoreError> {
        if self.fail.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Unavailable("told to fail".into()));
        }
        self.inner.save(name, expected, position).await
    }
}

/// A tenant the registry lost (a failover before the `SADD` replicated, played here by a
/// `SREM`) is registered again once the relay has reloaded after an error (ADR 0031, 5):
/// without that, a runner started later would never discover it.
async fn a_relay_registers_its_tenants_again_after_an_error(topology: Topology) {
    let Some((_client, mut conn)) = support::connect_to(topology).await else {
        return;
    };
    let prefix = support::prefix();
    let keys = Keys::new(&prefix);
    let store = InMemoryEventStore::new();
    let checkpoints = FailingSave::default();
    let mut relay = RedisRelay::new(
        store.clone(),
        checkpoints.clone(),
        conn.clone(),
        "registry",
        RelayOptions::default(),
    )
    .with_keys(&keys);
    let tenant = format!("{prefix}-lost");
    let stream = support::stream(&tenant, "order", "1");
    let registered = async |conn: &mut RedisConnection| {
        registered_tenants(conn, &keys)
            .await
            .unwrap()
            .contains(&TenantId::new(tenant.as_str()))
    };

    support::append(&store, &stream, 1, "Placed").await;
    relay.publish_batch().await.unwrap();
    assert!(registered(&mut conn).await, "registered before its entries");
    let _: u64 = redis::cmd("SREM")
        .arg(keys.tenant_registry())
        .arg(&tenant)
        .query_async(&mut conn)
        .await
        .unwrap();
    // The control: a relay that remembers it registered the tenant does not write it again.
    support::append(&store, &stream, 1, "Placed").await;
    relay.publish_batch().await.unwrap();
    assert!(
        !registered(&mut conn).await,
        "remembered, not written again"
    );

    // A failed batch (its checkpoint not saved): the next one reloads and registers again.
    checkpoints.fail.store(true, Ordering::SeqCst);
    support::append(&store, &stream, 1, "Placed").await;
    assert!(relay.publish_batch().await.is_err(), "the save failed");
    assert!(!registered(&mut conn).await);
    let published = relay.publish_batch().await.unwrap();
    assert_eq!(published.events, 1, "the failed batch, re-sent");
    assert!(
        registered(&mut conn).await,
        "the tenant is registered again after the reload"
    );
    assert_eq!(
        support::entries(
            &mut conn,
            &keys.tenant_stream(&TenantId::new(tenant.as_str()))
        )
        .await
        .len(),
        3,
        "each event once"
    );
}

on_both_topologies!(
    a_relay_registers_its_tenants_again_after_an_error,
    instances_started_together_take_a_shard_each,
    three_relays_share_three_shards_and_take_over_a_dead_ones,
    a_running_runner_picks_up_a_new_tenant,
    a_discovering_runner_keeps_to_its_blocking_connection_cap,
    a_sharded_relay_refuses_a_key_shared_by_tenants,
    shards_start_from_the_unsharded_checkpoint,
    a_shard_reads_its_tenants_and_follows_the_log_end,
);

/// Neither the relay nor a discovering runner ever sends `KEYS` or `SCAN`: checked on a
/// Redis this test owns, whose command statistics count only its own commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_never_scans_the_keyspace() {
    let Some(redis) = support::OwnRedis::start() else {
        return;
    };
    let client = RedisClient::open(redis.url().as_str()).unwrap();
    let conn = client.connect().await.unwrap();
    let keys = Keys::new("own");
    let store = InMemoryEventStore::new();
    let shutdown = CancellationToken::new();
    let relay = RedisRelay::new(
        store.clone(),
        InMemoryCheckpointStore::new(),
        conn.clone(),
        "scan",
        RelayOptions::default().with_max_idle_poll(Duration::from_millis(20)),
    )
    .with_keys(&keys);
    let relay = tokio::spawn(relay.run(shutdown.clone()));
    let (runner, seen) = discovering_runner(
        &client,
        &conn,
        &keys,
        Some("kept".to_owned()),
        RunnerOptions::default().with_block_timeout(Duration::from_millis(100)),
    );
    let runner = tokio::spawn(runner.run(shutdown.clone()));
    support::append(
        &store,
        &support::stream("skipped", "order", "1"),
        2,
        "Placed",
    )
    .await;
    support::append(&store, &support::stream("kept", "order", "1"), 4, "Placed").await;
    let got = support::eventually(Duration::from_secs(15), || {
        let seen = seen.clone();
        async move { seen.of_tenant("kept").len() == 4 }
    })
    .await;
    assert!(got, "the kept tenant's events arrived");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(seen.of_tenant("skipped").is_empty(), "the filter holds");
    shutdown.cancel();
    relay.await.unwrap().unwrap();
    runner.await.unwrap().unwrap();
    let mut conn = conn;
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        stats.contains("cmdstat_scard:"),
        "the registry was watched: {stats}"
    );
    assert!(!stats.contains("cmdstat_scan:"), "{stats}");
    assert!(!stats.contains("cmdstat_keys:"), "{stats}");
}
