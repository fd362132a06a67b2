//! What every reader of the log under a lease does, whatever it feeds: take the lease, load
//! the checkpoint, read batch after batch (polling adaptively when idle, renewing the lease),
//! seal each batch by moving the checkpoint with the lease renewed in the same transaction,
//! and let the lease go. Shared by [`PgProjectionRunner`](crate::PgProjectionRunner) and
//! [`PgSagaRunner`](crate::PgSagaRunner).

use std::future::Future;
use std::time::{Duration, Instant};

use eventsource_core::{EventStore, LogPosition, StoreError};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use super::error::PgProjectionError;
use super::lease::PgLease;
use super::options::ProjectionOptions;
use crate::checkpoint::PgCheckpointStore;
use crate::store::PgEventStore;

/// A reader of the log that commits batch by batch under the lease named after it.
pub(crate) trait LogReader: Sync {
    /// Why the reader failed on an event.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Where the reader stands (at least its checkpoint).
    type Cursor: std::fmt::Debug + Send;

    /// The name of its lease and checkpoint.
    fn name(&self) -> &str;

    /// The store whose log it reads.
    fn store(&self) -> &PgEventStore;

    /// Where its lease and checkpoint live.
    fn pool(&self) -> &PgPool;

    /// Its tuning.
    fn options(&self) -> &ProjectionOptions;

    /// Loads where it stands.
    fn load_cursor(
        &self,
    ) -> impl Future<Output = Result<Self::Cursor, PgProjectionError<Self::Error>>> + Send;

    /// Reads and commits one batch after `cursor`, moving it; returns the batch's size. A
    /// batch that commits renews the lease.
    fn step(
        &self,
        lease: &PgLease,
        cursor: &mut Self::Cursor,
    ) -> impl Future<Output = Result<usize, PgProjectionError<Self::Error>>> + Send;
}

/// Takes the lease (waiting while another instance holds it), then tails the log until
/// `shutdown` is cancelled, and releases the lease.
pub(crate) async fn run<R: LogReader>(
    reader: &R,
    shutdown: &CancellationToken,
) -> Result<(), PgProjectionError<R::Error>> {
    let options = reader.options();
    let Some(lease) = PgLease::acquire(
        reader.pool(),
        reader.name(),
        options.instance_id.clone(),
        options.lease_ttl,
        shutdown,
    )
    .await
    .map_err(PgProjectionError::from_lease)?
    else {
        return Ok(());
    };
    let outcome = tail(reader, &lease, shutdown).await;
    let_go(reader.name(), lease, &outcome).await;
    outcome
}

/// Takes the lease or fails at once, processes everything up to the current end of the log,
/// releases the lease; returns how many events it read.
pub(crate) async fn catch_up<R: LogReader>(reader: &R) -> Result<u64, PgProjectionError<R::Error>> {
    let options = reader.options();
    let lease = PgLease::try_acquire(
        reader.pool(),
        reader.name(),
        options.instance_id.clone(),
        options.lease_ttl,
    )
    .await
    .map_err(PgProjectionError::from_lease)?;
    let outcome = async {
        let mut cursor = reader.load_cursor().await?;
        let mut read = 0;
        loop {
            let n = reader.step(&lease, &mut cursor).await?;
            read += n as u64;
            if n < options.batch_size {
                return Ok(read);
            }
        }
    }
    .await;
    let_go(reader.name(), lease, &outcome).await;
    outcome
}

/// Releases the lease unless it was lost.
async fn let_go<T, E: std::error::Error + 'static>(
    name: &str,
    lease: PgLease,
    outcome: &Result<T, PgProjectionError<E>>,
) {
    if matches!(outcome, Err(PgProjectionError::LeaseLost { .. })) {
        return;
    }
    if let Err(e) = lease.release().await {
        tracing::warn!(reader = name, error = %e, "lease not released; it will run out");
    }
}

async fn tail<R: LogReader>(
    reader: &R,
    lease: &PgLease,
    shutdown: &CancellationToken,
) -> Result<(), PgProjectionError<R::Error>> {
    let options = reader.options();
    let notify = reader.store().append_notify();
    let mut cursor = reader.load_cursor().await?;
    tracing::info!(
        reader = reader.name(),
        holder = lease.holder(),
        ?cursor,
        "leased; tailing the log"
    );
    let renew_every = options.lease_ttl / 3;
    let mut renewed = Instant::now();
    let mut idle = Duration::ZERO;
    while !shutdown.is_cancelled() {
        if renewed.elapsed() >= renew_every {
            let at = Instant::now();
            lease.renew().await.map_err(PgProjectionError::from_lease)?;
            renewed = at;
        }
        // Register for the wake-up before reading, so an append that lands between the read
        // and the wait is not missed.
        let notified = notify.as_ref().map(|n| n.notified());
        let mut notified = std::pin::pin!(notified);
        if let Some(n) = notified.as_mut().as_pin_mut() {
            n.enable();
        }
        let started = Instant::now();
        if reader.step(lease, &mut cursor).await? > 0 {
            // The batch's transaction renewed the lease.
            renewed = started;
            idle = Duration::ZERO;
            continue;
        }
        idle = (idle * 2)
            .max(Duration::from_millis(1))
            .min(options.max_idle_poll);
        let wait = idle.min(renew_every.saturating_sub(renewed.elapsed()));
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(wait) => {}
            () = async {
                match notified.as_mut().as_pin_mut() {
                    Some(n) => n.await,
                    None => std::future::pending().await,
                }
            } => { idle = Duration::ZERO; }
        }
    }
    Ok(())
}

/// Last in a batch's transaction: renews the lease in it (a takeover waits for the
/// transaction from here on only) and moves the checkpoint `name` from `expected` to `last` by
/// compare-and-set. The caller rolls back on error.
pub(crate) async fn seal<E: std::error::Error + 'static>(
    tx: &mut PgConnection,
    lease: &PgLease,
    name: &str,
    expected: Option<LogPosition>,
    last: LogPosition,
) -> Result<(), PgProjectionError<E>> {
    lease
        .renew_in_tx(tx)
        .await
        .map_err(PgProjectionError::from_lease)?;
    match PgCheckpointStore::save_in_tx(tx, name, expected, last).await {
        Ok(()) => Ok(()),
        Err(StoreError::CheckpointConflict {
            expected, actual, ..
        }) => {
            tracing::warn!(reader = name, ?expected, ?actual, "checkpoint moved");
            Err(PgProjectionError::CheckpointMoved {
                projection: name.to_owned(),
                expected,
                actual,
            })
        }
        Err(e) => Err(PgProjectionError::Store(e)),
    }
}
