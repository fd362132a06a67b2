//! Typed handlers: projections, sagas and consumer handlers written against a
//! [`DomainEvent`] enum instead of JSON payloads.
//!
//! Each declares the events it takes as an [`EventSet`]: one enum, or several with [`Either`].
//! Implement [`TypedHandler`], [`TypedProjection`] or [`TypedSaga`] and wrap the value in
//! [`Typed`], which implements the untyped trait a runner takes ([`EventHandler`],
//! [`Projection`], [`Saga`]). For every stored event, `Typed`:
//!
//! - skips it without decoding when its type is not one of the set's stored names
//!   ([`EventSet::knows`]): one log carries every aggregate's events;
//! - otherwise decodes it (upcasting older schema versions) into an [`Envelope<E>`], which
//!   keeps every envelope field (stream, version, position, tenant, correlation and causation
//!   ids, actor, recorded-at), and calls the typed method;
//! - reports a payload that does not decode as [`TypedError::Decode`], naming the event. It is
//!   permanent: a consumer-group runner dead-letters it at once, a projection runner halts
//!   before it with its checkpoint unmoved.
//!
//! A handler that wants one method per variant, as aggregates have, implements the enum's
//! generated `<Enum>Handler` trait and calls [`Dispatch::dispatch`](crate::Dispatch::dispatch)
//! on `event.payload`; otherwise it `match`es on `event.payload`.
//!
//! ```
//! use eventsource_core::{
//!     DomainEvent, Envelope, EventStore, ExpectedVersion, InMemoryCheckpointStore,
//!     InMemoryEventStore, NewEvent, ProjectionRunner, StreamId, TenantId, Typed,
//!     TypedProjection,
//! };
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
//! enum AccountEvent {
//!     Opened { owner: String },
//!     Deposited { cents: u64 },
//! }
//!
//! /// Total deposits per owner's account.
//! #[derive(Debug, Default)]
//! struct Deposits {
//!     total: u64,
//! }
//!
//! impl TypedProjection for Deposits {
//!     type Event = AccountEvent;
//!     type Error = std::convert::Infallible;
//!
//!     fn name(&self) -> &str {
//!         "deposits"
//!     }
//!
//!     async fn apply(&mut self, event: &Envelope<AccountEvent>) -> Result<(), Self::Error> {
//!         if let AccountEvent::Deposited { cents } = event.payload {
//!             self.total += cents;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = InMemoryEventStore::new();
//! let stream = StreamId::new(TenantId::default(), "account", "a-1");
//! let events = [
//!     NewEvent::from_event(&AccountEvent::Opened { owner: "ada".into() })?,
//!     NewEvent::from_event(&AccountEvent::Deposited { cents: 250 })?,
//!     // Another enum's event in the same log: skipped, never decoded.
//!     NewEvent::new("order-placed", 1, serde_json::json!({ "sku": "x" })),
//! ];
//! store.append(&stream, ExpectedVersion::Any, events.into()).await?;
//!
//! let checkpoints = InMemoryCheckpointStore::new();
//! let mut runner = ProjectionRunner::new(store, checkpoints, Typed::new(Deposits::default()));
//! runner.catch_up().await?;
//! assert_eq!(runner.projection().get_ref().total, 250);
//! # Ok(())
//! # }
//! ```

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::envelope::{Envelope, EventDecodeError, RecordedEvent};
use crate::event::DomainEvent;
use crate::handler::EventHandler;
use crate::projection::Projection;
use crate::saga::{Compensations, DeadlineReached, Rejection, Saga};

/// The events a typed handler takes: one [`DomainEvent`] enum (every enum is an `EventSet`),
/// or several combined with [`Either`].
///
/// ```
/// # use eventsource_core::{DomainEvent, Either, Envelope, TypedHandler};
/// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, DomainEvent)]
/// # enum OrderEvent { #[event(name = "order-placed")] Placed { sku: String } }
/// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, DomainEvent)]
/// # enum StockEvent { #[event(name = "stock-reserved")] Reserved { sku: String } }
/// struct Audit;
///
/// impl TypedHandler for Audit {
///     // Orders and stock, from two aggregates' enums.
///     type Event = Either<OrderEvent, StockEvent>;
///     type Error = std::convert::Infallible;
///
///     async fn handle(&self, event: &Envelope<Self::Event>) -> Result<(), Self::Error> {
///         match &event.payload {
///             Either::Left(OrderEvent::Placed { sku }) => println!("placed {sku}"),
///             Either::Right(StockEvent::Reserved { sku }) => println!("reserved {sku}"),
///         }
///         Ok(())
///     }
/// }
/// # let _ = eventsource_core::Typed::new(Audit);
/// # let _ = (OrderEvent::Placed { sku: "a".into() }, StockEvent::Reserved { sku: "a".into() });
/// ```
pub trait EventSet: Sized + Send + Sync + 'static {
    /// Whether events stored under `event_type` belong to the set; others are skipped without
    /// decoding.
    fn knows(event_type: &str) -> bool;

    /// Decodes a stored event of the set, upcasting older schema versions.
    ///
    /// # Errors
    ///
    /// As [`RecordedEvent::decode`].
    fn decode(event: &RecordedEvent) -> Result<Envelope<Self>, EventDecodeError>;
}

impl<E: DomainEvent> EventSet for E {
    fn knows(event_type: &str) -> bool {
        <E as DomainEvent>::knows(event_type)
    }

    fn decode(event: &RecordedEvent) -> Result<Envelope<Self>, EventDecodeError> {
        event.decode::<E>()
    }
}

/// The events of two [`EventSet`]s: `Either<OrderEvent, StockEvent>`, or nested for more
/// (`Either<A, Either<B, C>>`). An event whose stored type both sides know goes `Left`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Either<L, R> {
    /// An event of the first set.
    Left(L),
    /// An event of the second set.
    Right(R),
}

impl<L: EventSet, R: EventSet> EventSet for Either<L, R> {
    fn knows(event_type: &str) -> bool {
        L::knows(event_type) || R::knows(event_type)
    }

    fn decode(event: &RecordedEvent) -> Result<Envelope<Self>, EventDecodeError> {
        if L::knows(&event.event_type) {
            L::decode(event).map(|decoded| decoded.map(Either::Left))
        } else {
            R::decode(event).map(|decoded| decoded.map(Either::Right))
        }
    }
}

/// Wraps a typed handler, projection or saga so that runners taking the untyped trait accept
/// it; see the [module documentation](self).
#[derive(Debug, Clone, Default)]
pub struct Typed<T>(T);

impl<T> Typed<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self(inner)
    }

    /// The wrapped handler.
    pub fn get_ref(&self) -> &T {
        &self.0
    }

    /// The wrapped handler, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.0
    }

    /// Unwraps the handler.
    pub fn into_inner(self) -> T {
        self.0
    }
}

/// Why a typed handler failed on an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TypedError<E: std::error::Error + 'static> {
    /// The event has one of the enum's stored type names, but its payload or schema version
    /// does not decode. Permanent: it fails the same way on every delivery.
    #[error("a stored event does not decode")]
    Decode(#[source] EventDecodeError),
    /// The typed handler's own error.
    #[error("the typed handler failed")]
    Handler(#[source] E),
}

impl<E: std::error::Error + 'static> TypedError<E> {
    /// Whether this is a decoding failure, which recurs on every delivery.
    #[must_use]
    pub fn is_decode(&self) -> bool {
        matches!(self, Self::Decode(_))
    }
}

/// An [`EventHandler`] over the events of one [`DomainEvent`] enum; wrap it in [`Typed`] to
/// give it to a runner (a consumer group, say).
///
/// Delivery is at least once, as for [`EventHandler`]: deduplicate on `event.position` or
/// `event.event_id` in the same transaction as the effect.
pub trait TypedHandler: Send + Sync {
    /// The events handled (one enum, or several with [`Either`]); events of other types are
    /// skipped without decoding.
    type Event: EventSet;
    /// Why handling failed; the runner retries, then dead-letters.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Handles one decoded event with its envelope.
    fn handle(
        &self,
        event: &Envelope<Self::Event>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Whether `error` recurs on every delivery (see [`EventHandler::is_permanent`]). Decoding
    /// failures are always permanent; the default treats the handler's errors as transient.
    fn is_permanent(&self, error: &Self::Error) -> bool {
        let _ = error;
        false
    }
}

impl<H: TypedHandler> EventHandler for Typed<H> {
    type Error = TypedError<H::Error>;

    async fn handle(&self, event: &RecordedEvent) -> Result<(), Self::Error> {
        if !<H::Event as EventSet>::knows(&event.event_type) {
            return Ok(());
        }
        let decoded = H::Event::decode(event).map_err(TypedError::Decode)?;
        self.0.handle(&decoded).await.map_err(TypedError::Handler)
    }

    fn is_permanent(&self, error: &Self::Error) -> bool {
        match error {
            TypedError::Decode(_) => true,
            TypedError::Handler(error) => self.0.is_permanent(error),
        }
    }
}

/// A [`Projection`] over the events of one [`DomainEvent`] enum; wrap it in [`Typed`] to give
/// it to a [`ProjectionRunner`](crate::ProjectionRunner).
///
/// An event whose payload does not decode stops the runner with
/// [`ProjectionError::Apply`](crate::ProjectionError::Apply) at its position, the source being
/// [`TypedError::Decode`] naming the event; the checkpoint stays before it, so an upcaster can be
/// deployed and the projection resumed.
pub trait TypedProjection: Send {
    /// The events folded (one enum, or several with [`Either`]); events of other types are
    /// skipped without decoding.
    type Event: EventSet;
    /// Why applying an event failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The checkpoint name; stable across restarts.
    fn name(&self) -> &str;

    /// Folds one decoded event, with its envelope, into the read model.
    fn apply(
        &mut self,
        event: &Envelope<Self::Event>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

impl<P: TypedProjection> Projection for Typed<P> {
    type Error = TypedError<P::Error>;

    fn name(&self) -> &str {
        self.0.name()
    }

    async fn apply(&mut self, event: &RecordedEvent) -> Result<(), Self::Error> {
        if !<P::Event as EventSet>::knows(&event.event_type) {
            return Ok(());
        }
        let decoded = P::Event::decode(event).map_err(TypedError::Decode)?;
        self.0.apply(&decoded).await.map_err(TypedError::Handler)
    }
}

/// A [`Saga`] over the events of one [`DomainEvent`] enum; wrap it in [`Typed`] and give it to
/// a [`SagaHandler`](crate::SagaHandler).
///
/// Deadlines work as for [`Saga`]: the deadline event reaches
/// [`on_deadline`](Self::on_deadline) on its instance. An event whose payload does not decode
/// fails with [`TypedError::Decode`], which the `SagaHandler` reports as permanent (a consumer
/// group dead-letters it at once); no state is saved for it.
pub trait TypedSaga: Send + Sync + 'static {
    /// Stable name; part of state keys and derived event ids.
    const NAME: &'static str;
    /// The events reacted to (one enum, or several with [`Either`]); events of other types are
    /// skipped without decoding.
    type Event: EventSet;
    /// Per-instance state.
    type State: Default + Serialize + DeserializeOwned + Send + Sync;
    /// What the saga asks others to do (see [`Saga::Command`]).
    type Command: Clone + Send + Sync;
    /// Why reacting failed (the event is retried, then dead-lettered, by the runner).
    type Error: std::error::Error + Send + Sync + 'static;
    /// Schema version of the stored state (see [`Saga::STATE_VERSION`]).
    const STATE_VERSION: u32 = 1;

    /// The instance an event belongs to, or `None` if the saga ignores it.
    fn correlate(&self, event: &Envelope<Self::Event>) -> Option<String>;

    /// Updates `state` for `event` and returns the commands to issue.
    ///
    /// # Errors
    ///
    /// The saga's error; state changes are discarded and the event will be delivered again.
    fn react(
        &self,
        state: &mut Self::State,
        event: &Envelope<Self::Event>,
    ) -> Result<Vec<Self::Command>, Self::Error>;

    /// Reacts to a deadline set by [`deadline`](Self::deadline) falling due; by default issues
    /// nothing.
    ///
    /// # Errors
    ///
    /// As [`react`](Self::react).
    fn on_deadline(
        &self,
        state: &mut Self::State,
        deadline: &DeadlineReached,
    ) -> Result<Vec<Self::Command>, Self::Error> {
        let _ = (state, deadline);
        Ok(Vec::new())
    }

    /// When the instance wants a deadline event if nothing else happens first (see
    /// [`Saga::deadline`]); `None` by default.
    fn deadline(&self, state: &Self::State) -> Option<DateTime<Utc>> {
        let _ = state;
        None
    }

    /// The command that undoes `command` (see [`Saga::compensation`]); `None` by default.
    fn compensation(&self, command: &Self::Command) -> Option<Self::Command> {
        let _ = command;
        None
    }

    /// Where `state` records compensations (see [`Saga::compensations`]); `None` by default.
    fn compensations<'s>(
        &self,
        state: &'s mut Self::State,
    ) -> Option<&'s mut Compensations<Self::Command>> {
        let _ = state;
        None
    }

    /// Reacts to a rejected command (see [`Saga::on_rejected`]); by default compensates when
    /// the saga keeps [`compensations`](Self::compensations), else leaves the rejection a
    /// failure.
    ///
    /// # Errors
    ///
    /// As [`react`](Self::react).
    fn on_rejected(
        &self,
        state: &mut Self::State,
        rejection: &Rejection<'_>,
    ) -> Result<Option<Vec<Self::Command>>, Self::Error> {
        let _ = rejection;
        Ok(self.compensations(state).map(|record| {
            record.compensate();
            Vec::new()
        }))
    }
}

impl<G: TypedSaga> Saga for Typed<G> {
    const NAME: &'static str = G::NAME;
    const STATE_VERSION: u32 = G::STATE_VERSION;
    type State = G::State;
    type Command = G::Command;
    type Error = TypedError<G::Error>;

    fn correlate(&self, event: &RecordedEvent) -> Option<String> {
        if !<G::Event as EventSet>::knows(&event.event_type) {
            return None;
        }
        match G::Event::decode(event) {
            Ok(decoded) => self.0.correlate(&decoded),
            // `correlate` cannot fail; route the event to an instance of its own so that `react`
            // reports the decoding failure (permanent, nothing saved) instead of dropping it.
            Err(_) => Some(format!("undecodable/{}", event.event_id)),
        }
    }

    fn react(
        &self,
        state: &mut G::State,
        event: &RecordedEvent,
    ) -> Result<Vec<G::Command>, Self::Error> {
        if let Some(deadline) = DeadlineReached::from_event(event) {
            return self
                .0
                .on_deadline(state, &deadline)
                .map_err(TypedError::Handler);
        }
        let decoded = G::Event::decode(event).map_err(TypedError::Decode)?;
        self.0.react(state, &decoded).map_err(TypedError::Handler)
    }

    fn deadline(&self, state: &G::State) -> Option<DateTime<Utc>> {
        self.0.deadline(state)
    }

    fn compensation(&self, command: &G::Command) -> Option<G::Command> {
        self.0.compensation(command)
    }

    fn compensations<'s>(
        &self,
        state: &'s mut G::State,
    ) -> Option<&'s mut Compensations<G::Command>> {
        self.0.compensations(state)
    }

    fn on_rejected(
        &self,
        state: &mut G::State,
        rejection: &Rejection<'_>,
    ) -> Result<Option<Vec<G::Command>>, Self::Error> {
        self.0
            .on_rejected(state, rejection)
            .map_err(TypedError::Handler)
    }

    fn is_permanent(&self, error: &Self::Error) -> bool {
        error.is_decode()
    }
}
