//! Compensation through the one-transaction `PgSagaHandler` (issue 15, item 4): a rejected
//! step undoes the completed ones, last first, each once, although the triggering event is
//! delivered many times at once and the handler's transaction is rolled back and rerun after
//! a compensation was appended in it; a deadline passing compensates too.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use eventsource_core::{
    Aggregate, CommandContext, CommandDecider, CommandError, Compensations, DEADLINE_REACHED,
    Decided, DomainEvent, EventHandler, EventId, ExpectedVersion, LogFilter, LogPosition, Metadata,
    RecordedEvent, Rejection, Repository, Saga, SagaKey, SagaStore, StreamId, TenantId, Version,
};
use eventsource_postgres::{PgDeadlineRunner, PgEventStore, PgSagaHandler, PgSagaStore};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum ResourceEvent {
    Taken { order: String },
    Released { order: String },
}

/// A resource an order takes; one whose id starts with `broken` refuses to be taken.
#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "resource", event = ResourceEvent)]
struct Resource;

impl ResourceEventHandler for Resource {
    fn when_taken(&mut self, _: resource_event::Taken) {}
    fn when_released(&mut self, _: resource_event::Released) {}
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum ResourceCommand {
    Take { order: String, broken: bool },
    Release { order: String },
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("resource unavailable")]
struct Unavailable;

impl eventsource_core::Handle for Resource {
    type Command = ResourceCommand;
    type Error = Unavailable;

    fn handle(&self, c: ResourceCommand) -> Result<Vec<ResourceEvent>, Unavailable> {
        match c {
            ResourceCommand::Take { broken: true, .. } => Err(Unavailable),
            ResourceCommand::Take { order, .. } => Ok(vec![ResourceEvent::Taken { order }]),
            ResourceCommand::Release { order } => Ok(vec![ResourceEvent::Released { order }]),
        }
    }
}

type Command = (String, ResourceCommand);

#[derive(Debug, Default, Serialize, Deserialize)]
struct BookingState {
    failed: Option<String>,
    due: Option<chrono::DateTime<chrono::Utc>>,
    compensations: Compensations<Command>,
}

/// Takes one resource per `step` event; a rejection or a deadline undoes the taken ones.
#[derive(Clone, Copy)]
struct Booking;

impl Saga for Booking {
    const NAME: &'static str = "booking";
    type State = BookingState;
    type Command = Command;
    type Error = std::convert::Infallible;

    fn correlate(&self, event: &RecordedEvent) -> Option<String> {
        event.payload["booking"].as_str().map(str::to_owned)
    }

    fn react(
        &self,
        state: &mut BookingState,
        event: &RecordedEvent,
    ) -> Result<Vec<Command>, Self::Error> {
        if event.event_type == DEADLINE_REACHED {
            state.failed = Some("timed out".into());
            state.due = None;
            state.compensations.compensate();
            return Ok(vec![]);
        }
        if let Some(minutes) = event.payload["timeout_minutes"].as_i64() {
            state.due = Some(event.recorded_at + chrono::Duration::minutes(minutes));
        }
        let resource = event.payload["resource"].as_str().expect("resource");
        let order = event.payload["booking"]
            .as_str()
            .expect("booking")
            .to_owned();
        let broken = resource.starts_with("broken");
        Ok(vec![(
            resource.to_owned(),
            ResourceCommand::Take { order, broken },
        )])
    }

    fn deadline(&self, state: &BookingState) -> Option<chrono::DateTime<chrono::Utc>> {
        state.due
    }

    fn compensation(&self, (id, command): &Command) -> Option<Command> {
        match command {
            ResourceCommand::Take { order, .. } => Some((
                id.clone(),
                ResourceCommand::Release {
                    order: order.clone(),
                },
            )),
            ResourceCommand::Release { .. } => None,
        }
    }

    fn compensations<'s>(
        &self,
        state: &'s mut BookingState,
    ) -> Option<&'s mut Compensations<Command>> {
        Some(&mut state.compensations)
    }

    fn on_rejected(
        &self,
        state: &mut BookingState,
        rejection: &Rejection<'_>,
    ) -> Result<Option<Vec<Command>>, Self::Error> {
        assert!(rejection.error.is::<Unavailable>(), "{}", rejection.error);
        state.failed = Some("rejected".into());
        state.due = None;
        state.compensations.compensate();
        Ok(Some(vec![]))
    }
}

/// Decides through a repository; armed, it decides one `Release` of `room` at a stale
/// version, once: that append conflicts after the `car` compensation was appended in the same
/// transaction, and the handler rolls back and reruns the whole transaction.
#[derive(Clone)]
struct ConflictOnce {
    resources: Repository<Resource, PgEventStore>,
    armed: Arc<AtomicBool>,
}

impl CommandDecider<Command> for ConflictOnce {
    type Error = CommandError<Unavailable>;

    async fn decide(
        &self,
        command: Command,
        ctx: &CommandContext,
    ) -> Result<Option<Decided>, Self::Error> {
        let release_room =
            command.0 == "room" && matches!(command.1, ResourceCommand::Release { .. });
        let mut decided = self.resources.decide(command, ctx).await?;
        if release_room
            && self.armed.swap(false, Ordering::SeqCst)
            && let Some(decided) = &mut decided
        {
            decided.expected = ExpectedVersion::Exact(Version::new(99));
        }
        Ok(decided)
    }

    fn rejection<'e>(
        &self,
        error: &'e Self::Error,
    ) -> Option<&'e (dyn std::error::Error + Send + Sync + 'static)> {
        error.rejection().map(|e| e as _)
    }
}

fn step(tenant: &TenantId, booking: &str, resource: &str, position: u64) -> RecordedEvent {
    RecordedEvent {
        event_id: EventId::new(),
        stream: StreamId::new(tenant.clone(), "booking-request", booking),
        version: Version::new(position),
        position: LogPosition::new(position, position),
        event_type: "step".into(),
        schema_version: 1,
        recorded_at: chrono::Utc::now(),
        metadata: Metadata::default(),
        payload: serde_json::json!({ "booking": booking, "resource": resource }),
    }
}

/// The tenant's log once it holds at least `len` events. The log shows a committed
/// transaction only once every older one ended (other tests' transactions count): wait.
async fn tenant_log(events: &PgEventStore, tenant: &TenantId, len: usize) -> Vec<RecordedEvent> {
    for _ in 0..250 {
        let log = eventsource_core::read_log(
            events,
            LogPosition::START,
            100,
            LogFilter::tenant(tenant.clone()),
        );
        let log: Vec<RecordedEvent> = futures::TryStreamExt::try_collect(log).await.expect("log");
        if log.len() >= len {
            return log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the log of {tenant} never reached {len} events");
}

/// The tenant's resource events in log order, as `(resource, event type)`, once it has `len`
/// events.
async fn resource_log(
    events: &PgEventStore,
    tenant: &TenantId,
    len: usize,
) -> Vec<(String, String)> {
    tenant_log(events, tenant, len)
        .await
        .into_iter()
        .filter(|e| e.stream.aggregate_type() == "resource")
        .map(|e| (e.stream.aggregate_id().to_owned(), e.event_type))
        .collect()
}

fn pair(resource: &str, event_type: &str) -> (String, String) {
    (resource.to_owned(), event_type.to_owned())
}

async fn stored_state(pool: &sqlx::PgPool, tenant: &TenantId, instance: &str) -> BookingState {
    let key = SagaKey::new(tenant.clone(), "booking", instance);
    let stored = PgSagaStore::new(pool.clone())
        .load(&key)
        .await
        .expect("load")
        .expect("state");
    serde_json::from_value(stored.state).expect("decode")
}

/// Steps 1 and 2 take `room` and `car`; step 3's `broken-flight` is rejected. Its event is
/// delivered by four tasks at once, and the first transaction to compensate conflicts on
/// `room` after appending `car`'s release: `car` then `room` are released once each, in
/// that order, and the state records both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_third_step_compensates_once_through_retries_and_redelivery() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let tenant = support::tenant("saga-compensation");
    let events = PgEventStore::new(pool.clone());
    let decider = ConflictOnce {
        resources: Repository::<Resource, _>::new(events.clone()).with_tenant(tenant.clone()),
        armed: Arc::new(AtomicBool::new(false)),
    };
    let handler = PgSagaHandler::new(pool.clone(), Booking, decider.clone());
    let steps = [
        step(&tenant, "b-1", "room", 1),
        step(&tenant, "b-1", "car", 2),
        step(&tenant, "b-1", "broken-flight", 3),
    ];
    for event in &steps[..2] {
        handler.handle(event).await.expect("handled");
    }
    decider.armed.store(true, Ordering::SeqCst);
    let deliveries: Vec<_> = (0..4)
        .map(|_| {
            let (handler, event) = (handler.clone(), steps[2].clone());
            tokio::spawn(async move { handler.handle(&event).await })
        })
        .collect();
    for delivery in deliveries {
        delivery.await.expect("task").expect("delivered");
    }
    assert!(
        !decider.armed.load(Ordering::SeqCst),
        "the conflict happened"
    );
    for event in &steps {
        handler.handle(event).await.expect("redelivery is a no-op");
    }

    assert_eq!(
        resource_log(&events, &tenant, 4).await,
        [
            pair("room", "Taken"),
            pair("car", "Taken"),
            pair("car", "Released"),
            pair("room", "Released"),
        ]
    );
    let state = stored_state(&pool, &tenant, "b-1").await;
    assert_eq!(state.failed.as_deref(), Some("rejected"));
    assert!(state.compensations.pending().is_empty());
    let ran: Vec<&str> = state
        .compensations
        .ran()
        .iter()
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(ran, ["car", "room"]);
}

/// A deadline set by step 1 passes after step 2: `PgDeadlineRunner` fires it, the saga
/// compensates both steps once, and a redelivered deadline event does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_passing_compensates_once() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let tenant = support::tenant("saga-compensation-deadline");
    let events = PgEventStore::new(pool.clone());
    let resources = Repository::<Resource, _>::new(events.clone()).with_tenant(tenant.clone());
    let handler = PgSagaHandler::new(pool.clone(), Booking, resources);
    let mut first = step(&tenant, "b-2", "room", 1);
    first.payload["timeout_minutes"] = 10.into();
    for event in [first, step(&tenant, "b-2", "car", 2)] {
        handler.handle(&event).await.expect("handled");
    }
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let runner = PgDeadlineRunner::new(pool.clone()).for_tenant(tenant.clone());
    assert_eq!(runner.fire_due(later).await.expect("fire"), 1);

    let log = tenant_log(&events, &tenant, 3).await;
    let fired = log
        .iter()
        .find(|e| e.event_type == DEADLINE_REACHED)
        .expect("deadline event");
    handler.handle(fired).await.expect("deadline handled");
    handler.handle(fired).await.expect("redelivered");

    assert_eq!(
        resource_log(&events, &tenant, 5).await,
        [
            pair("room", "Taken"),
            pair("car", "Taken"),
            pair("car", "Released"),
            pair("room", "Released"),
        ]
    );
    let state = stored_state(&pool, &tenant, "b-2").await;
    assert_eq!(state.failed.as_deref(), Some("timed out"));
    assert_eq!(state.compensations.ran().len(), 2);
    assert_eq!(runner.fire_due(later).await.expect("fire"), 0);
}
