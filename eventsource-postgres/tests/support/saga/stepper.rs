//! The saga step kit: a bin aggregate, the `Stepper` saga that does what each `step` event's
//! payload says, deciders that count, fail, wait or conflict on purpose, and a `World` holding
//! a test's tenant, stores and saga instance.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Utc};
use eventsource_core::{
    Aggregate, CommandContext, CommandDecider, CommandError, Decided, DomainEvent, EventId,
    EventStore, Handle, HandledEvent, InMemorySagaStore, LogPosition, Metadata, RecordedEvent,
    Rejection, Repository, Saga, SagaKey, SagaState, SagaStore, StoreError, StreamId, TenantId,
    Version, VersionRange,
};
use eventsource_postgres::{PgEventStore, PgSagaHandler, PgSagaStore};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::Barrier;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
pub enum BinEvent {
    #[event(name = "bin-filled")]
    Filled { label: String, qty: u32 },
}

/// A bin the saga fills; it refuses a reservation of nothing.
#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "bin", event = BinEvent)]
pub struct Bin {
    pub filled: u32,
}

impl BinEventHandler for Bin {
    fn when_filled(&mut self, e: bin_event::Filled) {
        self.filled += e.qty;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the bin refuses a reservation of nothing")]
pub struct Refused;

impl Handle for Bin {
    type Command = (String, u32);
    type Error = Refused;

    fn handle(&self, (label, qty): (String, u32)) -> Result<Vec<BinEvent>, Refused> {
        if qty == 0 {
            return Err(Refused);
        }
        Ok(vec![BinEvent::Filled { label, qty }])
    }
}

/// `(bin, (label, quantity))`.
pub type Command = (String, (String, u32));

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Steps {
    pub labels: Vec<String>,
    pub deadline: Option<DateTime<Utc>>,
    pub rejected: Vec<String>,
}

/// Does what each `step` event's payload says: remembers its `label`, fills each bin of
/// `reserve` (`"bin"` with one unit, `"bin=0"` with none, which the bin refuses) and sets the
/// `deadline` when the payload has one. Hears a refusal by noting it and filling `notice`,
/// unless the event is `strict`. A deadline reached is remembered as `deadline` and clears it.
#[derive(Clone, Copy)]
pub struct Stepper;

impl Saga for Stepper {
    const NAME: &'static str = "stepper";
    type State = Steps;
    type Command = Command;
    type Error = std::convert::Infallible;

    fn correlate(&self, event: &RecordedEvent) -> Option<String> {
        (event.event_type == "step").then(|| event.payload["saga"].as_str().map(str::to_owned))?
    }

    fn react(&self, steps: &mut Steps, event: &RecordedEvent) -> Result<Vec<Command>, Self::Error> {
        if event.event_type == eventsource_core::DEADLINE_REACHED {
            steps.labels.push("deadline".to_owned());
            steps.deadline = None;
            return Ok(Vec::new());
        }
        let label = event.payload["label"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        steps.labels.push(label.clone());
        if let Some(deadline) = event.payload.get("deadline") {
            steps.deadline = serde_json::from_value(deadline.clone()).expect("a deadline");
        }
        let reserve = event.payload["reserve"].as_array().cloned();
        Ok(reserve
            .unwrap_or_default()
            .iter()
            .filter_map(serde_json::Value::as_str)
            .map(|bin| match bin.split_once('=') {
                Some((bin, qty)) => (bin.to_owned(), (label.clone(), qty.parse().expect("qty"))),
                None => (bin.to_owned(), (label.clone(), 1)),
            })
            .collect())
    }

    fn deadline(&self, steps: &Steps) -> Option<DateTime<Utc>> {
        steps.deadline
    }

    fn on_rejected(
        &self,
        steps: &mut Steps,
        rejection: &Rejection<'_>,
    ) -> Result<Option<Vec<Command>>, Self::Error> {
        if rejection.event.payload["strict"] == true {
            return Ok(None);
        }
        steps
            .rejected
            .push(format!("{}: {}", rejection.index, rejection.error));
        let label = format!("rejected-{}", rejection.index);
        Ok(Some(vec![("notice".to_owned(), (label, 1))]))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Command(CommandError<Refused>),
    #[error("injected failure")]
    Injected,
}

/// Decides through a repository of bins and counts its calls. It can fail one call (`fail_at`,
/// counted from 0), hold the first two calls until both are in (`barrier`), and decide a bin
/// named `other:<id>` in another tenant (`others`).
#[derive(Clone)]
pub struct Probe {
    pub bins: Repository<Bin, PgEventStore>,
    pub others: Option<Repository<Bin, PgEventStore>>,
    pub calls: Arc<AtomicUsize>,
    pub fail_at: Option<usize>,
    pub barrier: Option<Arc<Barrier>>,
}

impl Probe {
    pub fn new(events: &PgEventStore, tenant: &TenantId) -> Self {
        Self {
            bins: Repository::<Bin, _>::new(events.clone()).with_tenant(tenant.clone()),
            others: None,
            calls: Arc::new(AtomicUsize::new(0)),
            fail_at: None,
            barrier: None,
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl CommandDecider<Command> for Probe {
    type Error = ProbeError;

    async fn decide(
        &self,
        (bin, command): Command,
        ctx: &CommandContext,
    ) -> Result<Option<Decided>, ProbeError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail_at == Some(call) {
            return Err(ProbeError::Injected);
        }
        if let Some(barrier) = self.barrier.as_ref().filter(|_| call < 2) {
            barrier.wait().await;
        }
        let decided = match bin.strip_prefix("other:") {
            Some(id) => {
                let others = self.others.as_ref().expect("another tenant");
                others.decide((id.to_owned(), command), ctx).await
            }
            None => self.bins.decide((bin, command), ctx).await,
        };
        decided.map_err(ProbeError::Command)
    }

    fn rejection<'e>(
        &self,
        error: &'e ProbeError,
    ) -> Option<&'e (dyn std::error::Error + Send + Sync + 'static)> {
        match error {
            ProbeError::Command(e) => e.rejection().map(|e| e as _),
            ProbeError::Injected => None,
        }
    }
}

/// A `step` event of `instance` at log position `position`, in a stream of its own (`label`
/// names it), filling the bins of `reserve`.
pub fn step(
    tenant: &TenantId,
    instance: &str,
    label: &str,
    position: u64,
    reserve: &[&str],
) -> RecordedEvent {
    RecordedEvent {
        event_id: EventId::new(),
        stream: StreamId::new(tenant.clone(), "order", label),
        version: Version::new(1),
        position: LogPosition::new(position, position),
        event_type: "step".into(),
        schema_version: 1,
        recorded_at: Utc::now(),
        metadata: Metadata::default(),
        payload: serde_json::json!({ "saga": instance, "label": label, "reserve": reserve }),
    }
}

/// A test's tenant, stores and saga instance.
pub struct World {
    pub pool: PgPool,
    pub tenant: TenantId,
    pub events: PgEventStore,
    pub sagas: PgSagaStore,
    pub key: SagaKey,
}

impl World {
    pub async fn new(prefix: &str) -> Option<Self> {
        let pool = crate::support::pool().await?;
        Some(Self::on(pool, crate::support::tenant(prefix)))
    }

    pub fn on(pool: PgPool, tenant: TenantId) -> Self {
        Self {
            events: PgEventStore::new(pool.clone()),
            sagas: PgSagaStore::new(pool.clone()),
            key: SagaKey::new(tenant.clone(), Stepper::NAME, "i-1"),
            pool,
            tenant,
        }
    }

    pub fn probe(&self) -> Probe {
        Probe::new(&self.events, &self.tenant)
    }

    pub fn handler(&self, probe: &Probe) -> PgSagaHandler<Stepper, Probe> {
        PgSagaHandler::new(self.pool.clone(), Stepper, probe.clone())
    }

    pub fn step(&self, label: &str, position: u64, reserve: &[&str]) -> RecordedEvent {
        step(&self.tenant, self.key.instance(), label, position, reserve)
    }

    /// The labels of the events in bin `id`, in stream order.
    pub async fn bin(&self, id: &str) -> Vec<String> {
        bin_labels(&self.events, &self.tenant, id).await
    }

    /// The instance's version and decoded state.
    pub async fn state(&self) -> Option<(u64, Steps)> {
        let stored = self.sagas.load(&self.key).await.expect("load")?;
        Some((
            stored.version,
            serde_json::from_value(stored.state).expect("steps"),
        ))
    }
}

pub async fn bin_labels(events: &PgEventStore, tenant: &TenantId, id: &str) -> Vec<String> {
    events
        .read_stream(
            &StreamId::new(tenant.clone(), "bin", id),
            VersionRange::all(),
        )
        .await
        .expect("read")
        .iter()
        .map(|e| e.payload["label"].as_str().expect("label").to_owned())
        .collect()
}

pub fn labels(labels: &[&str]) -> Vec<String> {
    labels.iter().map(|&l| l.to_owned()).collect()
}

/// Waits until a backend named `name` waits for a lock.
pub async fn wait_for_lock(admin: &PgPool, name: &str) {
    for _ in 0..500 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = $1 AND wait_event_type = 'Lock'",
        )
        .bind(name)
        .fetch_one(admin)
        .await
        .expect("activity");
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no backend named {name} waited for a lock within 5 s");
}

/// Fails every save, as a process that dies after dispatching its commands and before saving.
#[derive(Clone, Default)]
pub struct SaveFails(pub InMemorySagaStore);

impl SagaStore for SaveFails {
    async fn load(&self, key: &SagaKey) -> Result<Option<SagaState>, StoreError> {
        self.0.load(key).await
    }

    async fn load_for(
        &self,
        key: &SagaKey,
        event: &HandledEvent,
    ) -> Result<eventsource_core::Loaded, StoreError> {
        self.0.load_for(key, event).await
    }

    async fn save(
        &self,
        _: &SagaKey,
        _: u64,
        _: SagaState,
        _: HandledEvent,
    ) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("the process died".into()))
    }

    async fn due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<eventsource_core::DueDeadline>, StoreError> {
        self.0.due(now, limit).await
    }

    async fn mark_fired(
        &self,
        deadline: &eventsource_core::DueDeadline,
    ) -> Result<bool, StoreError> {
        self.0.mark_fired(deadline).await
    }

    async fn prune_handled(
        &self,
        tenant: &TenantId,
        saga: &str,
        floor: LogPosition,
    ) -> Result<u64, StoreError> {
        self.0.prune_handled(tenant, saga, floor).await
    }
}

/// Decides every command at a version its bin never reaches: each append conflicts.
#[derive(Clone)]
pub struct Stale {
    pub tenant: TenantId,
    pub calls: Arc<AtomicUsize>,
}

impl CommandDecider<Command> for Stale {
    type Error = std::convert::Infallible;

    async fn decide(
        &self,
        (bin, (label, _)): Command,
        _: &CommandContext,
    ) -> Result<Option<Decided>, Self::Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let event = eventsource_core::NewEvent::new(
            "bin-filled",
            1,
            serde_json::json!({ "label": label, "qty": 1 }),
        );
        Ok(Some(Decided::new(
            StreamId::new(self.tenant.clone(), "bin", bin),
            eventsource_core::ExpectedVersion::Exact(Version::new(7)),
            vec![event],
        )))
    }
}
