#![doc = include_str!("../README.md")]
#![doc(test(attr(deny(warnings))))]

pub mod aggregate;
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
pub mod snapshot;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use aggregate::{Aggregate, AggregateRoot, Dispatch, Handle};
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
    CommandDispatcher, DEADLINE_REACHED, DeadlineReached, DeadlineRunner, DueDeadline,
    InMemorySagaStore, Saga, SagaError, SagaHandler, SagaState, SagaStore,
};
pub use snapshot::{NoSnapshots, Snapshot, SnapshotPolicy, SnapshotStore};
pub use store::{
    Appended, EventStore, ExpectedVersion, LogFilter, StoreError, StreamEvent, StreamPayload,
    VersionRange, read_log,
};

/// `#[derive(Aggregate)]`: see [`Aggregate`](trait@Aggregate).
#[cfg(feature = "derive")]
pub use eventsource_derive::Aggregate;
/// `#[derive(DomainEvent)]`: see [`DomainEvent`](trait@DomainEvent).
#[cfg(feature = "derive")]
pub use eventsource_derive::DomainEvent;

/// Support for the code the derives generate. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::event::{strip_tag, with_tag};
    pub use serde_json;
}
