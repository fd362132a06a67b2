//! [`PgLease`]: one live holder per name, across processes.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool};
use tokio_util::sync::CancellationToken;

use super::error::LeaseError;
use crate::pooler::Autocommit;
use crate::sql;

/// A lease on a name (a projection's), held by one holder at a time, across processes.
///
/// The lease is a row of the `leases` table (migration 0008): the holder's id, a token, and an
/// expiry on the server's clock. Taking it succeeds when it is free, has run out, or is already
/// this holder id's (a restarted instance under the same id does not wait for its dead
/// predecessor's lease to run out); every taking counts the token up. The holder renews it
/// well within its time to live ([`renew`](Self::renew)), and writes that must not outlive
/// the lease renew it inside their own transaction ([`renew_in_tx`](Self::renew_in_tx)): that
/// renewal finds the token changed once anyone took the lease over, so the transaction rolls
/// back instead of committing a zombie's writes, and it locks the row until the transaction
/// ends, so a takeover cannot slip in between the check and the commit.
///
/// [`PgProjectionRunner`](crate::PgProjectionRunner) holds the lease named after its
/// projection; a rebuild takes the same one, so it never races a live runner in another
/// process. Why a row and not an advisory lock: ADR 0016.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use eventsource_postgres::PgLease;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
/// let lease = PgLease::try_acquire(&pool, "order-totals", "worker-1", Duration::from_secs(10))
///     .await?;
/// let mut tx = pool.begin().await?;
/// // ... writes that only the lease's holder may make ...
/// lease.renew_in_tx(&mut tx).await?; // fails, and the writes roll back, if the lease moved on
/// tx.commit().await?;
/// lease.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PgLease {
    pool: PgPool,
    name: String,
    holder: String,
    token: i64,
    ttl: Duration,
}

#[derive(Debug, sqlx::FromRow)]
struct HolderRow {
    holder: String,
    expires_at: DateTime<Utc>,
}

impl PgLease {
    /// Takes the lease `name` for `holder` for `ttl`, or fails at once with
    /// [`LeaseError::Held`] when another holder has it.
    ///
    /// # Errors
    ///
    /// [`LeaseError::Held`], or [`LeaseError::Database`].
    pub async fn try_acquire(
        pool: &PgPool,
        name: impl Into<String>,
        holder: impl Into<String>,
        ttl: Duration,
    ) -> Result<Self, LeaseError> {
        let (name, holder) = (name.into(), holder.into());
        loop {
            let mut conn = Autocommit::acquire(pool).await?;
            let token: Option<i64> = sqlx::query_scalar(sql::ACQUIRE_LEASE)
                .bind(&name)
                .bind(&holder)
                .bind(millis(ttl))
                .fetch_optional(&mut *conn)
                .await?;
            conn.commit().await?;
            if let Some(token) = token {
                tracing::debug!(lease = %name, %holder, token, "lease taken");
                return Ok(Self {
                    pool: pool.clone(),
                    name,
                    holder,
                    token,
                    ttl,
                });
            }
            // No row: gone between the two statements (deleted by hand): take it again.
            if let Some(row) = holder_of(pool, &name).await? {
                return Err(LeaseError::Held {
                    name,
                    holder: row.holder,
                    expires_at: row.expires_at,
                });
            }
        }
    }

    /// Takes the lease, waiting while another holder has it (polling every third of `ttl`, at
    /// most every second); `None` if `shutdown` is cancelled first.
    ///
    /// # Errors
    ///
    /// [`LeaseError::Database`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while its statement runs may leave the lease taken for `holder`
    /// until it runs out (or `holder` takes it again). Cancel through `shutdown` instead.
    pub async fn acquire(
        pool: &PgPool,
        name: impl Into<String>,
        holder: impl Into<String>,
        ttl: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Option<Self>, LeaseError> {
        let (name, holder) = (name.into(), holder.into());
        let every = (ttl / 3).clamp(Duration::from_millis(5), Duration::from_secs(1));
        let mut waiting = false;
        while !shutdown.is_cancelled() {
            match Self::try_acquire(pool, name.clone(), holder.clone(), ttl).await {
                Ok(lease) => return Ok(Some(lease)),
                Err(LeaseError::Held {
                    holder: other,
                    expires_at,
                    ..
                }) => {
                    if !waiting {
                        tracing::info!(lease = %name, %holder, holder_now = %other, %expires_at,
                            "lease held by another instance; standing by");
                        waiting = true;
                    }
                }
                Err(e) => return Err(e),
            }
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(every) => {}
            }
        }
        Ok(None)
    }

    /// Extends the lease by its time to live from now.
    ///
    /// # Errors
    ///
    /// [`LeaseError::Lost`] when it was taken over; [`LeaseError::Database`].
    pub async fn renew(&self) -> Result<(), LeaseError> {
        let mut conn = Autocommit::acquire(&self.pool).await?;
        self.renew_on(&mut *conn).await?;
        conn.commit().await?;
        Ok(())
    }

    /// Extends the lease inside the caller's transaction, which then holds the lease's row
    /// locked until it ends: a takeover waits for it, and finds the lease renewed if it
    /// commits. Call it last before the commit of writes only the holder may make (a takeover
    /// is not kept waiting on the rest of the transaction).
    ///
    /// # Errors
    ///
    /// [`LeaseError::Lost`] when it was taken over (roll the transaction back);
    /// [`LeaseError::Database`].
    pub async fn renew_in_tx(&self, conn: &mut PgConnection) -> Result<(), LeaseError> {
        self.renew_on(conn).await
    }

    async fn renew_on<'c>(&self, executor: impl PgExecutor<'c>) -> Result<(), LeaseError> {
        let renewed: Option<i32> = sqlx::query_scalar(sql::RENEW_LEASE)
            .bind(&self.name)
            .bind(self.token)
            .bind(millis(self.ttl))
            .fetch_optional(executor)
            .await?;
        if renewed.is_some() {
            return Ok(());
        }
        let holder = holder_of(&self.pool, &self.name)
            .await?
            .map(|row| row.holder);
        tracing::warn!(lease = %self.name, holder = %self.holder, holder_now = ?holder, "lease lost");
        Err(LeaseError::Lost {
            name: self.name.clone(),
            holder,
        })
    }

    /// Lets the lease go at once, if this holder still has it: the next taker need not wait
    /// for it to run out.
    ///
    /// # Errors
    ///
    /// [`LeaseError::Database`]; the lease then runs out on its own.
    pub async fn release(self) -> Result<(), LeaseError> {
        let mut conn = Autocommit::acquire(&self.pool).await?;
        sqlx::query(sql::RELEASE_LEASE)
            .bind(&self.name)
            .bind(self.token)
            .execute(&mut *conn)
            .await?;
        conn.commit().await?;
        tracing::debug!(lease = %self.name, holder = %self.holder, "lease released");
        Ok(())
    }

    /// The lease's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The holder's id.
    #[must_use]
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The fencing token: counted up at every taking of the lease.
    #[must_use]
    pub fn token(&self) -> u64 {
        u64::try_from(self.token).unwrap_or(0)
    }

    /// How long the lease lives without renewal.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

async fn holder_of(pool: &PgPool, name: &str) -> Result<Option<HolderRow>, sqlx::Error> {
    let mut conn = Autocommit::acquire(pool).await?;
    let holder = sqlx::query_as(sql::LEASE_HOLDER)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    conn.commit().await?;
    Ok(holder)
}

fn millis(ttl: Duration) -> f64 {
    ttl.as_secs_f64() * 1_000.0
}
