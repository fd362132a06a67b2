//! [`PgSagaHandler`]: a saga whose state and command events commit in one transaction.

use std::time::Duration;

use eventsource_core::saga::{Plan, plan, route};
use eventsource_core::{
    CommandDecider, Decided, EventHandler, HandledEvent, RecordedEvent, Saga, SagaError, SagaKey,
    StoreError,
};
use sqlx::{PgPool, Postgres, Transaction};

use super::store::PgSagaStore;
use crate::store::PgEventStore;
use crate::tenant::{begin_saga, set_tenant};

/// How many times a delivery runs its transaction before giving the error to the runner.
const ATTEMPTS: u32 = 16;

/// Runs a [`Saga`] as an [`EventHandler`] where its state ([`PgSagaStore`]) and the events its
/// commands append ([`PgEventStore`]) share one PostgreSQL database: **one transaction** per
/// event loads the instance (locking its row; a new instance has no row yet, so two first
/// deliveries run side by side and the one whose save finds the instance created runs again),
/// skips the event if the instance handled it, lets the saga react, appends each command's
/// events as [`PgEventStore::append_in_tx`] does, saves the new state and records the event,
/// and commits. The last command's append (in the
/// instance's tenant) and the save are one statement, the save only if the append wrote.
/// State and events commit together or not at all, so a crash anywhere leaves either both or
/// neither: the events of a step never wait for a redelivery to be matched by its state, and
/// a redelivered event takes effect once.
///
/// Commands are decided by a [`CommandDecider`] (a [`Repository`](eventsource_core::Repository)
/// decides `(aggregate id, command)`), which loads the aggregate outside the transaction; the
/// append then expects the version it loaded. The whole transaction is rolled back and run
/// again, up to 16 times with a short backoff, when the append conflicts (someone else
/// appended to the aggregate), is refused with [`StoreError::RetryTransaction`] (a younger
/// transaction appended to the stream first), a concurrent transaction stored the same event
/// ids, the state's version moved (a concurrent delivery saved first or created the instance)
/// or the database failed transiently ([`StoreError::Unavailable`]); then the error goes to
/// the runner, which redelivers. Command event ids are still derived from the saga instance and the event, as with
/// [`SagaHandler`](eventsource_core::SagaHandler).
///
/// A command the aggregate rejects (as [`CommandDecider::rejection`] tells) appends nothing and
/// is heard by the saga ([`Saga::on_rejected`]); the compensations it then issues
/// ([`Compensations`](eventsource_core::Compensations)) append in the same transaction and are
/// recorded in the state it commits, so each runs once, however often the event is redelivered
/// or the transaction rerun.
///
/// ```no_run
/// use eventsource_core::{EventHandler, Repository, Saga, RecordedEvent};
/// use eventsource_postgres::{PgEventStore, PgSagaHandler};
/// # #[derive(Debug, Default, eventsource_core::Aggregate)]
/// # #[aggregate(name = "stock", event = StockEvent)]
/// # struct Stock;
/// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, eventsource_core::DomainEvent)]
/// # enum StockEvent { Reserved { qty: u32 } }
/// # impl StockEventHandler for Stock { fn when_reserved(&mut self, _: stock_event::Reserved) {} }
/// # #[derive(Debug, thiserror::Error)] #[error("never")] struct Never;
/// # impl eventsource_core::Handle for Stock {
/// #     type Command = u32; type Error = Never;
/// #     fn handle(&self, qty: u32) -> Result<Vec<StockEvent>, Never> { Ok(vec![StockEvent::Reserved { qty }]) }
/// # }
///
/// /// Reserves stock for every placed order.
/// struct Fulfilment;
///
/// impl Saga for Fulfilment {
///     const NAME: &'static str = "fulfilment";
///     type State = u32;
///     type Command = (String, u32); // (stock id, quantity): what a `Repository<Stock>` decides
///     type Error = std::convert::Infallible;
///
///     fn correlate(&self, event: &RecordedEvent) -> Option<String> {
///         (event.event_type == "order-placed").then(|| event.stream.aggregate_id().to_owned())
///     }
///
///     fn react(&self, placed: &mut u32, _: &RecordedEvent) -> Result<Vec<(String, u32)>, Self::Error> {
///         *placed += 1;
///         Ok(vec![("sku-1".to_owned(), 1)])
///     }
/// }
///
/// # async fn run(pool: sqlx::PgPool, event: RecordedEvent) -> Result<(), Box<dyn std::error::Error>> {
/// let stock = Repository::<Stock, _>::new(PgEventStore::new(pool.clone()));
/// let saga = PgSagaHandler::new(pool, Fulfilment, stock);
/// saga.handle(&event).await?; // state and the reservation commit together
/// # Ok(()) }
/// # fn main() { let _ = (run, Stock, Never, StockEvent::Reserved { qty: 1 }); }
/// ```
#[derive(Debug, Clone)]
pub struct PgSagaHandler<G, D> {
    pool: PgPool,
    saga: G,
    decider: D,
}

/// Why one attempt failed: run the transaction again, or give up.
enum Attempt<E> {
    Retry(StoreError),
    Fail(E),
}

impl<G: Saga, D: CommandDecider<G::Command>> PgSagaHandler<G, D> {
    /// A handler keeping the saga's state in `pool`'s database ([`PgSagaStore`]'s tables) and
    /// appending the commands `decider` decides there too.
    pub fn new(pool: PgPool, saga: G, decider: D) -> Self {
        Self {
            pool,
            saga,
            decider,
        }
    }

    /// The saga.
    pub fn saga(&self) -> &G {
        &self.saga
    }

    /// The pool holding the saga's state.
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// One transaction: load, plan, append, save, commit.
    async fn attempt(
        &self,
        key: &SagaKey,
        handled: HandledEvent,
        event: &RecordedEvent,
    ) -> Result<(), Attempt<SagaError<G::Error, D::Error>>> {
        let store = |e: StoreError| {
            if e.is_retryable() {
                Attempt::Retry(e)
            } else {
                Attempt::Fail(SagaError::Store(e))
            }
        };
        let mut tx = begin_saga(&self.pool, Some(key.tenant()))
            .await
            .map_err(|e| store(crate::error::store_error(e)))?;
        let loaded = PgSagaStore::load_in_tx(&mut tx, key, &handled)
            .await
            .map_err(store)?;
        let Plan::React(mut reaction) =
            plan(&self.saga, key, loaded, event).map_err(Attempt::Fail)?
        else {
            return Ok(()); // dropping `tx` rolls it back: it wrote nothing
        };
        // The step's last append, when in the key's tenant, waits for the save and runs with
        // it as one statement (one round trip fewer). Every other append runs as soon as its
        // command is decided, before the next command is: the order of today's appends.
        let mut last: Option<Decided> = None;
        let mut next = reaction.next_command();
        while let Some((command, ctx)) = next {
            match self.decider.decide(command, &ctx).await {
                Ok(decided) => {
                    reaction.succeeded();
                    next = reaction.next_command();
                    match decided {
                        Some(decided)
                            if next.is_none() && decided.stream.tenant() == key.tenant() =>
                        {
                            last = Some(decided);
                        }
                        Some(decided) => append(&mut tx, key, decided).await.map_err(store)?,
                        None => {}
                    }
                }
                Err(e) => match self.decider.rejection(&e) {
                    Some(rejection) if reaction.rejected(rejection).map_err(Attempt::Fail)? => {
                        next = reaction.next_command();
                    }
                    _ => return Err(Attempt::Fail(SagaError::Dispatch(e))),
                },
            }
        }
        let expected = reaction.expected();
        let state = reaction.finish().map_err(Attempt::Fail)?;
        match last {
            Some(decided) => {
                PgSagaStore::append_and_save_in_tx(&mut tx, key, decided, expected, state, handled)
                    .await
            }
            None => PgSagaStore::save_in_tx(&mut tx, key, expected, state, handled).await,
        }
        .map_err(store)?;
        tx.commit()
            .await
            .map_err(|e| store(crate::error::store_error(e)))
    }
}

/// Appends a decided command's events in the saga's transaction, under the stream's tenant.
async fn append(
    tx: &mut Transaction<'static, Postgres>,
    key: &SagaKey,
    decided: Decided,
) -> Result<(), StoreError> {
    let other_tenant = decided.stream.tenant() != key.tenant();
    if other_tenant {
        set_tenant(tx, decided.stream.tenant())
            .await
            .map_err(crate::error::store_error)?;
    }
    PgEventStore::append_in_tx(tx, &decided.stream, decided.expected, decided.events).await?;
    if other_tenant {
        set_tenant(tx, key.tenant())
            .await
            .map_err(crate::error::store_error)?;
    }
    Ok(())
}

impl<G, D> EventHandler for PgSagaHandler<G, D>
where
    G: Saga,
    D: CommandDecider<G::Command>,
{
    type Error = SagaError<G::Error, D::Error>;

    #[tracing::instrument(name = "eventsource.saga.handle", skip_all, fields(saga = G::NAME, event = %event.event_id))]
    async fn handle(&self, event: &RecordedEvent) -> Result<(), Self::Error> {
        let Some(key) = route(&self.saga, event) else {
            return Ok(());
        };
        let handled = HandledEvent::of(event);
        let mut attempt = 1;
        loop {
            match self.attempt(&key, handled, event).await {
                Ok(()) => return Ok(()),
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Retry(e)) if attempt < ATTEMPTS => {
                    tracing::debug!(%key, attempt, error = %e, "saga transaction retried");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Err(Attempt::Retry(e)) => return Err(SagaError::Store(e)),
            }
        }
    }

    fn is_permanent(&self, error: &Self::Error) -> bool {
        error.is_permanent_for(&self.saga)
    }
}

/// A few milliseconds, growing with the attempt, jittered so racing deliveries spread out.
fn backoff(attempt: u32) -> Duration {
    let base = 2u64.saturating_pow(attempt.min(6));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = u64::from(nanos) % (base + 1);
    Duration::from_millis(base + jitter)
}
