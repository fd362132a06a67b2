//! Bad input to a durable saga on the headline path (PostgreSQL → relay → Redis consumer group
//! → [`PgSagaHandler`]), issue 15:
//!
//! - a stored saga state that no longer decodes — its shape changed without a new
//!   [`Saga::STATE_VERSION`], or the version was raised — is a typed error
//!   ([`SagaError::State`]) naming saga, instance and versions; the runner dead-letters the
//!   event on its first delivery and moves on to other instances; the state row is left exactly
//!   as stored (never reset to the default) and the event's commands appended nothing;
//! - an event type a saga does not know is skipped or dead-lettered, as the saga declares: a
//!   [`TypedSaga`] skips it (acknowledged, no state change, nothing appended); a saga that
//!   routes it and calls the error permanent ([`Saga::is_permanent`]) has it dead-lettered at
//!   once, its instance's state unchanged.
//!
//! (The in-memory and `SagaHandler` sides of these are in `eventsource-core`'s conformance
//! suite and `tests/typed.rs`.)

mod support;

use std::marker::PhantomData;
use std::time::Duration;

use eventsource_core::{
    DomainEvent, Envelope, EventHandler, EventStore, ExpectedVersion, LogFilter, NewEvent,
    RecordedEvent, Repository, Saga, SagaError, SagaKey, SagaState, SagaStore, StreamId, TenantId,
    Typed, TypedSaga, VersionRange,
};
use eventsource_postgres::{MIGRATOR, PgCheckpointStore, PgEventStore, PgSagaHandler, PgSagaStore};
use eventsource_redis::{
    ConsumerRunner, Keys, RedisRelay, RelayOptions, RunnerCounters, RunnerOptions,
};
use redis::aio::ConnectionManager;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use support::order::Counter;
use tokio_util::sync::CancellationToken;

/// A saga's command: a tick labelled with the handled event's stream version, on the ledger
/// `ledger-<instance>` (a [`Counter`]).
type Tick = (String, u64);

fn tick(instance: &str, event: &RecordedEvent) -> Tick {
    (format!("ledger-{instance}"), event.version.get())
}

/// A state that counts the events its instance handled.
trait Count: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    fn count(&mut self);
}

/// The first shape of the state.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Seen {
    seen: u32,
}

impl Count for Seen {
    fn count(&mut self) {
        self.seen += 1;
    }
}

/// A later shape with a required field the first shape lacks.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SeenSince {
    seen: u32,
    since: String,
}

impl Count for SeenSince {
    fn count(&mut self) {
        self.seen += 1;
    }
}

/// Ticks once per `order-noted` event of its order; state `S`, stored as schema version `V`.
struct Tally<S, const V: u32>(PhantomData<S>);

impl<S, const V: u32> Tally<S, V> {
    fn new() -> Self {
        Self(PhantomData)
    }
}

impl<S: Count, const V: u32> Saga for Tally<S, V> {
    const NAME: &'static str = "tally";
    const STATE_VERSION: u32 = V;
    type State = S;
    type Command = Tick;
    type Error = std::convert::Infallible;

    fn correlate(&self, event: &RecordedEvent) -> Option<String> {
        (event.event_type == "order-noted").then(|| event.stream.aggregate_id().to_owned())
    }

    fn react(&self, state: &mut S, event: &RecordedEvent) -> Result<Vec<Tick>, Self::Error> {
        state.count();
        Ok(vec![tick(event.stream.aggregate_id(), event)])
    }
}

/// The events the sagas of the unknown-type test know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum OrderNote {
    #[event(name = "order-noted")]
    Noted { order: String },
}

/// Knows `order-noted` only; skips every other type.
struct Lenient;

impl TypedSaga for Lenient {
    const NAME: &'static str = "lenient";
    type Event = OrderNote;
    type State = u32;
    type Command = Tick;
    type Error = std::convert::Infallible;

    fn correlate(&self, event: &Envelope<OrderNote>) -> Option<String> {
        let OrderNote::Noted { order } = &event.payload;
        Some(order.clone())
    }

    fn react(&self, seen: &mut u32, event: &Envelope<OrderNote>) -> Result<Vec<Tick>, Self::Error> {
        *seen += 1;
        let OrderNote::Noted { order } = &event.payload;
        Ok(vec![(format!("lenient-{order}"), event.version.get())])
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown event type {0}")]
struct UnknownType(String);

/// Routes every event of an order and refuses, for good, the types it does not know.
struct Strict;

impl Saga for Strict {
    const NAME: &'static str = "strict";
    type State = u32;
    type Command = Tick;
    type Error = UnknownType;

    fn correlate(&self, event: &RecordedEvent) -> Option<String> {
        (event.stream.aggregate_type() == "order").then(|| event.stream.aggregate_id().to_owned())
    }

    fn react(&self, seen: &mut u32, event: &RecordedEvent) -> Result<Vec<Tick>, UnknownType> {
        if event.event_type != "order-noted" {
            return Err(UnknownType(event.event_type.clone()));
        }
        *seen += 1;
        let order = event.stream.aggregate_id();
        Ok(vec![(format!("strict-{order}"), event.version.get())])
    }

    fn is_permanent(&self, _: &UnknownType) -> bool {
        true
    }
}

/// A tenant's events on PostgreSQL, published to Redis by a relay run on demand.
struct Setup {
    pool: PgPool,
    store: PgEventStore,
    conn: ConnectionManager,
    client: redis::Client,
    tenant: TenantId,
    keys: Keys,
}

impl Setup {
    async fn new() -> Option<Self> {
        let (Some(db_url), Some(redis_url)) = (
            support::service_url("DATABASE_URL"),
            support::service_url("REDIS_URL"),
        ) else {
            return None;
        };
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(&db_url)
            .await
            .expect("connect to DATABASE_URL");
        MIGRATOR.run(&pool).await.expect("migrations");
        let client = redis::Client::open(redis_url).expect("REDIS_URL");
        let conn = client
            .get_connection_manager()
            .await
            .expect("connect to Redis");
        Some(Self {
            store: PgEventStore::new(pool.clone()),
            pool,
            conn,
            client,
            tenant: TenantId::new(support::unique("saga-bad-input")),
            keys: Keys::new(&support::unique("saga-bad-input")),
        })
    }

    /// Appends an event of `event_type` to order `order`; returns it once the log shows it
    /// (and so everything before it).
    async fn append(&self, order: &str, event_type: &str) -> RecordedEvent {
        let stream = StreamId::new(self.tenant.clone(), "order", order);
        let event = NewEvent::new(event_type, 1, serde_json::json!({ "order": order }));
        let id = event.event_id;
        self.store
            .append(&stream, ExpectedVersion::Any, vec![event])
            .await
            .expect("append");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let log = support::tenant_log(&self.store, &self.tenant, 0).await;
            if let Some(event) = log.into_iter().find(|e| e.event_id == id) {
                return event;
            }
            assert!(tokio::time::Instant::now() < deadline, "{id} never showed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Publishes the tenant's log, as far as it shows, to its Redis stream, as the relay does.
    async fn publish(&self) {
        RedisRelay::new(
            self.store.clone(),
            PgCheckpointStore::new(self.pool.clone()),
            self.conn.clone(),
            self.keys.prefix(),
            RelayOptions::default().with_filter(LogFilter::tenant(self.tenant.clone())),
        )
        .with_keys(&self.keys)
        .catch_up()
        .await
        .expect("publish");
    }

    fn stream_key(&self) -> String {
        self.keys.tenant_stream(&self.tenant)
    }

    /// Runs `handler` in consumer group `group` until `done` holds of its counters.
    async fn run<H: EventHandler + 'static>(
        &self,
        group: &str,
        handler: H,
        done: impl Fn(&RunnerCounters) -> bool,
    ) {
        let runner = ConsumerRunner::new(
            self.conn.clone(),
            self.client.clone(),
            [self.stream_key()],
            group,
            "consumer",
            handler,
            RunnerOptions::default().with_block_timeout(Duration::from_millis(50)),
        )
        .with_store(self.store.clone());
        let counters = runner.counters();
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(runner.run(shutdown.clone()));
        support::wait_for(group, async || done(&counters)).await;
        shutdown.cancel();
        running.await.expect("runner task").expect("runner");
    }

    /// `(event type, error)` of each dead letter of `group`.
    async fn dead_letters(&self, group: &str) -> Vec<(String, String)> {
        eventsource_redis::dead_letters(&mut self.conn.clone(), &self.stream_key(), group, 10)
            .await
            .expect("dead letters")
            .into_iter()
            .map(|d| {
                let event_type = d.event.map(|e| e.event_type).unwrap_or_default();
                (event_type, d.error.unwrap_or_default())
            })
            .collect()
    }

    /// The labels of the ticks on ledger `id`.
    async fn ticks(&self, id: &str) -> Vec<u64> {
        let stream = StreamId::new(self.tenant.clone(), "counter", id);
        self.store
            .read_stream(&stream, VersionRange::all())
            .await
            .expect("read")
            .iter()
            .map(support::order::label)
            .collect()
    }

    async fn state(&self, saga: &str, instance: &str) -> Option<SagaState> {
        let key = SagaKey::new(self.tenant.clone(), saga, instance);
        PgSagaStore::new(self.pool.clone())
            .load(&key)
            .await
            .expect("load")
    }

    fn handler<G: Saga<Command = Tick>>(&self, saga: G) -> PgSagaHandler<G, Ledger> {
        let ledger = Repository::<Counter, _>::new(self.store.clone())
            .with_tenant(self.tenant.clone())
            .without_cache();
        PgSagaHandler::new(self.pool.clone(), saga, ledger)
    }
}

type Ledger = Repository<Counter, PgEventStore>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_state_that_no_longer_decodes_is_dead_lettered_and_left_as_stored() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    // Version 1 of the saga handles o-1's first event.
    let first = setup.append("o-1", "order-noted").await;
    setup
        .handler(Tally::<Seen, 1>::new())
        .handle(&first)
        .await
        .expect("version 1 handles it");
    let stored = setup.state("tally", "o-1").await.expect("o-1's state");
    assert_eq!(stored.state, serde_json::json!({ "seen": 1 }));

    // The state's shape changes without a new schema version: o-1's next event is
    // dead-lettered on its first delivery, o-2 (no state yet) is handled, the first event (its
    // redelivery) is skipped as handled, as is the tick it caused (another saga's business).
    let second = setup.append("o-1", "order-noted").await;
    setup.append("o-2", "order-noted").await;
    setup.publish().await;
    setup
        .run("tally", setup.handler(Tally::<SeenSince, 1>::new()), |c| {
            c.dead_lettered() >= 1 && c.handled() >= 3
        })
        .await;
    let dead = setup.dead_letters("tally").await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (event_type, error) = &dead[0];
    assert_eq!(event_type, "order-noted");
    assert!(
        error.contains("saga tally, instance o-1") && error.contains("does not decode"),
        "the dead letter names saga and instance: {error}"
    );
    assert_eq!(
        setup.state("tally", "o-1").await.as_ref(),
        Some(&stored),
        "o-1's state is left as stored, never reset"
    );
    assert_eq!(
        setup.ticks("ledger-o-1").await,
        [1],
        "nothing appended for it"
    );
    assert_eq!(setup.ticks("ledger-o-2").await, [1], "o-2 handled");
    let o2 = setup.state("tally", "o-2").await.expect("o-2's state");
    assert_eq!(o2.state["seen"], 1);

    // The schema version is raised: the same event is a typed error naming saga, instance
    // and both versions, permanent, and the state is still as stored.
    let handler = setup.handler(Tally::<Seen, 2>::new());
    let error = handler
        .handle(&second)
        .await
        .expect_err("a version 1 state");
    assert!(
        matches!(&error, SagaError::State(e)
            if e.saga == "tally" && e.instance == "o-1" && e.tenant == setup.tenant
                && e.stored_version == 1 && e.expected_version == 2),
        "{error:?}"
    );
    assert!(handler.is_permanent(&error));
    assert_eq!(setup.state("tally", "o-1").await.as_ref(), Some(&stored));
    assert_eq!(setup.ticks("ledger-o-1").await, [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_event_type_is_skipped_or_dead_lettered_as_the_saga_declares() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    setup.append("o-1", "order-noted").await;
    setup.append("o-1", "order-gift-wrapped").await;
    setup.append("o-1", "order-noted").await;
    setup.publish().await;

    // The typed saga skips the type it does not know: all three entries acknowledged.
    setup
        .run("lenient", setup.handler(Typed::new(Lenient)), |c| {
            c.handled() >= 3
        })
        .await;
    assert!(setup.dead_letters("lenient").await.is_empty());
    assert_eq!(setup.ticks("lenient-o-1").await, [1, 3]);
    let lenient = setup.state("lenient", "o-1").await.expect("state");
    assert_eq!((lenient.version, lenient.state), (2, serde_json::json!(2)));

    // The strict saga refuses it for good: dead-lettered at once, the others handled.
    setup
        .run("strict", setup.handler(Strict), |c| {
            c.dead_lettered() >= 1 && c.handled() >= 2
        })
        .await;
    let dead = setup.dead_letters("strict").await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "order-gift-wrapped");
    assert!(
        dead[0].1.contains("unknown event type order-gift-wrapped"),
        "{}",
        dead[0].1
    );
    assert_eq!(setup.ticks("strict-o-1").await, [1, 3]);
    let strict = setup.state("strict", "o-1").await.expect("state");
    assert_eq!((strict.version, strict.state), (2, serde_json::json!(2)));
    for group in ["lenient", "strict"] {
        let stats = eventsource_redis::stats(&mut setup.conn.clone(), &setup.stream_key())
            .await
            .expect("stats");
        let group = stats
            .groups
            .iter()
            .find(|g| g.name == group)
            .expect("group");
        assert_eq!((group.pending, group.lag), (0, Some(0)), "{group:?}");
    }
}
