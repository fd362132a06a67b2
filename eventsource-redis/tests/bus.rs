//! The Redis bus: the bus conformance suite against a real Redis, and what only Redis does
//! (the live Pub/Sub path, the runner's dead-letter stream, the relay, group lifetimes).

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventsource_core::bus::{
    BoxError, BusConfig, BusError, BusEvent, EventBus, Pattern, SubscribeOptions,
};
use eventsource_redis::{Keys, RedisBus, dead_letter_count};

async fn bus() -> Option<RedisBus> {
    let url = support::redis_url()?;
    let (client, conn) = support::connect(&url).await;
    Some(RedisBus::new(conn, client, "main").with_keys(Keys::new(&support::prefix())))
}

eventsource_core::bus_conformance_tests!(optional async bus());

fn recorder() -> (
    Arc<dyn eventsource_core::bus::BusHandler>,
    Arc<Mutex<Vec<BusEvent>>>,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let handler = move |event: BusEvent| {
        sink.lock().unwrap().push(event);
        async { Ok::<(), BoxError>(()) }
    };
    (Arc::new(handler), seen)
}

fn topics(seen: &Mutex<Vec<BusEvent>>) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|e| e.topic.clone())
        .collect()
}

async fn wait_for(seen: &Mutex<Vec<BusEvent>>, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < n {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_subscriptions_ride_pub_sub() {
    let Some(bus) = bus().await else { return };
    let (handler, seen) = recorder();
    let options = SubscribeOptions::default().live();
    bus.subscribe(Pattern::parse("*.completed").unwrap(), handler, options)
        .await
        .unwrap();
    bus.publish(BusEvent::new("job.started", 1.into()))
        .await
        .unwrap();
    bus.publish(BusEvent::new("job.completed", 2.into()))
        .await
        .unwrap();
    wait_for(&seen, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let topics = topics(&seen);
    assert_eq!(topics, ["job.completed"]);

    let (handler, _) = recorder();
    let grouped = SubscribeOptions::default().live().with_group("g");
    let err = bus
        .subscribe(Pattern::all(), handler, grouped)
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::Unsupported { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dead_letter_topic_the_runner_dead_letters_into_its_stream() {
    let Some(bus) = bus().await else { return };
    let failing = |_: BusEvent| async { Err::<(), BoxError>("always".into()) };
    let options = SubscribeOptions::default()
        .with_group("g")
        .with_max_attempts(2);
    bus.subscribe(Pattern::all(), Arc::new(failing), options)
        .await
        .unwrap();
    bus.publish(BusEvent::new("t", 1.into())).await.unwrap();
    let url = support::redis_url().unwrap();
    let (_, mut conn) = support::connect(&url).await;
    let normal = &bus.streams()[2];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while dead_letter_count(&mut conn, normal, "g").await.unwrap() < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(bus.stats().failed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configuration_picks_the_adapter() {
    let Some(url) = support::redis_url() else {
        return;
    };
    let redis = BusConfig::from_lookup(|name| match name {
        "EVENT_BUS_ADAPTER" => Some("redis".to_owned()),
        "REDIS_URL" => Some(url.clone()),
        _ => None,
    })
    .unwrap();
    let bus = eventsource_redis::connect_bus(&redis, &support::prefix())
        .await
        .unwrap();
    assert_eq!(bus.health().await.adapter, "redis");
    let memory = BusConfig::from_lookup(|_| None).unwrap();
    let bus = eventsource_redis::connect_bus(&memory, "main")
        .await
        .unwrap();
    assert_eq!(bus.health().await.adapter, "memory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_reach_subscribers_through_the_relay() {
    use eventsource_core::InMemoryCheckpointStore;
    use eventsource_redis::{RedisRelay, RelayOptions};

    let Some(url) = support::redis_url() else {
        return;
    };
    let (client, conn) = support::connect(&url).await;
    let keys = Keys::new(&support::prefix());
    let stream = keys.tenant_stream(&"acme".into());
    let bus = RedisBus::new(conn.clone(), client, "main")
        .with_keys(keys.clone())
        .with_relay_streams([stream]);
    let (handler, seen) = recorder();
    bus.subscribe(
        Pattern::parse("account.*").unwrap(),
        handler,
        SubscribeOptions::default(),
    )
    .await
    .unwrap();

    let store = eventsource_core::InMemoryEventStore::new();
    support::append(
        &store,
        &support::stream("acme", "account", "a1"),
        3,
        "Opened",
    )
    .await;
    let mut relay = RedisRelay::new(
        store.clone(),
        InMemoryCheckpointStore::new(),
        conn,
        "bus-relay",
        RelayOptions::default(),
    )
    .with_keys(&keys);
    relay.catch_up().await.unwrap();
    // A second pass (a restarted relay) adds nothing.
    relay.catch_up().await.unwrap();
    wait_for(&seen, 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = seen.lock().unwrap().clone();
    assert_eq!(events.len(), 3, "each committed event once");
    let log = support::log(&store).await;
    for (event, stored) in events.iter().zip(&log) {
        assert_eq!(event.topic, "account.Opened");
        assert_eq!(event.id, stored.event_id);
        assert_eq!(event.payload, stored.payload);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_start_at_the_subscription_ack_what_they_skip_and_broadcasts_clean_up() {
    use redis::AsyncCommands as _;

    let Some(bus) = bus().await else { return };
    let url = support::redis_url().unwrap();
    let (_, mut conn) = support::connect(&url).await;
    bus.publish(BusEvent::new("a.before", 0.into()))
        .await
        .unwrap();
    let (handler, seen) = recorder();
    let grouped = SubscribeOptions::default().with_group("g");
    bus.subscribe(Pattern::parse("a.*").unwrap(), handler, grouped)
        .await
        .unwrap();
    let (copy, _) = recorder();
    let broadcast = bus
        .subscribe(Pattern::all(), copy, SubscribeOptions::default())
        .await
        .unwrap();
    bus.publish(BusEvent::new("b.skipped", 1.into()))
        .await
        .unwrap();
    bus.publish(BusEvent::new("a.after", 2.into()))
        .await
        .unwrap();
    wait_for(&seen, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let topics = topics(&seen);
    assert_eq!(topics, ["a.after"], "nothing from before the group existed");
    let normal = &bus.streams()[2];
    let pending: redis::streams::StreamPendingReply = conn.xpending(normal, "g").await.unwrap();
    assert_eq!(pending.count(), 0, "the skipped event was acknowledged too");

    let groups = |conn: &mut redis::aio::ConnectionManager| {
        let mut conn = conn.clone();
        let key = normal.clone();
        async move {
            let info: redis::streams::StreamInfoGroupsReply =
                conn.xinfo_groups(&key).await.unwrap();
            info.groups.into_iter().map(|g| g.name).collect::<Vec<_>>()
        }
    };
    assert_eq!(groups(&mut conn).await.len(), 2);
    assert!(bus.unsubscribe(broadcast).await.unwrap());
    assert_eq!(
        groups(&mut conn).await,
        ["g"],
        "the broadcast group is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_broadcast_groups_of_crashed_processes_are_removed() {
    use redis::AsyncCommands as _;

    let Some(url) = support::redis_url() else {
        return;
    };
    let keys = Keys::new(&support::prefix());
    let (client, conn) = support::connect(&url).await;
    let fast =
        eventsource_redis::RunnerOptions::default().with_block_timeout(Duration::from_millis(50));
    let open = || {
        RedisBus::new(conn.clone(), client.clone(), "main")
            .with_keys(keys.clone())
            .with_runner_options(fast.clone())
            .with_heartbeat(Duration::from_millis(100))
    };
    // A process that "crashes": its bus is dropped without unsubscribing.
    let crashed = open();
    let (handler, seen) = recorder();
    crashed
        .subscribe(Pattern::all(), handler, SubscribeOptions::default())
        .await
        .unwrap();
    let (handler, _) = recorder();
    crashed
        .subscribe(
            Pattern::all(),
            handler,
            SubscribeOptions::default().with_group("shared"),
        )
        .await
        .unwrap();
    crashed
        .publish(BusEvent::new("a.b", 1.into()))
        .await
        .unwrap();
    wait_for(&seen, 1).await;
    drop(crashed);

    let alive = open();
    let (handler, _) = recorder();
    alive
        .subscribe(Pattern::all(), handler, SubscribeOptions::default())
        .await
        .unwrap();
    let (other_process, _) = {
        let other = open();
        let (handler, seen) = recorder();
        other
            .subscribe(Pattern::all(), handler, SubscribeOptions::default())
            .await
            .unwrap();
        (other, seen)
    };
    let normal = alive.streams()[2].clone();
    let (_, mut conn) = support::connect(&url).await;
    let groups = async |conn: &mut redis::aio::ConnectionManager| {
        let info: redis::streams::StreamInfoGroupsReply = conn.xinfo_groups(&normal).await.unwrap();
        info.groups.len()
    };
    assert_eq!(groups(&mut conn).await, 4);
    assert_eq!(
        alive
            .remove_idle_broadcast_groups(Duration::from_mins(1))
            .await
            .unwrap(),
        0,
        "nothing idle that long"
    );
    // The crashed bus's mark expires 300 ms after its last heartbeat; the quiet live
    // consumers idle as long, but their instances are marked alive.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        alive
            .remove_idle_broadcast_groups(Duration::from_millis(500))
            .await
            .unwrap(),
        1,
        "only the crashed broadcast group"
    );
    assert_eq!(
        groups(&mut conn).await,
        3,
        "own, other live and shared groups stay"
    );
    drop(other_process);
}

#[tokio::test]
async fn max_len_caps_the_bus_streams() {
    use redis::AsyncCommands as _;

    let Some(bus) = bus().await else { return };
    let bus = bus.with_max_len(100);
    let events: Vec<_> = (0..2_000).map(|n| BusEvent::new("a.b", n.into())).collect();
    for batch in events.chunks(500) {
        bus.publish_batch(batch.to_vec()).await.unwrap();
    }
    let url = support::redis_url().unwrap();
    let (_, mut conn) = support::connect(&url).await;
    let len: usize = conn.xlen(&bus.streams()[2]).await.unwrap();
    assert!((100..500).contains(&len), "{len} entries kept");
}

/// Waits until `group` dead-lettered something from `stream`.
async fn wait_for_dead_letter(conn: &mut redis::aio::ConnectionManager, stream: &str, group: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while dead_letter_count(conn, stream, group).await.unwrap() < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_entries_are_one_json_field_that_dead_letters_and_requeues_keep() {
    use redis::streams::StreamRangeReply;
    use std::sync::atomic::{AtomicBool, Ordering};

    let Some(bus) = bus().await else { return };
    let failing = Arc::new(AtomicBool::new(true));
    let (record, seen) = recorder();
    let fails = Arc::clone(&failing);
    let handler = move |event: BusEvent| {
        let fail = fails.load(Ordering::SeqCst);
        let record = Arc::clone(&record);
        async move {
            if fail {
                return Err::<(), BoxError>("not yet".into());
            }
            record.handle(&event).await
        }
    };
    let options = SubscribeOptions::default()
        .with_group("g")
        .with_max_attempts(1);
    bus.subscribe(Pattern::all(), Arc::new(handler), options)
        .await
        .unwrap();
    let event = BusEvent::new("job.done", serde_json::json!({ "id": 7 }));
    bus.publish(event.clone()).await.unwrap();

    let url = support::redis_url().unwrap();
    let (_, mut conn) = support::connect(&url).await;
    let normal = &bus.streams()[2];
    let entries: StreamRangeReply = redis::AsyncCommands::xrange_all(&mut conn, normal)
        .await
        .unwrap();
    let mut fields: Vec<&String> = entries.ids[0].map.keys().collect();
    fields.sort();
    assert_eq!(fields, ["bus", "bus_event"]);
    let json: String = entries.ids[0].get("bus_event").unwrap();
    assert_eq!(serde_json::from_str::<BusEvent>(&json).unwrap(), event);

    wait_for_dead_letter(&mut conn, normal, "g").await;
    let letters = eventsource_redis::dead_letters(&mut conn, normal, "g", 10)
        .await
        .unwrap();
    let stored = letters[0].event.as_ref().unwrap();
    assert_eq!(stored.event_id, event.id);
    assert_eq!(stored.event_type, "job.done");
    assert_eq!(stored.payload, event.payload);

    failing.store(false, Ordering::SeqCst);
    eventsource_redis::requeue_dead_letter(&mut conn, normal, "g", &letters[0].id)
        .await
        .unwrap();
    wait_for(&seen, 1).await;
    assert_eq!(seen.lock().unwrap()[0], event);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_entry_that_is_no_event_is_dead_lettered_with_its_fields() {
    let Some(bus) = bus().await else { return };
    let (handler, seen) = recorder();
    bus.subscribe(
        Pattern::all(),
        handler,
        SubscribeOptions::default().with_group("g"),
    )
    .await
    .unwrap();
    // Starts like the bus's JSON (id, topic: subscriptions read that much before they parse),
    // but the rest is not an event.
    let json = format!(
        "{{\"id\":\"{}\",\"topic\":\"job.done\",\"payload\":",
        uuid::Uuid::now_v7()
    );
    let url = support::redis_url().unwrap();
    let (_, mut conn) = support::connect(&url).await;
    let normal = &bus.streams()[2];
    let _: String = redis::AsyncCommands::xadd(
        &mut conn,
        normal,
        "*",
        &[("bus", "main"), ("bus_event", json.as_str())],
    )
    .await
    .unwrap();
    let event = BusEvent::new("job.done", serde_json::json!({ "id": 9 }));
    bus.publish(event.clone()).await.unwrap();
    // The next event is handled; the broken one waits in the dead-letter stream, as written.
    wait_for(&seen, 1).await;
    assert_eq!(seen.lock().unwrap()[0], event);
    wait_for_dead_letter(&mut conn, normal, "g").await;
    let letters = eventsource_redis::dead_letters(&mut conn, normal, "g", 10)
        .await
        .unwrap();
    let error = letters[0].error.as_deref().unwrap_or_default();
    assert!(error.contains("malformed bus entry"), "{error}");
    let kept: String = redis::from_redis_value(letters[0].fields["bus_event"].clone()).unwrap();
    assert_eq!(kept, json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_in_the_earlier_envelope_format_are_still_delivered() {
    use eventsource_core::bus::Priority;
    use eventsource_core::{
        EventId, LogPosition, Metadata, RecordedEvent, StreamId, TenantId, Version,
    };

    let Some(bus) = bus().await else { return };
    let (handler, seen) = recorder();
    let options = SubscribeOptions::default().with_group("g");
    bus.subscribe(Pattern::all(), handler, options)
        .await
        .unwrap();
    // What a bus wrote before entries became one JSON field: the relay's envelope, the
    // topic as event type and aggregate id, the priority in the metadata.
    let mut metadata = Metadata::new();
    metadata
        .extra
        .insert("bus_priority".into(), serde_json::json!("high"));
    let old = RecordedEvent {
        event_id: EventId::new(),
        stream: StreamId::new(TenantId::new("main"), "bus", "job.done"),
        version: Version::new(1),
        position: LogPosition::new(0, 0),
        event_type: "job.done".into(),
        schema_version: 1,
        recorded_at: chrono::Utc::now(),
        metadata,
        payload: serde_json::json!({ "id": 8 }),
    };
    let url = support::redis_url().unwrap();
    let (_, mut conn) = support::connect(&url).await;
    let _: String = redis::AsyncCommands::xadd(
        &mut conn,
        &bus.streams()[1],
        "*",
        &eventsource_redis::codec::encode_pairs(&old),
    )
    .await
    .unwrap();
    wait_for(&seen, 1).await;
    let got = seen.lock().unwrap()[0].clone();
    assert_eq!(
        (got.id, got.topic.as_str(), got.priority, got.payload),
        (old.event_id, "job.done", Priority::High, old.payload)
    );
    assert!(got.metadata.extra.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_without_its_live_path_delivers_durably_and_refuses_live_subscriptions() {
    let Some(url) = support::redis_url() else {
        return;
    };
    let (client, conn) = support::connect(&url).await;
    let keys = Keys::new(&support::prefix());
    let live_bus = RedisBus::new(conn.clone(), client.clone(), "main").with_keys(keys.clone());
    let bus = RedisBus::new(conn, client, "main")
        .with_keys(keys)
        .without_live_path();

    let (handler, _) = recorder();
    let err = bus
        .subscribe(Pattern::all(), handler, SubscribeOptions::default().live())
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::Unsupported { .. }), "{err}");

    let (live, heard) = recorder();
    live_bus
        .subscribe(Pattern::all(), live, SubscribeOptions::default().live())
        .await
        .unwrap();
    let (durable, seen) = recorder();
    bus.subscribe(Pattern::all(), durable, SubscribeOptions::default())
        .await
        .unwrap();
    bus.publish(BusEvent::new("job.done", 1.into()))
        .await
        .unwrap();
    wait_for(&seen, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(heard.lock().unwrap().is_empty(), "it published to Pub/Sub");
}
