//! Connections the store keeps between its statements instead of giving them back to the pool.
//!
//! sqlx tests every connection given back to a pool with a round trip of its own (a `Sync` and
//! its `ReadyForQuery`, in a task it spawns) before anyone can take the connection again. Most
//! of the store's operations are one statement, so giving the connection back after each one
//! doubled their round trips and woke one more task and one more server process each time (ADR
//! 0009 has the figures). So the store (its commit lanes, its single appends, its reads) keeps
//! the connection it used and takes it again for its next statement, and gives it back to the
//! pool
//! - when a statement on it failed: the pool's test then closes it if it is broken;
//! - when it has not been used for [`IDLE`], so an idle store holds no connection, and as soon
//!   as the pool is closed, so `PgPool::close` is not kept waiting: a janitor task looks every
//!   half [`IDLE`] and ends when nothing is kept;
//! - once it has been out of the pool for [`MAX_KEPT`], so the pool's lifetime and health
//!   rules still apply to it.
//!
//! At most `cap` connections are kept (the number of commit lanes), none unless the pool has at
//! least twice as many (the rest of the application shares it), and none outside a Tokio
//! runtime. A kept connection carries no state from one statement to the next: every statement
//! of the store sets its tenant for its own transaction only.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};

/// How long a kept connection may stay unused before it goes back to the pool.
pub(crate) const IDLE: Duration = Duration::from_millis(100);

/// How long a connection may stay out of the pool, however busy.
pub(crate) const MAX_KEPT: Duration = Duration::from_mins(1);

/// A connection out of the pool, and since when.
#[derive(Debug)]
pub(crate) struct Lent {
    pub(crate) conn: PoolConnection<Postgres>,
    out_since: Instant,
}

#[derive(Debug)]
struct Shelved {
    lent: Lent,
    idle_since: Instant,
}

#[derive(Debug, Default)]
struct Shelf {
    conns: Vec<Shelved>,
    janitor: bool,
    /// The pool's `min_connections`, for [`Drop`].
    min_connections: u32,
}

impl Drop for Shelf {
    fn drop(&mut self) {
        if tokio::runtime::Handle::try_current().is_ok() {
            return; // Dropped connections go back to the pool as usual.
        }
        // Outside a runtime, sqlx cannot spawn the task that takes a dropped connection back,
        // and panics: close them here instead.
        for shelved in self.conns.drain(..) {
            let conn = shelved.lent.conn;
            if self.min_connections == 0 {
                drop(conn.detach());
            } else {
                // Even a detached connection spawns a task then, to refill the pool.
                std::mem::forget(conn);
            }
        }
    }
}

/// The connections kept by one store.
#[derive(Debug)]
pub(crate) struct Kept {
    shelf: Arc<Mutex<Shelf>>,
    cap: usize,
}

impl Kept {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            shelf: Arc::new(Mutex::new(Shelf::default())),
            cap,
        }
    }

    /// A kept connection, or one from the pool.
    pub(crate) async fn take(&self, pool: &PgPool) -> Result<Lent, sqlx::Error> {
        let shelved = lock(&self.shelf).conns.pop();
        if let Some(shelved) = shelved {
            return Ok(shelved.lent);
        }
        Ok(Lent {
            conn: pool.acquire().await?,
            out_since: Instant::now(),
        })
    }

    /// Keeps a connection after a successful statement, or gives it back to the pool.
    pub(crate) fn keep(&self, pool: &PgPool, lent: Lent) {
        let keepable = !pool.is_closed()
            && lent.out_since.elapsed() < MAX_KEPT
            && usize::try_from(pool.options().get_max_connections()).unwrap_or(usize::MAX)
                >= 2 * self.cap;
        let runtime = tokio::runtime::Handle::try_current();
        let (Ok(runtime), true) = (runtime, keepable) else {
            return; // `lent` drops here, outside the lock: back to the pool.
        };
        let mut shelved = lock(&self.shelf);
        if shelved.conns.len() >= self.cap {
            drop(shelved);
            return;
        }
        shelved.min_connections = pool.options().get_min_connections();
        shelved.conns.push(Shelved {
            lent,
            idle_since: Instant::now(),
        });
        if !shelved.janitor {
            shelved.janitor = true;
            runtime.spawn(janitor(Arc::downgrade(&self.shelf), pool.clone()));
        }
    }
}

/// Gives back what has been idle for [`IDLE`], everything once the pool is closed; ends when
/// nothing is kept (or the group commit is gone).
async fn janitor(shelf: Weak<Mutex<Shelf>>, pool: PgPool) {
    loop {
        tokio::time::sleep(IDLE / 2).await;
        let Some(shelf) = shelf.upgrade() else { return };
        let (released, done) = {
            let mut shelf = lock(&shelf);
            let closed = pool.is_closed();
            let (released, kept): (Vec<_>, Vec<_>) = shelf
                .conns
                .drain(..)
                .partition(|s| closed || s.idle_since.elapsed() >= IDLE);
            shelf.conns = kept;
            shelf.janitor = !shelf.conns.is_empty();
            (released, !shelf.janitor)
        };
        drop(released); // Outside the lock: back to the pool.
        if done {
            return;
        }
    }
}

fn lock(shelf: &Mutex<Shelf>) -> MutexGuard<'_, Shelf> {
    shelf.lock().unwrap_or_else(PoisonError::into_inner)
}
