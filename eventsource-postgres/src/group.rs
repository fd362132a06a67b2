//! Group commit: concurrent appends through the pool share one transaction and one round trip.
//!
//! No task is spawned. Each append queues its request and then waits for either its answer or a
//! free commit lane; whoever takes a lane runs everything queued at that moment as one call of
//! `eventsource_append_group` and answers each request. The batch grows with the load: alone,
//! an append runs by itself at once.
//!
//! Every guarantee of a single append holds: an answer is sent only after the shared transaction
//! committed; a rejected append (conflict, stored ids) writes nothing and is resolved alone
//! afterwards. When the shared call fails as a whole (a unique-index race, a lost connection, a
//! leader whose future was dropped) every request of the batch is retried alone, which is safe
//! because a retry of an already stored batch is an idempotent no-op.

use std::sync::{Arc, Mutex, PoisonError};

use eventsource_core::{Appended, ExpectedVersion, StreamId};
use futures::FutureExt as _;
use sqlx::PgPool;
use tokio::sync::oneshot;

use crate::row::{GroupRow, position_from_db, version_from_db};
use crate::sql;
use crate::store::{Columns, expectation, try_append};

/// A queued append. The reply is `Some` when written, `None` when rejected; a dropped sender
/// means "retry alone".
pub(crate) struct Request {
    pub(crate) stream: StreamId,
    pub(crate) expected: ExpectedVersion,
    pub(crate) columns: Arc<Columns>,
    pub(crate) reply: oneshot::Sender<Option<Appended>>,
}

/// The queue and the commit lanes.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    queue: Mutex<Vec<Request>>,
    lanes: Vec<tokio::sync::Mutex<()>>,
    max_events: usize,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("stream", &self.stream)
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl GroupCommit {
    pub(crate) fn new(lanes: usize, max_events: usize) -> Self {
        Self {
            queue: Mutex::new(Vec::new()),
            lanes: (0..lanes.max(1))
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            max_events: max_events.max(1),
        }
    }

    /// Queues an append and drives batches until it is answered: `Some` when written, `None`
    /// when rejected. `Err(())` asks the caller to run the append alone.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while it runs a batch drops the answers of that batch; their callers
    /// then append alone, which is an idempotent no-op for a batch that did commit. Dropping it
    /// while its request is still queued withdraws the request: it is never committed.
    pub(crate) async fn append(
        &self,
        pool: &PgPool,
        stream: &StreamId,
        expected: ExpectedVersion,
        columns: &Arc<Columns>,
    ) -> Result<Option<Appended>, ()> {
        let (reply, mut answer) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Request {
                stream: stream.clone(),
                expected,
                columns: columns.clone(),
                reply,
            });
        loop {
            let lane = futures::future::select_all(self.lanes.iter().map(|l| l.lock().boxed()));
            tokio::select! {
                biased;
                answered = &mut answer => return answered.map_err(drop),
                (guard, _, _) = lane => {
                    let batch = self.take_batch();
                    if batch.is_empty() {
                        // Another lane took this request and will answer it.
                        drop(guard);
                        return answer.await.map_err(drop);
                    }
                    run(pool, batch).await;
                    drop(guard);
                }
            }
        }
    }

    /// Whether an append of `events` events is worth grouping: a larger one already amortises
    /// its commit, and grouping it only lengthens the shared transaction.
    pub(crate) fn takes(&self, events: usize) -> bool {
        events.saturating_mul(4) <= self.max_events
    }

    /// The oldest queued requests, as many as fit in `max_events` events (at least one), one per
    /// stream: a later append to a stream already in the batch waits for the next batch (it
    /// must see the first one's outcome, and the set-based group statement moves each stream
    /// once). The batch is ordered by stream, so concurrent batches lock streams in one order.
    fn take_batch(&self) -> Vec<Request> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        // A caller that gave up (its future was dropped: a timeout, a cancelled request) may
        // already have retried with other ids; committing its append now could write it twice.
        queue.retain(|r| !r.reply.is_closed());
        let mut events = 0;
        let mut batch: Vec<Request> = Vec::new();
        let mut i = 0;
        while i < queue.len() {
            let size = queue[i].columns.ids.len();
            if !batch.is_empty() && events + size > self.max_events {
                break;
            }
            if batch.iter().any(|r| r.stream == queue[i].stream) {
                i += 1;
                continue;
            }
            events += size;
            batch.push(queue.remove(i));
        }
        drop(queue);
        batch.sort_by(|a, b| a.stream.cmp(&b.stream));
        batch
    }
}

/// Runs one batch and answers each request; on failure, drops every reply (retry alone).
async fn run(pool: &PgPool, mut batch: Vec<Request>) {
    if batch.len() == 1 {
        // Alone: the plain append statement, without the group's arrays.
        let request = batch.pop().expect("one request");
        let outcome = try_append(
            pool,
            &request.stream,
            request.expected,
            &request.columns,
            true,
        )
        .await;
        if let Ok(answer) = outcome {
            let _ = request.reply.send(answer);
        }
        return;
    }
    let mut tenants = Vec::with_capacity(batch.len());
    let mut types = Vec::with_capacity(batch.len());
    let mut ids = Vec::with_capacity(batch.len());
    let mut kinds = Vec::with_capacity(batch.len());
    let mut versions = Vec::with_capacity(batch.len());
    let mut counts = Vec::with_capacity(batch.len());
    let mut events = Columns::default();
    for request in &batch {
        let (kind, version) = expectation(request.expected);
        tenants.push(request.stream.tenant().as_str());
        types.push(request.stream.aggregate_type());
        ids.push(request.stream.aggregate_id());
        kinds.push(kind);
        versions.push(version);
        counts.push(i32::try_from(request.columns.ids.len()).unwrap_or(i32::MAX));
        events.extend_from(&request.columns);
    }
    let size = batch.len();
    let rows: Result<Vec<GroupRow>, sqlx::Error> = sqlx::query_as(sql::APPEND_GROUP)
        .bind(&tenants)
        .bind(&types)
        .bind(&ids)
        .bind(&kinds)
        .bind(&versions)
        .bind(&counts)
        .bind(&events.ids)
        .bind(&events.types)
        .bind(&events.schema_versions)
        .bind(&events.payloads)
        .bind(&events.metadata)
        .bind(&events.correlation_ids)
        .bind(&events.causation_ids)
        .fetch_all(pool)
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            tracing::debug!(error = %e, appends = size, "group commit failed; appending alone");
            return;
        }
    };
    tracing::trace!(appends = size, "group committed");
    let mut answers: Vec<Option<Option<Appended>>> = vec![None; size];
    for row in rows {
        let slot = usize::try_from(row.n)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| answers.get_mut(i));
        if let (Some(slot), Ok(answer)) = (slot, appended(&row)) {
            *slot = Some(answer);
        }
    }
    for (request, answer) in batch.into_iter().zip(answers) {
        // A missing or undecodable row leaves the reply dropped: that append is retried alone.
        if let Some(answer) = answer {
            let _ = request.reply.send(answer);
        }
    }
}

/// The answer a row carries: `Ok(None)` for a rejected append, `Err` for an undecodable row.
fn appended(row: &GroupRow) -> Result<Option<Appended>, eventsource_core::StoreError> {
    let (Some(version), Some(transaction), Some(first), Some(last)) = (
        row.version,
        row.transaction_id.as_deref(),
        row.first_position,
        row.last_position,
    ) else {
        return Ok(None);
    };
    Ok(Some(Appended::new(
        version_from_db(version)?,
        position_from_db(transaction, first)?,
        position_from_db(transaction, last)?,
    )))
}
