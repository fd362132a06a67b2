//! The Redis adapter of the [`EventBus`] facade.
//!
//! - `cleanup`: removing the broadcast groups of crashed processes;
//! - `entry`: a bus event as a stream entry and as a Pub/Sub message;
//! - `handler`: the bridge from [`ConsumerRunner`] entries to a subscription's handler;
//! - `live`: the Pub/Sub path of subscriptions that ask for no durability.

mod cleanup;
pub(crate) mod entry;
mod handler;
mod live;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use eventsource_core::RetryPolicy;
use eventsource_core::bus::{
    AdapterKind, BusConfig, BusError, BusEvent, BusHandler, BusHealth, BusStats, Delivery,
    EventBus, Pattern, Priority, SubscribeOptions, SubscriptionId, check_subscription,
    validate_batch,
};
use futures::future::BoxFuture;
use redis::aio::ConnectionManager;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::keys::{self, Keys};
use crate::runner::{ConsumerRunner, RunnerOptions, StartId};
use handler::Subscriber;

/// The name front of a broadcast subscription's own group: `broadcast-<subscription id>`.
const BROADCAST_GROUP: &str = "broadcast-";

/// Streams read from most to least urgent: the runner handles a read batch in this order.
const PRIORITIES: [Priority; 4] = [
    Priority::Critical,
    Priority::High,
    Priority::Normal,
    Priority::Low,
];

/// An [`EventBus`] on Redis: durable delivery on Redis Streams consumer groups, live delivery
/// on Pub/Sub.
///
/// - **Publishing** adds each event to the bus's stream of its [`Priority`]
///   ([`Keys::bus_stream`]) and publishes it on its topic's channel ([`Keys::bus_channel`]), in
///   one pipeline, encoded once: the entry is the bus's name (field `bus`) and the event's
///   JSON (field `bus_event`), the same text as the Pub/Sub message.
///   [`without_live_path`](RedisBus::without_live_path) skips the `PUBLISH`. All of a bus's keys share one hash tag, so the bus runs on Redis Cluster.
///   The streams are unbounded unless [`with_max_len`](RedisBus::with_max_len) caps them.
/// - **Durable subscriptions** (the default) run a [`ConsumerRunner`] over the four priority
///   streams, most urgent first: a [`Delivery::Group`] is a Redis consumer group shared by its
///   members (across processes), a broadcast subscription gets a group of its own, destroyed by
///   [`unsubscribe`](EventBus::unsubscribe) (or, once its process crashed, by
///   [`remove_idle_broadcast_groups`](RedisBus::remove_idle_broadcast_groups)). Groups start at the subscription (`$`), entries
///   are acknowledged after the handler, and the runner reclaims entries of crashed consumers.
///   Entries not matching the pattern are acknowledged unhandled.
/// - **Live subscriptions** ([`SubscribeOptions::live`]) `PSUBSCRIBE` the bus's channels: low
///   latency, but only while connected, and broadcast only.
///
/// Retries follow [`SubscribeOptions::retry`]; a given-up event goes to the dead-letter topic,
/// or, without one, to the runner's dead-letter stream
/// ([`dead_letter_stream`](crate::dead_letter_stream)) for [`dead_letters`](crate::dead_letters)
/// and [`requeue_dead_letter`](crate::requeue_dead_letter).
///
/// ```no_run
/// # use std::sync::Arc;
/// # use eventsource_core::bus::{BoxError, BusEvent, EventBus, Pattern, SubscribeOptions};
/// # use eventsource_redis::RedisBus;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = redis::Client::open("redis://127.0.0.1/")?;
/// let conn = client.get_connection_manager().await?;
/// let bus: Arc<dyn EventBus> = Arc::new(RedisBus::new(conn, client, "main"));
/// bus.subscribe(
///     Pattern::parse("*.completed")?,
///     Arc::new(|event: BusEvent| async move {
///         tracing::info!(topic = %event.topic, "done");
///         Ok::<(), BoxError>(())
///     }),
///     SubscribeOptions::default().with_group("notifier").with_dead_letter_topic("failed.notify"),
/// )
/// .await?;
/// bus.publish(BusEvent::new("analysis.completed", serde_json::json!({ "id": 7 }))).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

/// What a subscription's worker needs of the bus: publishing (dead letters) and counters.
pub(crate) struct Outlet {
    conn: ConnectionManager,
    keys: Keys,
    name: String,
    max_len: Option<usize>,
    /// The stream keys, in the order of [`PRIORITIES`].
    streams: [String; 4],
    /// Whether publishing also feeds the live (Pub/Sub) path.
    live: bool,
    published: AtomicU64,
    pub(crate) failed: AtomicU64,
}

struct Inner {
    outlet: Arc<Outlet>,
    relay_streams: Vec<String>,
    client: redis::Client,
    runner_options: RunnerOptions,
    instance: String,
    subscriptions: Mutex<HashMap<SubscriptionId, Running>>,
    /// How often the instance mark is renewed, and its renewal while it runs.
    heartbeat: Duration,
    heartbeat_task: Mutex<Option<CancellationToken>>,
}

/// What the builder methods change.
struct Settings {
    keys: Keys,
    relay_streams: Vec<String>,
    runner_options: RunnerOptions,
    max_len: Option<usize>,
    live: bool,
    heartbeat: Duration,
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// A broadcast subscription's own group and the keys it lives on, destroyed with it.
    own_group: Option<(String, Vec<String>)>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("name", &self.outlet.name)
            .field("prefix", &self.outlet.keys.prefix())
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for running in self.lock().values() {
            running.stop.cancel();
        }
        if let Some(beat) = self
            .heartbeat_task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            beat.cancel();
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<SubscriptionId, Running>> {
        self.subscriptions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The place of `priority` in [`PRIORITIES`].
fn priority_index(priority: Priority) -> usize {
    match priority {
        Priority::Critical => 0,
        Priority::High => 1,
        Priority::Normal => 2,
        Priority::Low => 3,
    }
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> BusError {
    BusError::Backend(Box::new(e))
}

impl Outlet {
    async fn publish(&self, events: Vec<BusEvent>) -> Result<(), BusError> {
        validate_batch(&events)?;
        if events.is_empty() {
            return Ok(());
        }
        let count = events.len();
        let mut pipe = redis::Pipeline::with_capacity(if self.live { 2 * count } else { count });
        // Each event is serialised into this one buffer, then copied into its commands: no
        // string per event. Replies are not `ignore()`d: that costs a set insert per command,
        // and a reply of `()` discards them anyway (server errors still fail the call).
        let mut message = Vec::with_capacity(1024);
        // Batches mostly share a topic: its channel name is built once per run of it.
        let mut channel: Option<(String, String)> = None;
        for event in events {
            let stream = &self.streams[priority_index(event.priority)];
            // Encoded once: the same text is the stream entry and the Pub/Sub message.
            message.clear();
            serde_json::to_writer(&mut message, &event).map_err(backend)?;
            pipe.add_command(entry::xadd(stream, self.max_len, &self.name, &message));
            if self.live {
                if channel
                    .as_ref()
                    .is_none_or(|(topic, _)| *topic != event.topic)
                {
                    let name = self.keys.bus_channel(&self.name, &event.topic);
                    channel = Some((event.topic, name));
                }
                if let Some((_, name)) = &channel {
                    pipe.add_command(entry::publish(name, &message));
                }
            }
        }
        let span =
            tracing::debug_span!("eventsource.redis.bus.publish", bus = %self.name, events = count);
        tracing::Instrument::instrument(pipe.query_async::<()>(&mut self.conn.clone()), span)
            .await
            .map_err(backend)?;
        self.published.fetch_add(count as u64, Ordering::Relaxed);
        Ok(())
    }
}

impl RedisBus {
    /// The bus `name` (its keys are `es:bus:{<name>}:…`) on the server behind `conn`; `client`
    /// opens the connections of blocking reads and Pub/Sub.
    #[must_use]
    pub fn new(conn: ConnectionManager, client: redis::Client, name: &str) -> Self {
        let settings = Settings {
            keys: Keys::default(),
            relay_streams: Vec::new(),
            runner_options: RunnerOptions::default().with_block_timeout(Duration::from_millis(500)),
            max_len: None,
            live: true,
            heartbeat: Duration::from_secs(10),
        };
        Self::build(conn, client, name, settings)
    }

    fn build(
        conn: ConnectionManager,
        client: redis::Client,
        name: &str,
        settings: Settings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                outlet: Arc::new(Outlet {
                    streams: PRIORITIES.map(|p| settings.keys.bus_stream(name, p)),
                    conn,
                    keys: settings.keys,
                    name: name.to_owned(),
                    max_len: settings.max_len,
                    live: settings.live,
                    published: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                }),
                relay_streams: settings.relay_streams,
                client,
                // The bus retries in the subscriber, so the runner calls the handler once and
                // dead-letters what the subscriber gave up on at once.
                runner_options: settings.runner_options.with_retry(RetryPolicy::never()),
                instance: uuid::Uuid::now_v7().simple().to_string(),
                subscriptions: Mutex::default(),
                heartbeat: settings.heartbeat,
                heartbeat_task: Mutex::default(),
            }),
        }
    }

    /// The same bus with changed settings; the builder methods go through here, so they
    /// belong before the first subscription.
    fn rebuild(&self, change: impl FnOnce(&mut Settings)) -> Self {
        let outlet = &self.inner.outlet;
        let mut settings = Settings {
            keys: outlet.keys.clone(),
            relay_streams: self.inner.relay_streams.clone(),
            runner_options: self.inner.runner_options.clone(),
            max_len: outlet.max_len,
            live: outlet.live,
            heartbeat: self.inner.heartbeat,
        };
        change(&mut settings);
        Self::build(
            outlet.conn.clone(),
            self.inner.client.clone(),
            &outlet.name,
            settings,
        )
    }

    /// Keys under another prefix (tests use a unique one each). Call before subscribing.
    #[must_use]
    pub fn with_keys(self, keys: Keys) -> Self {
        self.rebuild(|s| s.keys = keys)
    }

    /// Tuning of the durable subscriptions' runners (batch size, block timeout, reclaim,
    /// concurrency); their retry policy is replaced by the subscription's. Call before
    /// subscribing.
    #[must_use]
    pub fn with_runner_options(self, options: RunnerOptions) -> Self {
        self.rebuild(|s| s.runner_options = options)
    }

    /// Caps each of the bus's streams at about `len` entries (`XADD MAXLEN ~`, trimmed in
    /// whole nodes, so a little over `len`). Default: unbounded, since trimming drops entries
    /// whatever the groups have read: a durable subscription lagging more than `len` events
    /// behind (or stopped that long) loses the oldest of them. Size it to the publication
    /// rate times the longest outage subscribers must ride out.
    #[must_use]
    pub fn with_max_len(self, len: usize) -> Self {
        self.rebuild(|s| s.max_len = Some(len))
    }

    /// Publishes to the streams only, not to Pub/Sub: for buses without live subscriptions,
    /// it saves Redis a `PUBLISH` per event. Live subscriptions on this bus are then refused
    /// ([`BusError::Unsupported`]); give every process that publishes to a bus some other
    /// process subscribes to live the default instead, or those subscribers miss its events.
    #[must_use]
    pub fn without_live_path(self) -> Self {
        self.rebuild(|s| s.live = false)
    }

    /// Also delivers the events a [`RedisRelay`](crate::RedisRelay) relays from the
    /// event store into `streams` (for example [`Keys::tenant_stream`]) to durable
    /// subscriptions, on topic `<aggregate type>.<event type>` (characters a topic cannot
    /// hold become `_`). The relay puts each committed event into its stream exactly once;
    /// subscriptions receive it at least once, like any bus event. Call before subscribing.
    #[must_use]
    pub fn with_relay_streams(self, streams: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let streams: Vec<String> = streams.into_iter().map(Into::into).collect();
        self.rebuild(|s| s.relay_streams = streams)
    }

    /// The bus's stream keys, most urgent first.
    #[must_use]
    pub fn streams(&self) -> Vec<String> {
        self.inner.outlet.streams.to_vec()
    }

    async fn subscribe_durable(
        &self,
        id: SubscriptionId,
        subscriber: Subscriber,
        delivery: Delivery,
    ) -> Result<Running, BusError> {
        let mut streams = self.streams();
        streams.extend(self.inner.relay_streams.iter().cloned());
        let (group, own) = if let Delivery::Group(group) = delivery {
            (group, false)
        } else {
            self.keep_alive().await?;
            (format!("{BROADCAST_GROUP}{id}"), true)
        };
        let consumer = format!("{}-{id}", self.inner.instance);
        let mut runner = ConsumerRunner::new(
            self.inner.outlet.conn.clone(),
            self.inner.client.clone(),
            streams.clone(),
            group.clone(),
            consumer,
            subscriber,
            self.inner.runner_options.clone(),
        )
        .with_start_id(StartId::New)
        .with_decoder(entry::decode_deferred);
        // Created before returning, so every later publication reaches the subscription.
        runner.ensure_groups().await.map_err(backend)?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = runner.run(token).await {
                tracing::error!(error = %e, "bus subscription stopped");
            }
        });
        let own_group = own.then(|| {
            let mut keys = streams.clone();
            keys.extend(streams.iter().map(|s| keys::requeue_stream(s, &group)));
            (group, keys)
        });
        Ok(Running {
            stop,
            task,
            own_group,
        })
    }
}

impl EventBus for RedisBus {
    fn publish(&self, event: BusEvent) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(self.inner.outlet.publish(vec![event]))
    }

    fn publish_batch(&self, events: Vec<BusEvent>) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(self.inner.outlet.publish(events))
    }

    fn subscribe(
        &self,
        pattern: Pattern,
        handler: Arc<dyn BusHandler>,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<SubscriptionId, BusError>> {
        Box::pin(async move {
            check_subscription(&pattern, &options)?;
            tokio::runtime::Handle::try_current().map_err(|_| BusError::NoRuntime)?;
            let id = SubscriptionId::new();
            let durable = options.is_durable();
            let delivery = options.delivery().clone();
            let subscriber = Subscriber {
                pattern,
                handler,
                options,
                bus: Arc::clone(&self.inner.outlet),
            };
            let running = if durable {
                self.subscribe_durable(id, subscriber, delivery).await?
            } else {
                if !self.inner.outlet.live {
                    return Err(BusError::Unsupported {
                        adapter: "redis",
                        what: "a live (Pub/Sub) subscription on a bus without its live path",
                    });
                }
                if delivery != Delivery::Broadcast {
                    return Err(BusError::Unsupported {
                        adapter: "redis",
                        what: "a group on a live (Pub/Sub) subscription",
                    });
                }
                let glob = self
                    .inner
                    .outlet
                    .keys
                    .bus_channel_glob(&self.inner.outlet.name);
                live::subscribe(&self.inner.client, &glob, subscriber).await?
            };
            self.inner.lock().insert(id, running);
            Ok(id)
        })
    }

    fn unsubscribe(&self, id: SubscriptionId) -> BoxFuture<'_, Result<bool, BusError>> {
        Box::pin(async move {
            let Some(running) = self.inner.lock().remove(&id) else {
                return Ok(false);
            };
            running.stop.cancel();
            // The worker finishes the event in hand; nothing is delivered after this.
            if let Err(e) = running.task.await {
                tracing::warn!(error = %e, "bus subscription task failed");
            }
            if let Some((group, keys)) = running.own_group {
                destroy_group(&mut self.inner.outlet.conn.clone(), &group, &keys).await?;
            }
            Ok(true)
        })
    }

    fn health(&self) -> BoxFuture<'_, BusHealth> {
        Box::pin(async move {
            let pong: Result<String, _> = redis::cmd("PING")
                .query_async(&mut self.inner.outlet.conn.clone())
                .await;
            match pong {
                Ok(_) => BusHealth::healthy("redis"),
                Err(e) => BusHealth::unhealthy("redis", e.to_string()),
            }
        })
    }

    fn stats(&self) -> BusStats {
        let outlet = &self.inner.outlet;
        let mut stats = BusStats::default();
        stats.published = outlet.published.load(Ordering::Relaxed);
        stats.failed = outlet.failed.load(Ordering::Relaxed);
        stats.active_subscriptions = self.inner.lock().len() as u64;
        stats
    }
}

/// Destroys `group` on each of `keys` (which must exist; a missing group is skipped).
async fn destroy_group(
    conn: &mut ConnectionManager,
    group: &str,
    keys: &[String],
) -> Result<(), BusError> {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("XGROUP")
            .arg("DESTROY")
            .arg(key)
            .arg(group)
            .ignore();
    }
    pipe.query_async::<()>(conn).await.map_err(backend)
}

/// The bus a [`BusConfig`] asks for: an [`InMemoryBus`](eventsource_core::InMemoryBus), or a
/// [`RedisBus`] named `name` on `REDIS_URL`.
///
/// ```no_run
/// # use eventsource_core::bus::BusConfig;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = eventsource_redis::connect_bus(&BusConfig::from_env()?, "main").await?;
/// tracing::info!(adapter = bus.health().await.adapter, "bus ready");
/// # Ok(()) }
/// ```
pub async fn connect_bus(config: &BusConfig, name: &str) -> Result<Arc<dyn EventBus>, BusError> {
    match (config.adapter, &config.redis_url) {
        (AdapterKind::Redis, Some(url)) => {
            let client = redis::Client::open(url.as_str()).map_err(backend)?;
            let conn = client.get_connection_manager().await.map_err(backend)?;
            Ok(Arc::new(RedisBus::new(conn, client, name)))
        }
        (AdapterKind::Redis, None) => {
            Err(backend(eventsource_core::bus::ConfigError::MissingRedisUrl))
        }
        _ => Ok(Arc::new(config.memory_bus())),
    }
}
