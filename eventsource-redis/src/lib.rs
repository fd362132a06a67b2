#![doc = include_str!("../README.md")]
#![doc(test(attr(deny(warnings))))]

// One directory per concept, each `mod.rs` a table of contents; every module is private and
// its public items are re-exported here by name, so each has one path (ADR 0026). Public
// modules are the namespaces users need as such: the wire contract of stream entries
// (`codec`, `dead_letter_fields`) and the job queue (`jobs`).
mod admin;
mod backoff;
mod bus;
pub mod codec;
mod connection;
mod dead_letter;
mod error;
pub mod jobs;
mod keys;
mod relay;
mod runner;
mod trim;
mod wait;

pub use admin::{GroupStats, Health, StreamStats, health_check, stats};
pub use bus::{RedisBus, connect_bus};
pub use connection::{RedisClient, RedisConnection};
pub use dead_letter::fields as dead_letter_fields;
pub use dead_letter::{DeadLetter, dead_letter_count, dead_letters, requeue_dead_letter};
pub use error::{CodecError, RedisStoreError, RunnerError};
pub use keys::{
    Keys, dead_letter_stream, relay_checkpoint, relay_shard_checkpoint, requeue_stream,
};
pub use relay::{
    PerAggregateType, PerEventType, PerTenant, Published, RedisRelay, RelayOptions, Router,
    registered_tenants, shard_of,
};
pub use runner::{
    Applied, ConsumerRunner, InMemoryProjection, ProjectionHandler, RunnerCounters, RunnerOptions,
    StartId, TenantDiscovery, TransactionalProjection, ensure_group,
};
pub use trim::{TrimCounters, TrimOptions, Trimmed, Trimmer, trim, trim_with_retention};
pub use wait::RedisEventWaiter;

/// The relay's old name: [`RedisRelay`].
#[deprecated(note = "renamed to `RedisRelay`")]
pub type RedisPublisher<S, C> = RedisRelay<S, C>;

/// The relay options' old name: [`RelayOptions`].
#[deprecated(note = "renamed to `RelayOptions`")]
pub type PublisherOptions = RelayOptions;
