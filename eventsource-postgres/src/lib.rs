#![doc = include_str!("../README.md")]
#![doc(test(attr(deny(warnings))))]

mod checkpoint;
pub mod diagnostics;
mod error;
mod group;
mod kept;
pub mod metrics;
mod pooler;
mod projection;
mod read;
mod rejection;
mod row;
mod saga;
mod snapshot;
mod sql;
mod store;
mod tenant;
mod xid;

pub use checkpoint::PgCheckpointStore;
pub use diagnostics::LogBlocker;
pub use error::PgStoreError;
pub use projection::{
    LeaseError, PgLease, PgProjection, PgProjectionError, PgProjectionHandler, PgProjectionRunner,
    PgRebuild, PgRebuildable, PgTenantRebuildable, ProjectionOptions, RebuildOptions, RebuildPhase,
    RebuildProgress, RebuildReport, TypedPgProjection, TypedPgRebuildable,
};
pub use saga::{PgDeadlineRunner, PgSagaHandler, PgSagaRunner, PgSagaStore};
pub use snapshot::PgSnapshotStore;
pub use store::{DEFAULT_COMMIT_LANES, DEFAULT_GROUP_EVENTS, PgEventStore};
pub use tenant::{begin_tenant, set_tenant};

/// The schema, as embedded migrations; the application runs them (`MIGRATOR.run(&pool)`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();
