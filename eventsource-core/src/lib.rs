#![doc = include_str!("../README.md")]
#![doc(test(attr(deny(warnings))))]

pub mod aggregate;
pub mod bus;
pub mod checkpoint;
pub mod envelope;
pub mod event;
pub mod handler;
pub mod memory;
pub mod metrics;
pub mod projection;
pub mod repository;
pub mod retry;
pub mod saga;
pub mod shard;
pub mod snapshot;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod typed;
pub mod wait;

pub use aggregate::{Aggregate, AggregateRoot, Dispatch, Handle};
pub use bus::{BusEvent, EventBus, InMemoryBus};
pub use checkpoint::CheckpointStore;
pub use envelope::{
    Envelope, EventDecodeError, EventId, LogPosition, Metadata, NewEvent, RecordedEvent, StreamId,
    TenantId, Version,
};
pub use event::{DecodeError, DomainEvent, EventType, UpcastError};
pub use handler::EventHandler;
pub use memory::{InMemoryCheckpointStore, InMemoryEventStore, InMemorySnapshotStore};
pub use projection::{Projection, ProjectionError, ProjectionRunner, RebuildProgress};
pub use repository::{
    CommandContext, CommandError, DEFAULT_CACHE_CAPACITY, Executed, LoadError, Repository,
};
pub use retry::RetryPolicy;
pub use saga::{
    CommandDecider, CommandDispatcher, Compensations, DEADLINE_REACHED, DEADLINE_STREAM_TYPE,
    DeadlineReached, DeadlineRunner, Decided, DueDeadline, HandledEvent, InMemorySagaStore, Loaded,
    Plan, Reaction, Rejection, Saga, SagaError, SagaHandler, SagaKey, SagaState, SagaStore,
    StateError,
};
pub use shard::{Shard, shard_of};
pub use snapshot::{NoSnapshots, Snapshot, SnapshotPolicy, SnapshotStore};
pub use store::{
    Appended, EventStore, ExpectedVersion, LogFilter, StoreError, StreamEvent, StreamPayload,
    VersionRange, read_log,
};
pub use typed::{Either, EventSet, Typed, TypedError, TypedHandler, TypedProjection, TypedSaga};
pub use wait::{EventWaiter, WaitError};

/// `#[derive(Aggregate)]`: see [`Aggregate`](trait@Aggregate).
#[cfg(feature = "derive")]
pub use eventsource_derive::Aggregate;
/// `#[derive(DomainEvent)]`: see [`DomainEvent`](trait@DomainEvent).
#[cfg(feature = "derive")]
pub use eventsource_derive::DomainEvent;

/// Support for the code the derives generate. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::event::{stored_shape, strip_tag, upcast_step, with_tag};
    pub use serde_json;
}
