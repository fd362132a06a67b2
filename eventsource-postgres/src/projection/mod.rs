//! Projections whose read model lives in PostgreSQL, with exactly-once effects.
//!
//! - [`PgProjection`]: the read model's side, applying one event inside a transaction the
//!   caller owns.
//! - [`PgProjectionRunner`] (`runner.rs`): feeds it from the global log, one transaction per
//!   batch with the checkpoint moved by compare-and-set, one live instance under a lease.
//! - [`PgLease`] (`lease.rs`): the lease, shared with rebuilds.
//! - `tail.rs`: the leased, checkpointed reading of the log, shared with
//!   [`PgSagaRunner`](crate::PgSagaRunner).
//! - [`PgRebuild`] (`rebuild/`): a blue/green rebuild of a [`PgRebuildable`] projection into
//!   a generation of its own, cut over automatically, with [`RebuildProgress`] reports.
//! - [`PgProjectionHandler`] (`handler.rs`): feeds it from at-least-once delivery (a Redis
//!   consumer group), recording each applied position in the same transaction.
//! - [`TypedPgProjection`] and [`TypedPgRebuildable`] (`typed.rs`): the same against a
//!   `DomainEvent` enum, given to the runners wrapped in core's `Typed`.
//! - [`ProjectionOptions`] (`options.rs`), [`PgProjectionError`] and [`LeaseError`]
//!   (`error.rs`).

mod error;
mod handler;
mod lease;
mod options;
mod rebuild;
mod runner;
pub(crate) mod tail;
mod typed;

use std::future::Future;

use eventsource_core::RecordedEvent;
use sqlx::PgConnection;

pub use error::{LeaseError, PgProjectionError};
pub use handler::PgProjectionHandler;
pub use lease::PgLease;
pub use options::ProjectionOptions;
pub use rebuild::{
    PgRebuild, PgRebuildable, PgTenantRebuildable, RebuildOptions, RebuildPhase, RebuildProgress,
    RebuildReport,
};
pub use runner::PgProjectionRunner;
pub use typed::{TypedPgProjection, TypedPgRebuildable};

/// A read model in PostgreSQL: applies one event with statements on the connection it is
/// given, inside a transaction the caller owns.
///
/// The caller ([`PgProjectionRunner`], [`PgProjectionHandler`]) commits the transaction with
/// its own bookkeeping (the checkpoint, or the applied position) or rolls it all back, so
/// `apply` must make every effect through `conn` and nowhere else (no other pool, no HTTP
/// call): that is what makes the effects exactly-once. It must not commit or roll back the
/// transaction itself. Events come in log order (from the runner) or in any order (from a
/// consumer group).
///
/// # Examples
///
/// ```
/// use eventsource_core::RecordedEvent;
/// use eventsource_postgres::PgProjection;
/// use sqlx::PgConnection;
///
/// /// Order totals per tenant.
/// struct OrderTotals;
///
/// impl PgProjection for OrderTotals {
///     type Error = sqlx::Error;
///
///     fn name(&self) -> &str {
///         "order-totals"
///     }
///
///     async fn apply(&self, conn: &mut PgConnection, event: &RecordedEvent) -> Result<(), sqlx::Error> {
///         if event.event_type == "order-placed" {
///             sqlx::query(
///                 "INSERT INTO order_totals (tenant, cents) VALUES ($1, $2) \
///                  ON CONFLICT (tenant) DO UPDATE SET cents = order_totals.cents + EXCLUDED.cents",
///             )
///             .bind(event.tenant().as_str())
///             .bind(event.payload["cents"].as_i64().unwrap_or(0))
///             .execute(conn)
///             .await?;
///         }
///         Ok(())
///     }
/// }
/// # let _ = OrderTotals;
/// ```
pub trait PgProjection: Send + Sync {
    /// Why applying an event failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The projection's name: its checkpoint, its lease and its applied positions are kept
    /// under it. Stable across restarts; shares the `checkpoints` table's names with other
    /// readers (the relay).
    fn name(&self) -> &str;

    /// Applies `event` to the read model through `conn`.
    fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Whether `error` recurs whatever the number of tries (an event the projection cannot
    /// read, say): [`PgProjectionHandler`] reports such a failure as permanent, so a consumer
    /// group dead-letters the event at once instead of retrying it. The default treats every
    /// error as transient. The runner halts on any error, whatever this says.
    fn is_permanent(&self, error: &Self::Error) -> bool {
        let _ = error;
        false
    }

    /// Applies a batch of events, in log order, through `conn`: by default
    /// [`apply`](Self::apply) on each in turn.
    ///
    /// [`PgProjectionRunner`] and [`PgRebuild`]'s sequential fill and cutover call it once per
    /// batch, inside the batch's transaction (a parallel fill and a one-tenant rebuild still
    /// apply event by event). Override it to write once per batch rather than once per event (one upsert
    /// per row the batch touches, one count per batch): a rebuild then runs at about the speed
    /// of reading the log instead of a round trip per event. It must leave the read model as
    /// applying each event in turn would. When it fails, the caller rolls the batch back and
    /// applies it again event by event with `apply`, which names the failing event and commits
    /// the events before it.
    fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async move {
            for event in events {
                self.apply(conn, event).await?;
            }
            Ok(())
        }
    }

    /// A side effect of `event` outside the read model (an e-mail, a call to another
    /// service): nothing by default.
    ///
    /// Called only for events processed live, after the transaction that applied them
    /// committed: by [`PgProjectionRunner`] after each batch, by [`PgProjectionHandler`] after
    /// each new delivery. A rebuild ([`PgRebuild`]) never calls it, so replayed events (every
    /// event up to the cutover position) do not repeat their effects. It is at most once: a
    /// crash between the commit and the call skips it; for at-least-once, have `apply` write
    /// an outbox row in its transaction instead.
    fn side_effect(&self, event: &RecordedEvent) -> impl Future<Output = ()> + Send {
        let _ = event;
        async {}
    }
}
