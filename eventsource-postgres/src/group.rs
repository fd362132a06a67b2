//! Group commit: concurrent appends through the pool share one transaction and one round trip.
//!
//! No task runs the groups. Each append queues its request and then waits for either its answer
//! or a free commit lane; whoever takes a lane runs a share of the queue as one statement on the
//! lane's connection and answers each request. The group grows with the load: alone, an append
//! runs by itself at once. A lane takes its connection from the store's kept ones (`kept.rs`:
//! sqlx would otherwise test it with one more round trip each time it goes back to the pool).
//!
//! Lanes open with the backlog. While a group is in flight, another lane starts only when at
//! least half of `max_events` events wait (a backlog of a full group or more is then shared out
//! between the free lanes): a group commit pays one WAL flush for all its appends, so a backlog
//! that fits the next group is best served by it. A second transaction in flight beside the
//! first does not shorten either: its WAL flush queues behind the first one's, and its server
//! process competes with the first for the cores. Measured on 2 cores (ADR 0011): with a
//! second lane opening at a thirty-second of `max_events`, 16 command tasks ran groups of 8
//! in about 1 ms each on both lanes; opening at half, groups of 14 in about the same time on
//! one lane, 8-18% more commands per second. Only large backlogs need the server's other
//! cores.
//!
//! Every guarantee of a single append holds: an answer is sent only after the shared transaction
//! committed; a rejected append (conflict, stored ids) writes nothing and is resolved alone
//! afterwards. When the shared call fails as a whole (an event id already stored, a
//! unique-index race, a lost connection, a leader whose future was dropped) every request of
//! the group is retried alone, which is safe because a retry of an already stored batch is an
//! idempotent no-op.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use eventsource_core::{Appended, ExpectedVersion, StreamId};
use sqlx::postgres::{PgArguments, Postgres};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Notify, Semaphore, oneshot};
use uuid::Uuid;

use crate::kept::Kept;
use crate::pooler::Autocommit;
use crate::row::{GroupEventRow, position_from_db, version_from_db};
use crate::sql;
use crate::store::{Columns, expectation, try_append_lone};

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
    queue: Mutex<Queue>,
    /// One permit per lane: a single fair semaphore. (The first version raced one mutex per
    /// lane through `select_all`; measured under load, one lane then stayed idle for whole
    /// runs while twenty requests were queued, so groups ran one at a time: the bimodal
    /// "cache + group commit" figures of the benchmark.)
    lanes: Semaphore,
    lane_count: usize,
    /// Groups in flight.
    running: AtomicUsize,
    /// Appends in the last group taken: 1 while appends come one at a time.
    last_group: AtomicUsize,
    /// Signalled when a group ends and when the backlog reaches `spill`.
    changed: Notify,
    max_events: usize,
    /// Queued events at which a second group may start while one is in flight.
    spill: usize,
    /// The lanes' connections, kept between groups (shared with the store's other statements).
    kept: Arc<Kept>,
}

#[derive(Debug, Default)]
struct Queue {
    requests: Vec<Request>,
    events: usize,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("stream", &self.stream)
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

/// Counts a group in flight (counted when taken from the queue, under its lock); on drop, also
/// when the leader's future is dropped, the count goes down and waiters look again.
struct InFlight<'a>(&'a GroupCommit);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

impl GroupCommit {
    pub(crate) fn new(lanes: usize, max_events: usize, kept: Arc<Kept>) -> Self {
        let max_events = max_events.max(1);
        Self {
            queue: Mutex::new(Queue::default()),
            lanes: Semaphore::new(lanes.max(1)),
            lane_count: lanes.max(1),
            running: AtomicUsize::new(0),
            last_group: AtomicUsize::new(1),
            changed: Notify::new(),
            max_events,
            spill: (max_events / 2).max(1),
            kept,
        }
    }

    /// Queues an append and drives groups until it is answered: `Some` when written, `None`
    /// when rejected. `Err(())` asks the caller to run the append alone.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while it runs a group drops the answers of that group; their callers
    /// then append alone, which is an idempotent no-op for a group that did commit. Dropping it
    /// while its request is still queued withdraws the request: it is never committed.
    pub(crate) async fn append(
        &self,
        pool: &PgPool,
        stream: &StreamId,
        expected: ExpectedVersion,
        columns: &Arc<Columns>,
    ) -> Result<Option<Appended>, ()> {
        let (reply, mut answer) = oneshot::channel();
        let backlog = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.events += columns.ids.len();
            queue.requests.push(Request {
                stream: stream.clone(),
                expected,
                columns: columns.clone(),
                reply,
            });
            queue.events
        };
        if backlog >= self.spill {
            self.changed.notify_waiters();
        }
        loop {
            // Created before the state is looked at, so no change in between is missed.
            let changed = self.changed.notified();
            tokio::select! {
                biased;
                answered = &mut answer => return answered.map_err(drop),
                lane = self.lanes.acquire() => {
                    // The semaphore is never closed; if it were, appending alone is safe.
                    let Ok(lane) = lane else { return Err(()) };
                    // Under load, let the tasks that are ready to run queue their appends first:
                    // callers just answered by the previous group come back at about the same
                    // moment, and taking the queue before they do would run them as a trickle
                    // of small groups. Appends coming one at a time skip the trip through the
                    // scheduler.
                    if self.last_group.load(Ordering::Relaxed) > 1 {
                        tokio::task::yield_now().await;
                    }
                    let Some((batch, in_flight)) = self.take_batch() else {
                        // Either another lane took this request and will answer it, or a group
                        // is in flight and the backlog is too small for a second one.
                        drop(lane);
                        tokio::select! {
                            biased;
                            answered = &mut answer => return answered.map_err(drop),
                            () = changed => continue,
                        }
                    };
                    let answers = run(pool, &self.kept, &batch).await;
                    let mut own = None;
                    for (request, outcome) in batch.into_iter().zip(answers) {
                        if Arc::ptr_eq(&request.columns, columns) {
                            own = Some((request.reply, outcome));
                        } else if let Some(outcome) = outcome {
                            let _ = request.reply.send(outcome);
                        }
                        // An append without an answer is retried alone by its caller.
                    }
                    drop(in_flight);
                    drop(lane);
                    if let Some((reply, outcome)) = own {
                        // This task's own answer, taken here rather than sent to itself: a
                        // task that wakes itself while it runs is put back in the run queue
                        // and another worker thread is woken for it. The receiver goes first,
                        // so dropping the sender wakes no one either.
                        drop(answer);
                        drop(reply);
                        return outcome.ok_or(());
                    }
                }
            }
        }
    }

    /// Whether an append of `events` events is worth grouping: a larger one already amortises
    /// its commit, and grouping it only lengthens the shared transaction.
    pub(crate) fn takes(&self, events: usize) -> bool {
        events.saturating_mul(4) <= self.max_events
    }

    /// This lane's share of the queue, oldest requests first, one per stream: a later append to
    /// a stream already in the group waits for the next group (it must see the first one's
    /// outcome, and the set-based group statement moves each stream once). `None` when the
    /// queue is empty, or when a group is in flight and fewer than `spill` events wait. The
    /// share is at most `max_events` events (at least one request); a backlog of twice `spill`
    /// or more is shared out between this lane and the free ones. The group is ordered by
    /// stream, so concurrent groups lock streams in one order.
    fn take_batch(&self) -> Option<(Vec<Request>, InFlight<'_>)> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        // A caller that gave up (its future was dropped: a timeout, a cancelled request) may
        // already have retried with other ids; committing its append now could write it twice.
        let before = queue.requests.len();
        queue.requests.retain(|r| !r.reply.is_closed());
        if queue.requests.len() != before {
            queue.events = queue.requests.iter().map(|r| r.columns.ids.len()).sum();
        }
        let busy = self.running.load(Ordering::SeqCst) > 0;
        if queue.requests.is_empty() || (busy && queue.events < self.spill) {
            return None;
        }
        let share = if queue.events >= 2 * self.spill {
            // This lane and the free ones (the free permits, at most the lanes not in flight).
            let lanes = 1 + self
                .lanes
                .available_permits()
                .min(self.lane_count.saturating_sub(1));
            queue.events.div_ceil(lanes)
        } else {
            queue.events
        }
        .min(self.max_events);
        let mut events = 0;
        let mut batch: Vec<Request> = Vec::new();
        let mut i = 0;
        while i < queue.requests.len() {
            let size = queue.requests[i].columns.ids.len();
            if !batch.is_empty() && events + size > share {
                break;
            }
            if batch.iter().any(|r| r.stream == queue.requests[i].stream) {
                i += 1;
                continue;
            }
            events += size;
            batch.push(queue.requests.remove(i));
        }
        queue.events -= events;
        self.running.fetch_add(1, Ordering::SeqCst);
        self.last_group.store(batch.len(), Ordering::Relaxed);
        drop(queue);
        batch.sort_by(|a, b| a.stream.cmp(&b.stream));
        Some((batch, InFlight(self)))
    }
}

/// What a group says of one of its appends: `Some(Some(_))` written, `Some(None)` rejected,
/// `None` unknown (its caller retries it alone).
type Answer = Option<Option<Appended>>;

/// Runs one batch on a lane's connection; returns each request's answer (`Some(None)` when it
/// was rejected), `None` for those to retry alone: every one when the statement failed.
async fn run(pool: &PgPool, kept: &Kept, batch: &[Request]) -> Vec<Answer> {
    let unknown = || vec![None; batch.len()];
    let Ok(mut lent) = kept.take(pool).await else {
        return unknown();
    };
    if let [request] = batch {
        // Alone: the plain append statement, without the group's arrays.
        let outcome = try_append_lone(
            &mut lent.conn,
            &request.stream,
            request.expected,
            &request.columns,
        )
        .await;
        if outcome.is_ok() {
            kept.keep(pool, lent);
        }
        return vec![outcome.ok()];
    }
    let one_tenant = batch
        .iter()
        .all(|r| r.stream.tenant() == batch[0].stream.tenant());
    // One tenant (the usual group): the plain statement. Several: that statement per tenant,
    // in one transaction.
    let outcome = if one_tenant {
        run_one_tenant(&mut lent.conn, batch).await
    } else {
        run_tenants(&mut lent.conn, batch).await
    };
    match outcome {
        // A missing or undecodable answer leaves its append without one: it is retried alone.
        Ok(answers) => {
            kept.keep(pool, lent);
            tracing::trace!(appends = batch.len(), "group committed");
            answers
        }
        Err(e) => {
            tracing::debug!(error = %e, appends = batch.len(), "group commit failed; appending alone");
            unknown()
        }
    }
}

/// A group's appends and events as the parallel arrays the group statements take. Events are
/// borrowed from the requests: no payload is copied.
struct Arrays<'a> {
    tenants: Vec<&'a str>,
    types: Vec<&'a str>,
    ids: Vec<&'a str>,
    kinds: Vec<&'static str>,
    versions: Vec<i64>,
    counts: Vec<i64>,
    event_ids: Vec<Uuid>,
    event_types: Vec<&'a str>,
    schema_versions: Vec<i32>,
    payloads: Vec<&'a serde_json::Value>,
    metadata: Vec<&'a serde_json::Value>,
    correlation_ids: Vec<Option<Uuid>>,
    causation_ids: Vec<Option<Uuid>>,
}

impl<'a> Arrays<'a> {
    fn new(batch: &'a [Request]) -> Self {
        let (appends, events) = (batch.len(), batch.iter().map(|r| r.columns.ids.len()).sum());
        let mut arrays = Self {
            tenants: Vec::with_capacity(appends),
            types: Vec::with_capacity(appends),
            ids: Vec::with_capacity(appends),
            kinds: Vec::with_capacity(appends),
            versions: Vec::with_capacity(appends),
            counts: Vec::with_capacity(appends),
            event_ids: Vec::with_capacity(events),
            event_types: Vec::with_capacity(events),
            schema_versions: Vec::with_capacity(events),
            payloads: Vec::with_capacity(events),
            metadata: Vec::with_capacity(events),
            correlation_ids: Vec::with_capacity(events),
            causation_ids: Vec::with_capacity(events),
        };
        for request in batch {
            let (kind, version) = expectation(request.expected);
            let columns = &request.columns;
            arrays.tenants.push(request.stream.tenant().as_str());
            arrays.types.push(request.stream.aggregate_type());
            arrays.ids.push(request.stream.aggregate_id());
            arrays.kinds.push(kind);
            arrays.versions.push(version);
            arrays.counts.push(count_to_db(columns.ids.len()));
            arrays.event_ids.extend_from_slice(&columns.ids);
            arrays
                .event_types
                .extend(columns.types.iter().map(String::as_str));
            arrays
                .schema_versions
                .extend_from_slice(&columns.schema_versions);
            arrays.payloads.extend(&columns.payloads);
            arrays.metadata.extend(&columns.metadata);
            arrays
                .correlation_ids
                .extend_from_slice(&columns.correlation_ids);
            arrays
                .causation_ids
                .extend_from_slice(&columns.causation_ids);
        }
        arrays
    }
}

/// A group statement's query, its parameters bound so far.
type GroupQuery<'q, O> = sqlx::query::QueryAs<'q, Postgres, O, PgArguments>;

impl Arrays<'_> {
    /// Binds the per-append arrays, after the tenant(s): type, id, expectation, expected
    /// version, event count.
    fn bind_appends<'q, O>(&'q self, query: GroupQuery<'q, O>) -> GroupQuery<'q, O> {
        query
            .bind(&self.types)
            .bind(&self.ids)
            .bind(&self.kinds)
            .bind(&self.versions)
            .bind(&self.counts)
    }

    /// Binds the event columns, the last parameters of both group statements.
    fn bind_events<'q, O>(&'q self, query: GroupQuery<'q, O>) -> GroupQuery<'q, O> {
        query
            .bind(&self.event_ids)
            .bind(&self.event_types)
            .bind(&self.schema_versions)
            .bind(&self.payloads)
            .bind(&self.metadata)
            .bind(&self.correlation_ids)
            .bind(&self.causation_ids)
    }
}

fn count_to_db(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// A group of one tenant's appends (`sql::APPEND_MANY_ONE_TENANT`), as a lone statement: in a
/// transaction of its own behind a transaction pooler.
async fn run_one_tenant(
    conn: &mut PgConnection,
    batch: &[Request],
) -> Result<Vec<Answer>, sqlx::Error> {
    let mut conn = Autocommit::on(conn).await?;
    let answers = one_tenant(&mut conn, batch).await?;
    conn.commit().await?;
    Ok(answers)
}

/// A group of several tenants' appends, in one transaction: each tenant's share (contiguous,
/// the batch being sorted by stream, tenant first) as the one-tenant statement, in turn. So
/// every group, one tenant's or several, and every caller's transaction that appends in stream
/// order lock streams rows in one order: stream order. (`eventsource_append_many`, which ran
/// such groups until ADR 0033, locked `Exact`/`StreamExists` rows before the others and could
/// deadlock with a transaction appending to a new stream, then an existing one.)
async fn run_tenants(
    conn: &mut PgConnection,
    batch: &[Request],
) -> Result<Vec<Answer>, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    let mut answers = Vec::with_capacity(batch.len());
    for share in batch.chunk_by(|a, b| a.stream.tenant() == b.stream.tenant()) {
        answers.extend(one_tenant(&mut tx, share).await?);
    }
    tx.commit().await?;
    Ok(answers)
}

/// One tenant's appends as `sql::APPEND_MANY_ONE_TENANT` on `conn`: the rows of the events
/// written, folded into each append's answer.
async fn one_tenant(
    conn: &mut PgConnection,
    batch: &[Request],
) -> Result<Vec<Answer>, sqlx::Error> {
    let arrays = Arrays::new(batch);
    let total = arrays.event_ids.len();
    // Per event: its stream, and how far it stands below its append's last event.
    let mut stream_types = Vec::with_capacity(total);
    let mut stream_ids = Vec::with_capacity(total);
    let mut below = Vec::with_capacity(total);
    for request in batch {
        let count = request.columns.ids.len();
        stream_types.extend(std::iter::repeat_n(request.stream.aggregate_type(), count));
        stream_ids.extend(std::iter::repeat_n(request.stream.aggregate_id(), count));
        below.extend((0..count_to_db(count)).rev());
    }
    let query =
        arrays.bind_appends(sqlx::query_as(sql::APPEND_MANY_ONE_TENANT).bind(arrays.tenants[0]));
    let query = query.bind(&stream_types).bind(&stream_ids).bind(&below);
    let rows: Vec<GroupEventRow> = arrays.bind_events(query).fetch_all(&mut *conn).await?;
    Ok(fold(batch, &rows))
}

/// Each append's answer from the rows of the events a group wrote: `Some(None)` for an append
/// with no rows (rejected), `None` for one whose rows do not add up (retried alone).
fn fold(batch: &[Request], rows: &[GroupEventRow]) -> Vec<Answer> {
    // Which append each event id belongs to, sorted for lookup.
    let mut owners: Vec<(Uuid, usize)> = batch
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.columns.ids.iter().map(move |id| (*id, i)))
        .collect();
    owners.sort_unstable();
    let mut written: Vec<Written<'_>> = vec![Written::default(); batch.len()];
    for row in rows {
        let Ok(k) = owners.binary_search_by(|(id, _)| id.cmp(&row.event_id)) else {
            continue;
        };
        let append = &mut written[owners[k].1];
        append.events += 1;
        append.first = append.first.min(row.global_position);
        append.last = append.last.max(row.global_position);
        append.version = append.version.max(row.version);
        append.transaction = Some(&row.transaction_id);
    }
    batch
        .iter()
        .zip(written)
        .map(|(request, append)| match append.transaction {
            None => Some(None),
            Some(transaction) if append.events == request.columns.ids.len() => {
                Some(Some(Appended::new(
                    version_from_db(append.version).ok()?,
                    position_from_db(transaction, append.first).ok()?,
                    position_from_db(transaction, append.last).ok()?,
                )))
            }
            Some(_) => None,
        })
        .collect()
}

/// What the rows of a group say of one append: how many of its events were written, their
/// lowest and highest log position, the highest version, the transaction.
#[derive(Clone)]
struct Written<'a> {
    events: usize,
    first: i64,
    last: i64,
    version: i64,
    transaction: Option<&'a str>,
}

impl Default for Written<'_> {
    fn default() -> Self {
        Self {
            events: 0,
            first: i64::MAX,
            last: i64::MIN,
            version: i64::MIN,
            transaction: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventsource_core::{NewEvent, TenantId};

    /// Queues an append of `events` events to `stream` (no lane is driven).
    fn queue(
        group: &GroupCommit,
        stream: &str,
        events: usize,
    ) -> oneshot::Receiver<Option<Appended>> {
        let columns = Columns::new(
            (0..events)
                .map(|_| NewEvent::new("E", 1, serde_json::json!({})))
                .collect(),
        )
        .expect("columns");
        let (reply, answer) = oneshot::channel();
        let mut queue = group.queue.lock().expect("queue");
        queue.events += events;
        queue.requests.push(Request {
            stream: StreamId::new(TenantId::new("t"), "s", stream),
            expected: ExpectedVersion::Any,
            columns: Arc::new(columns),
            reply,
        });
        answer
    }

    fn group(lanes: usize, max_events: usize) -> GroupCommit {
        GroupCommit::new(lanes, max_events, Arc::new(Kept::new(lanes)))
    }

    fn sizes(batch: &[Request]) -> Vec<usize> {
        batch.iter().map(|r| r.columns.ids.len()).collect()
    }

    #[test]
    fn an_idle_lane_takes_the_whole_backlog_up_to_max_events() {
        let group = group(1, 8);
        let _answers: Vec<_> = (0..5).map(|i| queue(&group, &format!("s{i}"), 2)).collect();
        let (batch, _in_flight) = group.take_batch().expect("a group");
        assert_eq!(sizes(&batch), [2, 2, 2, 2], "8 events at most");
        assert_eq!(group.queue.lock().expect("queue").events, 2);
    }

    #[test]
    fn a_second_lane_waits_for_a_backlog_worth_a_group() {
        let group = group(2, 8); // spill at 4 events
        let _a = queue(&group, "a", 1);
        let (_first, in_flight) = group.take_batch().expect("nothing in flight: take it");
        let _b = queue(&group, "b", 1);
        let _c = queue(&group, "c", 1);
        assert!(
            group.take_batch().is_none(),
            "2 events wait while a group is in flight: they join the next round"
        );
        let _d = queue(&group, "d", 2);
        let (second, _second_in_flight) = group.take_batch().expect("4 events: a second group");
        assert_eq!(sizes(&second), [1, 1, 2]);
        drop(in_flight);
        assert_eq!(group.running.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_large_backlog_is_shared_between_the_free_lanes() {
        let group = group(2, 32); // spill at 16 events
        let _answers: Vec<_> = (0..8).map(|i| queue(&group, &format!("s{i}"), 5)).collect();
        // 40 events, this lane and one free lane: 20 each.
        let (batch, _in_flight) = group.take_batch().expect("a group");
        assert_eq!(sizes(&batch), [5, 5, 5, 5]);
    }

    #[test]
    fn a_second_append_to_a_stream_waits_for_the_next_group() {
        let group = group(1, 64);
        let _a = queue(&group, "same", 1);
        let _b = queue(&group, "other", 1);
        let _c = queue(&group, "same", 1);
        let (batch, in_flight) = group.take_batch().expect("a group");
        let streams: Vec<_> = batch.iter().map(|r| r.stream.aggregate_id()).collect();
        assert_eq!(streams, ["other", "same"], "ordered by stream");
        drop(in_flight);
        let (next, _) = group.take_batch().expect("the deferred append");
        assert_eq!(next.len(), 1);
    }

    #[test]
    fn withdrawn_requests_are_never_taken() {
        let group = group(1, 64);
        drop(queue(&group, "gone", 3));
        let _kept = queue(&group, "kept", 1);
        let (batch, _in_flight) = group.take_batch().expect("a group");
        assert_eq!(sizes(&batch), [1]);
        assert_eq!(group.queue.lock().expect("queue").events, 0);
    }
}
