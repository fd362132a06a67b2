//! [`TypedPgProjection`] and [`TypedPgRebuildable`]: PostgreSQL projections written against a
//! [`DomainEvent`](eventsource_core::DomainEvent) enum, given to the runners through core's
//! [`Typed`] wrapper.

use std::future::Future;

use eventsource_core::{Envelope, EventSet, RecordedEvent, Typed, TypedError};
use sqlx::PgConnection;

use super::PgProjection;
use super::rebuild::PgRebuildable;

/// A [`PgProjection`] over the events of one [`DomainEvent`](eventsource_core::DomainEvent)
/// enum (or several, with [`Either`](eventsource_core::Either)); wrap it in [`Typed`] to give
/// it to [`PgProjectionRunner`](crate::PgProjectionRunner) or
/// [`PgProjectionHandler`](crate::PgProjectionHandler).
///
/// As for core's [`TypedProjection`](eventsource_core::TypedProjection), `Typed` decodes each
/// stored event once, upcasting older schema versions, and calls [`apply`](Self::apply) with
/// the decoded envelope. An event whose type is not in the set is skipped without decoding
/// (one log carries every aggregate's events): nothing is written for it, and the checkpoint
/// moves past it. An event of the set whose payload does not decode fails with
/// [`TypedError::Decode`] naming the event: the runner halts before it with its checkpoint
/// unmoved (an upcaster can be deployed and the runner restarted), and
/// [`PgProjectionHandler`](crate::PgProjectionHandler) reports it as permanent (a consumer
/// group dead-letters it at once). The rules of [`PgProjection::apply`] hold: every effect
/// through `conn`, inside the caller's transaction.
///
/// # Examples
///
/// ```
/// use eventsource_core::{DomainEvent, Envelope, Typed};
/// use eventsource_postgres::{PgProjection, TypedPgProjection};
/// use serde::{Deserialize, Serialize};
/// use sqlx::PgConnection;
///
/// #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
/// enum OrderEvent {
///     #[event(name = "order-placed")]
///     Placed { cents: i64 },
///     #[event(name = "order-cancelled")]
///     Cancelled,
/// }
///
/// /// Order totals per tenant.
/// struct OrderTotals;
///
/// impl TypedPgProjection for OrderTotals {
///     type Event = OrderEvent;
///     type Error = sqlx::Error;
///
///     fn name(&self) -> &str {
///         "order-totals"
///     }
///
///     async fn apply(
///         &self,
///         conn: &mut PgConnection,
///         event: &Envelope<OrderEvent>,
///     ) -> Result<(), sqlx::Error> {
///         let OrderEvent::Placed { cents } = event.payload else {
///             return Ok(());
///         };
///         sqlx::query(
///             "INSERT INTO order_totals (tenant, cents) VALUES ($1, $2) \
///              ON CONFLICT (tenant) DO UPDATE SET cents = order_totals.cents + EXCLUDED.cents",
///         )
///         .bind(event.tenant().as_str())
///         .bind(cents)
///         .execute(conn)
///         .await?;
///         Ok(())
///     }
/// }
///
/// // What the runners take: `PgProjectionRunner::new(store, projection, options)`.
/// let projection = Typed::new(OrderTotals);
/// assert_eq!(projection.name(), "order-totals");
/// ```
pub trait TypedPgProjection: Send + Sync {
    /// The events applied (one enum, or several with [`Either`](eventsource_core::Either));
    /// events of other types are skipped without decoding.
    type Event: EventSet;
    /// Why applying an event failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The projection's name (see [`PgProjection::name`]).
    fn name(&self) -> &str;

    /// Applies one decoded event, with its envelope, to the read model through `conn`.
    fn apply(
        &self,
        conn: &mut PgConnection,
        event: &Envelope<Self::Event>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Whether `error` recurs on every try (see [`PgProjection::is_permanent`]). Decoding
    /// failures are always permanent; the default treats the projection's errors as transient.
    fn is_permanent(&self, error: &Self::Error) -> bool {
        let _ = error;
        false
    }

    /// A side effect of `event` outside the read model, with the rules of
    /// [`PgProjection::side_effect`] (live events only, after their commit, at most once):
    /// nothing by default. `Typed` decodes the event again for it (the decoded value of
    /// `apply` does not outlive its transaction), a cost paid on the live path only.
    fn side_effect(&self, event: &Envelope<Self::Event>) -> impl Future<Output = ()> + Send {
        let _ = event;
        async {}
    }
}

/// A [`TypedPgProjection`] whose read model can be rebuilt into a generation of its own: the
/// typed counterpart of [`PgRebuildable`], given to [`PgRebuild`](crate::PgRebuild) as
/// `Typed::new(projection)`.
pub trait TypedPgRebuildable: TypedPgProjection {
    /// The tables readers query (see [`PgRebuildable::tables`]).
    fn tables(&self) -> &[&str];

    /// Creates the projection's tables, unqualified (see [`PgRebuildable::create_tables`]).
    fn create_tables(
        &self,
        conn: &mut PgConnection,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

impl<P: TypedPgProjection> PgProjection for Typed<P> {
    type Error = TypedError<P::Error>;

    fn name(&self) -> &str {
        self.get_ref().name()
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), Self::Error> {
        if !<P::Event as EventSet>::knows(&event.event_type) {
            return Ok(());
        }
        let decoded = P::Event::decode(event).map_err(TypedError::Decode)?;
        self.get_ref()
            .apply(conn, &decoded)
            .await
            .map_err(TypedError::Handler)
    }

    fn is_permanent(&self, error: &Self::Error) -> bool {
        match error {
            TypedError::Handler(error) => self.get_ref().is_permanent(error),
            // A payload that does not decode fails the same way on every try.
            _ => true,
        }
    }

    async fn side_effect(&self, event: &RecordedEvent) {
        if !<P::Event as EventSet>::knows(&event.event_type) {
            return;
        }
        // `apply` decoded this event in the committed transaction, so it decodes again; a
        // failure here would mean a decoder that is not deterministic: skip, as for a crash.
        match P::Event::decode(event) {
            Ok(decoded) => self.get_ref().side_effect(&decoded).await,
            Err(e) => {
                tracing::warn!(error = %e, "side effect skipped: the event no longer decodes");
            }
        }
    }
}

impl<P: TypedPgRebuildable> PgRebuildable for Typed<P> {
    fn tables(&self) -> &[&str] {
        self.get_ref().tables()
    }

    async fn create_tables(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        self.get_ref().create_tables(conn).await
    }
}
