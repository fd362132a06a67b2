//! [`PgRebuildable`]: the projection's side of a rebuild.

use std::future::Future;

use sqlx::PgConnection;

use crate::projection::PgProjection;

/// A [`PgProjection`] whose read model can be rebuilt into a generation of its own.
///
/// Its statements name its tables unqualified (`INSERT INTO order_totals ...`), and
/// [`tables`](Self::tables) lists the tables readers query. A rebuild
/// ([`PgRebuild`](crate::PgRebuild)) creates them in the new generation's schema with
/// [`create_tables`](Self::create_tables); readers query views of the same names in the reader
/// schema (`public` by default), which point at the serving generation. Both
/// [`PgRebuild`](crate::PgRebuild) and [`PgProjectionRunner`](crate::PgProjectionRunner) set each
/// transaction's `search_path` to the generation's schema alone while the projection runs, so
/// `apply` writes to the right generation without knowing it, and a table it forgot to create is an
/// error rather than a table (or a reader's view) of `public`. Name anything else it uses with its
/// schema (`public.currency_rates`, `public.uuid_generate_v7()`).
///
/// # Examples
///
/// ```
/// use eventsource_core::RecordedEvent;
/// use eventsource_postgres::{PgProjection, PgRebuildable};
/// use sqlx::PgConnection;
///
/// /// Events per stream.
/// struct EventCounts;
///
/// impl PgProjection for EventCounts {
///     type Error = sqlx::Error;
///
///     fn name(&self) -> &str {
///         "event-counts"
///     }
///
///     async fn apply(&self, conn: &mut PgConnection, event: &RecordedEvent) -> Result<(), sqlx::Error> {
///         sqlx::query(
///             "INSERT INTO event_counts (stream, n) VALUES ($1, 1) \
///              ON CONFLICT (stream) DO UPDATE SET n = event_counts.n + 1",
///         )
///         .bind(event.stream.to_string())
///         .execute(conn)
///         .await?;
///         Ok(())
///     }
/// }
///
/// impl PgRebuildable for EventCounts {
///     fn tables(&self) -> &[&str] {
///         &["event_counts"]
///     }
///
///     async fn create_tables(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
///         sqlx::query("CREATE TABLE event_counts (stream text PRIMARY KEY, n bigint NOT NULL)")
///             .execute(conn)
///             .await?;
///         Ok(())
///     }
/// }
/// # let _ = EventCounts;
/// ```
pub trait PgRebuildable: PgProjection {
    /// The tables readers query: each gets a view of its name in the reader schema.
    fn tables(&self) -> &[&str];

    /// Creates the projection's tables (and their indexes), unqualified, through `conn`: the
    /// transaction's `search_path` starts with the new generation's schema.
    fn create_tables(
        &self,
        conn: &mut PgConnection,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}
