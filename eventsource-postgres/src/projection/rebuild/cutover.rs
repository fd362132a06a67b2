//! The cutover of a [`PgRebuild`]: one transaction that catches the new generation up past
//! the live checkpoint, moves it, and points the readers' views at the new generation.

use super::{Building, PgRebuild, PgRebuildable, enter_path, restore_path, save_checkpoint};
use crate::checkpoint::PgCheckpointStore;
use crate::projection::error::PgProjectionError;
use crate::projection::lease::PgLease;
use crate::row::position_to_db;
use crate::sql;

impl<P: PgRebuildable> PgRebuild<P> {
    /// The cutover, in one transaction; returns how many events it applied. Applies batches
    /// with [`PgProjection::apply_batch`](crate::PgProjection::apply_batch), or `one_by_one`
    /// after a batch failed.
    pub(super) async fn cut_over(
        &self,
        lease: &PgLease,
        building: &mut Building,
        one_by_one: bool,
    ) -> Result<u64, PgProjectionError<P::Error>> {
        let name = self.projection.name();
        let mut tx = self.begin().await?;
        // Waits for a live batch in flight; the live runner's next batch waits for this.
        let rows: Vec<(i64, String)> = sqlx::query_as(sql::LOCK_GENERATIONS)
            .bind(name)
            .fetch_all(&mut *tx)
            .await?;
        if !rows
            .iter()
            .any(|(g, state)| *g == building.generation && state == "building")
        {
            // Not ours to cut over any more (discarded by hand): the lease is the only other
            // writer, so treat it as lost.
            return Err(PgProjectionError::LeaseLost {
                projection: lease.name().to_owned(),
                holder: None,
            });
        }
        let live = PgCheckpointStore::load_in_tx(&mut tx, name)
            .await
            .map_err(PgProjectionError::Store)?;
        // The rest of the log: events up to the live checkpoint are visible (the live runner
        // read them), so reading until a short batch passes it.
        let mut position = building.checkpoint;
        let mut applied = 0u64;
        let outer_path = enter_path(&mut tx, &building.schema).await?;
        loop {
            let batch = self.read_after(position).await?;
            if !one_by_one && let Err(e) = self.projection.apply_batch(&mut tx, &batch).await {
                let _ = tx.rollback().await;
                tracing::debug!(projection = name, error = %e,
                    "cutover batch failed; catching up event by event, then cutting over again");
                // Ordinary batches stop at a failing event and name it, or pass it.
                while self.step(lease, building).await? > 0 {}
                return Box::pin(self.cut_over(lease, building, true)).await;
            }
            for event in batch.iter().filter(|_| one_by_one) {
                if let Err(source) = self.projection.apply(&mut tx, event).await {
                    let _ = tx.rollback().await;
                    // Commit what came before it in ordinary batches: they stop at it and
                    // name it (this loop ends there, or at the head if it passes this time).
                    while self.step(lease, building).await? > 0 {}
                    let error = PgProjectionError::apply(name, event, source);
                    tracing::error!(error = %error, "rebuild halted in its cutover");
                    return Err(error);
                }
            }
            applied += batch.len() as u64;
            if let Some(last) = batch.last() {
                position = Some(last.position);
            }
            if batch.len() < self.options.batch_size {
                break;
            }
        }
        restore_path(&mut tx, &outer_path).await?;
        // Never backwards: the live runner would apply again what it applied after `position`.
        // Every event it read was visible to the reads above, so this happens only when the
        // rebuild reads another part of the log than the live runner (another filter, a start
        // after its checkpoint).
        if live > position {
            let _ = tx.rollback().await;
            return Err(PgProjectionError::CutoverBehind {
                projection: name.to_owned(),
                live,
                cutover: position,
            });
        }
        if let Some(to) = position {
            self.fence(lease, &mut tx, building, to).await?;
            save_checkpoint(&mut tx, name, live, to).await?;
        } else {
            lease
                .renew_in_tx(&mut tx)
                .await
                .map_err(PgProjectionError::from_lease)?;
        }
        sqlx::query(sql::RETIRE_GENERATION)
            .bind(name)
            .bind(self.options.grace_period.as_secs_f64() * 1_000.0)
            .execute(&mut *tx)
            .await?;
        let (transaction, global) = position.map(position_to_db).unzip();
        sqlx::query(sql::SERVE_GENERATION)
            .bind(name)
            .bind(building.generation)
            .bind(transaction)
            .bind(global)
            .execute(&mut *tx)
            .await?;
        // Readers in flight on the views delay this, and new ones queue behind it: bounded.
        sqlx::query(sql::SET_LOCK_TIMEOUT)
            .bind(format!(
                "{}ms",
                self.options.cutover_lock_timeout.as_millis()
            ))
            .execute(&mut *tx)
            .await?;
        sqlx::query(sql::POINT_GENERATION_VIEWS)
            .bind(&self.options.reader_schema)
            .bind(&building.schema)
            .bind(self.projection.tables())
            .execute(&mut *tx)
            .await?;
        sqlx::query(sql::DELETE_CHECKPOINT)
            .bind(&building.checkpoint_name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        building.checkpoint = position;
        Ok(applied)
    }
}
