//! The parallel fill of a rebuild ([`RebuildOptions::with_workers`](super::RebuildOptions::with_workers)):
//! shards by stream, each with its checkpoint, brought to one position and then handed to the
//! ordinary fill and cutover.

use std::sync::atomic::{AtomicU64, Ordering};

use eventsource_core::{LogPosition, RecordedEvent, StoreError};
use tokio_util::sync::CancellationToken;

use super::{
    Building, Meter, PgRebuild, PgRebuildable, RebuildPhase, enter_path, restore_path,
    save_checkpoint,
};
use crate::checkpoint::PgCheckpointStore;
use crate::pooler::{Autocommit, again_if_unprepared};
use crate::projection::error::PgProjectionError;
use crate::projection::lease::PgLease;
use crate::row::{EventRow, position_to_db};
use crate::sql;
use crate::tenant::begin_tenant;

/// What the shards share: the generation they fill, and the progress made.
struct Fill<'a> {
    schema: &'a str,
    generation: u64,
    meter: &'a Meter,
    applied: AtomicU64,
}

/// One shard: the streams with `stream_key % of = index`.
struct Shard {
    index: u32,
    of: u32,
    checkpoint_name: String,
    checkpoint: Option<LogPosition>,
}

impl<P: PgRebuildable> PgRebuild<P> {
    /// Fills `building` with the shards of a parallel fill, when it has not begun filling
    /// otherwise: resumes the shards an earlier run left (with their number of workers), or
    /// starts [`workers`](super::RebuildOptions::with_workers) shards when there is more than
    /// one. Every shard first runs to the head; then each applies its events up to the
    /// furthest of them, `P`, and one transaction moves the generation's checkpoint to `P` and
    /// forgets the shards' checkpoints: from there the ordinary fill goes on. Returns the
    /// events applied, `None` when `shutdown` was cancelled (the shards keep their
    /// checkpoints).
    pub(super) async fn fill_parallel(
        &self,
        lease: &PgLease,
        building: &mut Building,
        meter: &Meter,
        shutdown: &CancellationToken,
    ) -> Result<Option<u64>, PgProjectionError<P::Error>> {
        if building.checkpoint.is_some() {
            return Ok(Some(0));
        }
        let prefix = format!("{}/shard-", building.checkpoint_name);
        let mut conn = Autocommit::acquire(&self.pool).await?;
        let names: Vec<String> = sqlx::query_scalar(sql::CHECKPOINTS_STARTING_WITH)
            .bind(&prefix)
            .fetch_all(&mut *conn)
            .await?;
        conn.commit().await?;
        // `<generation checkpoint>/shard-<k>-of-<n>`: a resumed fill keeps its shards.
        let of = names
            .iter()
            .find_map(|n| n.rsplit_once("-of-").and_then(|(_, of)| of.parse().ok()))
            .unwrap_or(self.options.workers);
        if of <= 1 {
            return Ok(Some(0));
        }
        let mut shards = Vec::new();
        for index in 0..of {
            let checkpoint_name = format!("{prefix}{index}-of-{of}");
            let mut conn = Autocommit::acquire(&self.pool).await?;
            let checkpoint = PgCheckpointStore::load_in_tx(&mut conn, &checkpoint_name)
                .await
                .map_err(PgProjectionError::Store)?;
            conn.commit().await?;
            shards.push(Shard {
                index,
                of,
                checkpoint_name,
                checkpoint,
            });
        }
        tracing::info!(
            projection = self.projection.name(),
            workers = of,
            "parallel fill"
        );
        let fill = Fill {
            schema: &building.schema,
            generation: u64::try_from(building.generation).unwrap_or(0),
            meter,
            applied: AtomicU64::new(0),
        };
        // To the head, each shard on its own; then all to the furthest shard's position.
        if !self
            .run_shards(lease, &fill, &mut shards, None, shutdown)
            .await?
        {
            return Ok(None);
        }
        let Some(to) = shards.iter().filter_map(|s| s.checkpoint).max() else {
            return Ok(Some(fill.applied.into_inner()));
        };
        if !self
            .run_shards(lease, &fill, &mut shards, Some(to), shutdown)
            .await?
        {
            return Ok(None);
        }
        let applied = fill.applied.into_inner();
        let mut tx = self.pool.begin().await?;
        lease
            .renew_in_tx(&mut tx)
            .await
            .map_err(PgProjectionError::from_lease)?;
        save_checkpoint(&mut tx, &building.checkpoint_name, None, to).await?;
        for shard in &shards {
            sqlx::query(sql::DELETE_CHECKPOINT)
                .bind(&shard.checkpoint_name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        building.checkpoint = Some(to);
        Ok(Some(applied))
    }

    /// Runs every shard at once until it reaches the head (`upto` `None`) or `upto`; false
    /// when cancelled.
    async fn run_shards(
        &self,
        lease: &PgLease,
        fill: &Fill<'_>,
        shards: &mut [Shard],
        upto: Option<LogPosition>,
        shutdown: &CancellationToken,
    ) -> Result<bool, PgProjectionError<P::Error>> {
        let runs = shards
            .iter_mut()
            .map(|shard| self.run_shard(lease, fill, shard, upto, shutdown));
        futures::future::try_join_all(runs).await?;
        Ok(!shutdown.is_cancelled())
    }

    /// One shard's fill: batches of its streams' events in log order, each one transaction
    /// with the shard's checkpoint moved by compare-and-set and the lease renewed. With
    /// `upto`, stops there and leaves its checkpoint exactly on it.
    async fn run_shard(
        &self,
        lease: &PgLease,
        fill: &Fill<'_>,
        shard: &mut Shard,
        upto: Option<LogPosition>,
        shutdown: &CancellationToken,
    ) -> Result<(), PgProjectionError<P::Error>> {
        while !shutdown.is_cancelled() {
            let mut batch = self.read_shard(shard).await?;
            let mut done = batch.len() < self.options.batch_size;
            let mut to = batch.last().map(|e| e.position);
            if let Some(upto) = upto {
                let before = batch.len();
                batch.retain(|e| e.position <= upto);
                if batch.len() < before || done {
                    done = true;
                    to = Some(upto);
                }
            }
            if let Some(to) = to.filter(|to| Some(*to) != shard.checkpoint) {
                let mut tx = match &self.options.filter.tenant {
                    Some(tenant) => begin_tenant(&self.pool, tenant).await?,
                    None => self.pool.begin().await?,
                };
                let outer_path = enter_path(&mut tx, fill.schema).await?;
                for event in &batch {
                    if let Err(source) = self.projection.apply(&mut tx, event).await {
                        let error = PgProjectionError::apply(self.projection.name(), event, source);
                        tracing::error!(error = %error, shard = shard.index, "rebuild halted");
                        return Err(error);
                    }
                }
                restore_path(&mut tx, &outer_path).await?;
                lease
                    .renew_in_tx(&mut tx)
                    .await
                    .map_err(PgProjectionError::from_lease)?;
                save_checkpoint(&mut tx, &shard.checkpoint_name, shard.checkpoint, to).await?;
                tx.commit().await?;
                shard.checkpoint = Some(to);
                let n = batch.len() as u64;
                let mut meter = *fill.meter;
                meter.processed += fill.applied.fetch_add(n, Ordering::Relaxed) + n;
                self.report(fill.generation, RebuildPhase::Filling, &meter);
            }
            if done {
                break;
            }
        }
        Ok(())
    }

    /// The shard's next batch of the log, through the rebuild's filter.
    async fn read_shard(
        &self,
        shard: &Shard,
    ) -> Result<Vec<RecordedEvent>, PgProjectionError<P::Error>> {
        // Rows carry an `xid8`: read again once if its type lookup dropped the statement.
        let rows = again_if_unprepared!(self.read_shard_rows(shard).await)?;
        rows.into_iter()
            .map(RecordedEvent::try_from)
            .collect::<Result<_, StoreError>>()
            .map_err(PgProjectionError::Store)
    }

    /// One attempt at [`read_shard`](Self::read_shard)'s rows, in a transaction of its own.
    async fn read_shard_rows(&self, shard: &Shard) -> Result<Vec<EventRow>, sqlx::Error> {
        let (transaction, position) =
            position_to_db(shard.checkpoint.unwrap_or(self.options.start));
        let filter = &self.options.filter;
        let query = sqlx::query_as::<_, EventRow>(sql::READ_SHARD)
            .bind(transaction)
            .bind(position)
            .bind(filter.since)
            .bind(i64::try_from(self.options.batch_size).unwrap_or(i64::MAX))
            .bind(
                filter
                    .tenant
                    .as_ref()
                    .map(eventsource_core::TenantId::as_str),
            )
            .bind(i64::from(shard.of))
            .bind(i64::from(shard.index));
        let mut conn = if let Some(tenant) = &filter.tenant {
            Autocommit::Wrapped(begin_tenant(self.store.pool(), tenant).await?)
        } else {
            Autocommit::acquire(self.store.pool()).await?
        };
        let rows = query.fetch_all(&mut *conn).await?;
        conn.commit().await?;
        Ok(rows)
    }
}
