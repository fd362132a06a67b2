#![doc = include_str!("../README.md")]
#![doc(test(attr(deny(warnings))))]

pub mod admin;
mod bus;
pub mod codec;
pub mod consumer;
pub mod error;
pub mod jobs;
pub mod keys;
pub mod options;
mod order;
pub mod publisher;
pub mod runner;
mod wait;

pub use admin::{
    DeadLetter, GroupStats, Health, StreamStats, Trimmed, dead_letter_count, dead_letters,
    health_check, requeue_dead_letter, stats, trim,
};
pub use bus::{RedisBus, connect_bus};
pub use codec::CodecError;
pub use consumer::ensure_group;
pub use error::{RedisStoreError, RunnerError};
pub use keys::{Keys, PerAggregateType, PerEventType, PerTenant, Router};
pub use options::{PublisherOptions, RunnerOptions};
pub use publisher::{Published, RedisPublisher};
pub use runner::projection::{
    Applied, InMemoryProjection, ProjectionHandler, TransactionalProjection,
};
pub use runner::{ConsumerRunner, RunnerCounters};
pub use wait::RedisEventWaiter;
