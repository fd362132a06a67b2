//! Why a projection runner, a projection handler or a lease stopped.

use chrono::{DateTime, Utc};
use eventsource_core::{EventId, LogPosition, RecordedEvent, StoreError, StreamId, Version};

use crate::error::is_transient;

/// Why a [`PgProjectionRunner`](crate::PgProjectionRunner) stopped, or a
/// [`PgProjectionHandler`](crate::PgProjectionHandler) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgProjectionError<E: std::error::Error + 'static> {
    /// The projection failed on an event. Nothing from this event on was applied: the
    /// checkpoint stands just before it (the runner committed the events of the batch that
    /// came before it), and a runner started again begins with it.
    #[error(
        "projection {projection} failed on event {event_id} ({event_type}, {stream} version \
         {version}) at {position}"
    )]
    Apply {
        /// The projection's name.
        projection: String,
        /// The failing event's id.
        event_id: EventId,
        /// Its type.
        event_type: String,
        /// Its stream.
        stream: StreamId,
        /// Its version in the stream.
        version: Version,
        /// Its place in the log.
        position: LogPosition,
        /// The projection's error.
        #[source]
        source: E,
    },
    /// Another instance holds the projection's lease; returned by
    /// [`PgProjectionRunner::catch_up`](crate::PgProjectionRunner::catch_up), which does not
    /// wait for it ([`run`](crate::PgProjectionRunner::run) does).
    #[error("projection {projection} is leased to {holder} until {expires_at}")]
    LeaseHeld {
        /// The projection's name.
        projection: String,
        /// The instance holding the lease.
        holder: String,
        /// When the lease runs out unless renewed.
        expires_at: DateTime<Utc>,
    },
    /// This instance lost the projection's lease (it did not renew it in time, and another
    /// instance or a rebuild took it): its batch in flight was rolled back and it stopped.
    #[error("projection {projection} lost its lease")]
    LeaseLost {
        /// The projection's name.
        projection: String,
        /// Who holds it now, if anyone.
        holder: Option<String>,
    },
    /// The checkpoint was not where this instance left it although it held the lease:
    /// something moved it outside the lease (a hand-written
    /// [`PgCheckpointStore`](crate::PgCheckpointStore) save, say). The batch was rolled back.
    #[error("checkpoint of projection {projection} moved from {expected:?} to {actual:?}")]
    CheckpointMoved {
        /// The projection's name.
        projection: String,
        /// Where this instance left it.
        expected: Option<LogPosition>,
        /// Where it is.
        actual: Option<LogPosition>,
    },
    /// A rebuild's cutover would have moved the live checkpoint backwards: the new generation
    /// ends before the position the live runner reached (the rebuild read another part of the
    /// log than the live runner: another filter, or a start after its checkpoint). Nothing was
    /// cut over; the old generation serves and the new one stays building.
    #[error(
        "rebuild of projection {projection} ends at {cutover:?}, before the live checkpoint \
         {live:?}: not cut over"
    )]
    CutoverBehind {
        /// The projection's name.
        projection: String,
        /// The live checkpoint.
        live: Option<LogPosition>,
        /// Where the new generation is complete up to.
        cutover: Option<LogPosition>,
    },
    /// The projection's generations would take schemas of another projection's: the two share
    /// a schema prefix (names alike once made identifiers, or one
    /// [`RebuildOptions::with_schema_prefix`](crate::RebuildOptions::with_schema_prefix)).
    /// Nothing was created; give one of them a prefix of its own.
    #[error(
        "schema prefix {prefix} of projection {projection} is another projection's: \
         give it a prefix of its own"
    )]
    SchemaPrefixTaken {
        /// The projection's name.
        projection: String,
        /// The prefix its generations' schemas would take (`<prefix>_g<n>`).
        prefix: String,
    },
    /// The projection has no serving generation to rebuild a tenant's rows in
    /// ([`PgRebuild::rebuild_tenant`](crate::PgRebuild::rebuild_tenant)): build one first.
    #[error("projection {projection} has no serving generation")]
    NotServing {
        /// The projection's name.
        projection: String,
    },
    /// Reading the log failed.
    #[error("reading the log failed")]
    Store(#[source] StoreError),
    /// A statement of the read-model transaction, the checkpoint or the lease failed.
    #[error("projection database operation failed")]
    Database(#[from] sqlx::Error),
}

impl<E: std::error::Error + 'static> PgProjectionError<E> {
    /// Whether starting the runner again may get past the error: a lost connection, a
    /// serialization failure, the server restarting. A failing event, a lost lease and a
    /// moved checkpoint are not.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable(),
            Self::Database(e) => is_transient(e),
            _ => false,
        }
    }

    pub(crate) fn apply(projection: &str, event: &RecordedEvent, source: E) -> Self {
        Self::Apply {
            projection: projection.to_owned(),
            event_id: event.event_id,
            event_type: event.event_type.clone(),
            stream: event.stream.clone(),
            version: event.version,
            position: event.position,
            source,
        }
    }

    pub(crate) fn from_lease(err: LeaseError) -> Self {
        match err {
            LeaseError::Held {
                name,
                holder,
                expires_at,
            } => Self::LeaseHeld {
                projection: name,
                holder,
                expires_at,
            },
            LeaseError::Lost { name, holder } => Self::LeaseLost {
                projection: name,
                holder,
            },
            LeaseError::Database(e) => Self::Database(e),
        }
    }
}

/// Why a [`PgLease`](crate::PgLease) could not be taken or kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// Another holder has the lease and it has not run out.
    #[error("lease {name} is held by {holder} until {expires_at}")]
    Held {
        /// The lease's name.
        name: String,
        /// Who holds it.
        holder: String,
        /// When it runs out unless renewed.
        expires_at: DateTime<Utc>,
    },
    /// The lease was taken by another holder (or by this holder's id again, in another
    /// process) since this one took it.
    #[error("lease {name} was taken over")]
    Lost {
        /// The lease's name.
        name: String,
        /// Who holds it now, if anyone.
        holder: Option<String>,
    },
    /// A statement failed.
    #[error("lease database operation failed")]
    Database(#[from] sqlx::Error),
}

impl LeaseError {
    /// Whether trying again later may succeed: the lease may have run out, or the database
    /// may answer again. A lost lease is never retryable for its old holder.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Held { .. } => true,
            Self::Lost { .. } => false,
            Self::Database(e) => is_transient(e),
        }
    }
}
