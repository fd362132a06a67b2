//! Projections fed by a consumer group, with exactly-once effects.
//!
//! A consumer group delivers at least once, and after a crash or a reclaim entries may arrive
//! out of order (an entry reclaimed from a dead consumer comes after later ones). A single
//! "last position" checkpoint would then skip the reclaimed entry. So the read model records
//! **each applied position** in the same transaction as its change, and a delivery whose
//! position is already recorded is skipped. Redelivery never double-applies, and no reordering
//! loses an event. Recorded positions below the group's trim floor can be pruned.
//!
//! A read model in PostgreSQL takes `eventsource-postgres`'s `PgProjectionHandler`, an
//! [`EventHandler`] that records positions in its `applied_positions` table (a migration of
//! that crate), so this crate needs no database driver (ADR 0016).

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use eventsource_core::{EventHandler, LogPosition, RecordedEvent};

/// Whether an event changed the read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The event was applied and its position recorded, in one transaction.
    Applied,
    /// The position was already recorded: a redelivery, nothing changed.
    Duplicate,
}

/// A read model that applies an event and records its position atomically.
///
/// Implementations open a transaction, insert the event's position into their "applied"
/// table (stopping with [`Applied::Duplicate`] if it is there), apply the change and commit.
pub trait TransactionalProjection: Send + Sync {
    /// Why applying failed; the runner retries, then dead-letters.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Applies `event` unless its position was applied before.
    fn apply_once(
        &self,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<Applied, Self::Error>> + Send;
}

/// Adapts a [`TransactionalProjection`] to an [`EventHandler`] for a
/// [`ConsumerRunner`](crate::ConsumerRunner), counting skipped duplicates.
#[derive(Debug, Default)]
pub struct ProjectionHandler<P> {
    projection: P,
    duplicates: AtomicU64,
}

impl<P> ProjectionHandler<P> {
    /// Wraps `projection`.
    pub fn new(projection: P) -> Self {
        Self {
            projection,
            duplicates: AtomicU64::new(0),
        }
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// Redeliveries skipped so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }
}

impl<P: TransactionalProjection> EventHandler for ProjectionHandler<P> {
    type Error = P::Error;

    async fn handle(&self, event: &RecordedEvent) -> Result<(), Self::Error> {
        if self.projection.apply_once(event).await? == Applied::Duplicate {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(position = %event.position, "skipping already applied event");
        }
        Ok(())
    }
}

/// A [`TransactionalProjection`] in memory: a fold over events, with its applied positions
/// under the same lock. For tests and examples.
#[derive(Debug)]
pub struct InMemoryProjection<S, F> {
    state: Mutex<(S, HashSet<LogPosition>)>,
    apply: F,
}

impl<S, F> InMemoryProjection<S, F>
where
    S: Clone,
    F: Fn(&mut S, &RecordedEvent),
{
    /// A projection starting at `initial`, changed by `apply`.
    pub fn new(initial: S, apply: F) -> Self {
        Self {
            state: Mutex::new((initial, HashSet::new())),
            apply,
        }
    }

    /// A copy of the current state.
    pub fn state(&self) -> S {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }
}

impl<S, F> TransactionalProjection for InMemoryProjection<S, F>
where
    S: Send,
    F: Fn(&mut S, &RecordedEvent) + Send + Sync,
{
    type Error = std::convert::Infallible;

    async fn apply_once(&self, event: &RecordedEvent) -> Result<Applied, Self::Error> {
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (state, applied) = &mut *guard;
        if !applied.insert(event.position) {
            return Ok(Applied::Duplicate);
        }
        (self.apply)(state, event);
        Ok(Applied::Applied)
    }
}
