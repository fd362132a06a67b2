//! [`PgRebuild::rebuild_tenant`]: one tenant's rows of a read model of all tenants, rebuilt
//! while the other tenants' rows serve on (ADR 0020).

use std::future::Future;
use std::time::Instant;

use eventsource_core::{EventStore, LogFilter, LogPosition, RecordedEvent, TenantId};
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use super::naming::{prefix_of, staging_schema};
use super::{PgRebuild, PgRebuildable, RebuildReport, enter_path, restore_path};
use crate::checkpoint::PgCheckpointStore;
use crate::pooler::Autocommit;
use crate::projection::error::PgProjectionError;
use crate::projection::lease::PgLease;
use crate::sql;
use crate::tenant::begin_tenant;

/// A [`PgRebuildable`] projection over every tenant whose rows each belong to one tenant, so
/// that one tenant's rows can be rebuilt alone ([`PgRebuild::rebuild_tenant`]).
pub trait PgTenantRebuildable: PgRebuildable {
    /// Deletes every row of `tenant` from the projection's tables, named unqualified (the
    /// transaction's `search_path` is the serving generation's schema).
    fn delete_tenant(
        &self,
        conn: &mut PgConnection,
        tenant: &TenantId,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// Where the staging tables stand.
struct Staging {
    schema: String,
    position: Option<LogPosition>,
    applied: u64,
}

impl<P: PgTenantRebuildable> PgRebuild<P> {
    /// Rebuilds `tenant`'s rows of the serving generation from the log while the other
    /// tenants' rows serve on, untouched, and the live runner keeps applying the log.
    ///
    /// Under the rebuild lease (no full rebuild runs meanwhile), it builds the tenant's rows
    /// into staging tables of their own schema (`<prefix>_tenant_<hash of the name>`: never
    /// another projection's, even under the same prefix) from the tenant's events up to the
    /// live checkpoint, in batches, without holding anything the live runner needs.
    /// Then one transaction locks the serving generation (the live runner's next batch waits
    /// for it), applies the tenant's events up to the live checkpoint it finds there, deletes
    /// the tenant's rows from the serving generation
    /// ([`delete_tenant`](PgTenantRebuildable::delete_tenant)), copies the staged rows in and
    /// commits: readers see the tenant's old rows until then, the rebuilt ones after, and the
    /// live runner goes on after the checkpoint it left, which the rows now match. The staging
    /// schema is dropped at the end (and at the start, when a stopped run left it).
    ///
    /// Of the options, the batch size, the lease's time to live, the instance id and the schema
    /// prefix apply; the tenant takes the place of the filter, and the rows hold all of its
    /// events (no start, no date).
    ///
    /// Returns `None` when `shutdown` was cancelled first (nothing changed for readers). The
    /// report's `cutover_position` is the live checkpoint the rows were rebuilt up to.
    ///
    /// # Errors
    ///
    /// [`PgProjectionError::NotServing`] when the projection has no serving generation;
    /// [`PgProjectionError::LeaseHeld`] when a rebuild of the projection runs;
    /// [`PgProjectionError::Apply`] when the projection fails on an event (nothing changed
    /// for readers); otherwise a database or log error.
    ///
    /// # Cancel safety
    ///
    /// As [`run`](Self::run): nothing reaches the serving generation but in the last
    /// transaction.
    pub async fn rebuild_tenant(
        self,
        tenant: &TenantId,
        shutdown: CancellationToken,
    ) -> Result<Option<RebuildReport>, PgProjectionError<P::Error>> {
        let lease = self.take_lease().await?;
        let outcome = self.rebuild_tenant_leased(&lease, tenant, &shutdown).await;
        self.let_go(lease, &outcome).await;
        outcome
    }

    async fn rebuild_tenant_leased(
        &self,
        lease: &PgLease,
        tenant: &TenantId,
        shutdown: &CancellationToken,
    ) -> Result<Option<RebuildReport>, PgProjectionError<P::Error>> {
        let started = Instant::now();
        let name = self.projection.name();
        let prefix = prefix_of(name, self.options.schema_prefix.as_deref());
        let mut conn = Autocommit::acquire(&self.pool).await?;
        let serving: Option<i64> = sqlx::query_scalar(sql::SERVING_GENERATION)
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
        conn.commit().await?;
        if serving.is_none() {
            return Err(PgProjectionError::NotServing {
                projection: name.to_owned(),
            });
        }
        let mut staging = Staging {
            schema: staging_schema(&prefix, name),
            position: None,
            applied: 0,
        };
        self.drop_staging(&staging).await?;
        let mut tx = self.pool.begin().await?;
        sqlx::query(sql::CREATE_GENERATION_SCHEMA)
            .bind(&staging.schema)
            .execute(&mut *tx)
            .await?;
        let outer_path = enter_path(&mut tx, &staging.schema).await?;
        self.projection.create_tables(&mut tx).await?;
        restore_path(&mut tx, &outer_path).await?;
        tx.commit().await?;
        tracing::info!(projection = name, %tenant, staging = %staging.schema, "rebuilding a tenant");
        // Fill up to the live checkpoint of the moment: the live runner applies what follows
        // it to the serving generation, so the staged rows must not hold it.
        loop {
            if shutdown.is_cancelled() {
                self.drop_staging(&staging).await?;
                return Ok(None);
            }
            let live = self.live_checkpoint().await?;
            let batch = self.tenant_events(tenant, staging.position, live).await?;
            let full = batch.len() == self.options.batch_size;
            if !batch.is_empty() {
                let mut tx = begin_tenant(&self.pool, tenant).await?;
                self.stage(&mut tx, &mut staging, &batch).await?;
                lease
                    .renew_in_tx(&mut tx)
                    .await
                    .map_err(PgProjectionError::from_lease)?;
                tx.commit().await?;
            }
            if !full {
                break;
            }
        }
        let outcome = self.swap_tenant(lease, tenant, &mut staging).await;
        self.drop_staging(&staging).await?;
        let (generation, live) = outcome?;
        tracing::info!(projection = name, %tenant, generation, position = ?live,
            events = staging.applied, "tenant rebuilt");
        Ok(Some(RebuildReport {
            generation,
            cutover_position: live,
            processed: staging.applied,
            elapsed: started.elapsed(),
        }))
    }

    /// The swap, in one transaction: catches the staged rows up to the live checkpoint and
    /// replaces the tenant's rows of the serving generation with them.
    async fn swap_tenant(
        &self,
        lease: &PgLease,
        tenant: &TenantId,
        staging: &mut Staging,
    ) -> Result<(u64, Option<LogPosition>), PgProjectionError<P::Error>> {
        let name = self.projection.name();
        let mut tx = begin_tenant(&self.pool, tenant).await?;
        let serving: Option<(i64, String)> = sqlx::query_as(sql::LOCK_SERVING_GENERATION)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((generation, schema)) = serving else {
            return Err(PgProjectionError::NotServing {
                projection: name.to_owned(),
            });
        };
        // Fixed while this transaction holds the generation row: no live batch commits.
        let live = PgCheckpointStore::load_in_tx(&mut tx, name)
            .await
            .map_err(PgProjectionError::Store)?;
        loop {
            let batch = self.tenant_events(tenant, staging.position, live).await?;
            self.stage(&mut tx, staging, &batch).await?;
            if batch.len() < self.options.batch_size {
                break;
            }
        }
        let outer_path = enter_path(&mut tx, &schema).await?;
        self.projection.delete_tenant(&mut tx, tenant).await?;
        restore_path(&mut tx, &outer_path).await?;
        sqlx::query(sql::COPY_GENERATION_ROWS)
            .bind(&staging.schema)
            .bind(&schema)
            .bind(self.projection.tables())
            .execute(&mut *tx)
            .await?;
        lease
            .renew_in_tx(&mut tx)
            .await
            .map_err(PgProjectionError::from_lease)?;
        tx.commit().await?;
        Ok((u64::try_from(generation).unwrap_or(0), live))
    }

    /// Applies `events` to the staging tables in `tx`.
    async fn stage(
        &self,
        tx: &mut PgConnection,
        staging: &mut Staging,
        events: &[RecordedEvent],
    ) -> Result<(), PgProjectionError<P::Error>> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        let outer_path = enter_path(tx, &staging.schema).await?;
        for event in events {
            if let Err(source) = self.projection.apply(tx, event).await {
                let error = PgProjectionError::apply(self.projection.name(), event, source);
                tracing::error!(error = %error, "tenant rebuild halted");
                return Err(error);
            }
        }
        restore_path(tx, &outer_path).await?;
        staging.position = Some(last.position);
        staging.applied += events.len() as u64;
        Ok(())
    }

    /// The live checkpoint.
    async fn live_checkpoint(&self) -> Result<Option<LogPosition>, PgProjectionError<P::Error>> {
        let mut conn = Autocommit::acquire(&self.pool).await?;
        let checkpoint = PgCheckpointStore::load_in_tx(&mut conn, self.projection.name())
            .await
            .map_err(PgProjectionError::Store)?;
        conn.commit().await?;
        Ok(checkpoint)
    }

    /// The tenant's events after `after`, up to `upto` (none when `upto` is `None`: the live
    /// runner has applied nothing), a batch at most.
    async fn tenant_events(
        &self,
        tenant: &TenantId,
        after: Option<LogPosition>,
        upto: Option<LogPosition>,
    ) -> Result<Vec<RecordedEvent>, PgProjectionError<P::Error>> {
        let Some(upto) = upto else {
            return Ok(Vec::new());
        };
        let mut batch = self
            .store
            .read_all(
                after.unwrap_or(LogPosition::START),
                self.options.batch_size,
                &LogFilter::tenant(tenant.clone()),
            )
            .await
            .map_err(PgProjectionError::Store)?;
        batch.retain(|e| e.position <= upto);
        Ok(batch)
    }

    async fn drop_staging(&self, staging: &Staging) -> Result<(), sqlx::Error> {
        let mut conn = Autocommit::acquire(&self.pool).await?;
        sqlx::query(sql::DROP_GENERATION_SCHEMA)
            .bind(&staging.schema)
            .execute(&mut *conn)
            .await?;
        conn.commit().await
    }
}
