//! A job queue on Redis with BullMQ's feature set.
//!
//! - [`Queue::add`] / [`Queue::add_with`]: a named job with JSON data and [`JobOptions`]:
//!   priority (lower first, then first added first), delay, attempts, fixed or exponential
//!   [`Backoff`] with jitter, a job id that deduplicates, retention of the last N completed /
//!   failed jobs.
//! - [`Worker`]: runs a [`JobHandler`] with a concurrency limit and graceful shutdown; each job
//!   runs under a lock renewed while it runs; a job whose worker died runs again after its lock
//!   expires, until its attempts are spent; [`Job::progress`] reports progress.
//! - [`Queue::pause`] / [`Queue::resume`], [`Queue::counts`], [`Queue::job`].
//! - Lifecycle events ([`JobEvent`]: added, completed, retrying, stalled, failed, progress,
//!   paused, resumed) are appended to the queue's event stream by the same script as the
//!   transition; [`Queue::events`] reads them, the hook for an event bus or an event store.
//! - [`JobEventsRelay`] publishes them onto an [`EventBus`](eventsource_core::bus::EventBus)
//!   as `jobs.<queue>.<kind>` (`jobs.analysis.completed`, …), at least once, from a durable
//!   cursor, with ids stable across re-publications; [`JobEventsStoreRelay`] appends the ones
//!   the application maps to domain events to an event store, once each.
//!
//! Every transition is one Lua script (atomic). The keys, `es:jobs:{<queue>}:…`, carry the
//! queue name as hash tag, so each script touches one slot; the queue still takes a single
//! node's connection (not Redis Cluster yet).
//!
//! | key | type | holds |
//! |---|---|---|
//! | `…:wait` | sorted set | ready jobs, by `priority * 2^32 + order added` |
//! | `…:delayed` | sorted set | delayed jobs and retries in backoff, by due time (ms) |
//! | `…:active` | sorted set | running jobs, by lock deadline (ms) |
//! | `…:completed`, `…:failed` | sorted set | finished jobs, by finish time |
//! | `…:job:<id>` | hash | a job's name, data, options, state, progress, result |
//! | `…:id`, `…:meta`, `…:events` | string, hash, stream | id counter, paused flag, events |

mod counts;
mod error;
mod event;
mod options;
mod queue;
mod relay;
mod scripts;
mod store;
mod tail;
mod worker;

pub use counts::JobCounts;
pub use error::JobError;
pub use event::JobEvent;
pub use options::{Backoff, JobOptions, MAX_PRIORITY, WorkerOptions};
pub use queue::{Added, JobInfo, JobState, Queue};
pub use relay::{JOB_EVENT_FIELD, JobEventsRelay, RelayError};
pub use store::JobEventsStoreRelay;
pub use worker::{BoxError, Job, JobHandler, Worker};
