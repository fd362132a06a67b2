//! Reading entries (own pending, reclaimed, new), sorting them into lanes, acknowledging.

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use eventsource_core::{EventHandler, RecordedEvent};
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};
use redis::{AsyncCommands as _, Value};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{ConsumerRunner, Decoder};
use crate::connection::RedisConnection;
use crate::error::RunnerError;

/// An entry as delivered, with what it holds.
pub(super) struct Delivery {
    /// Its key's index in the runner's read keys.
    pub(super) key: usize,
    pub(super) id: String,
    /// Its fields as read; empty for an entry Redis deleted while it was pending.
    pub(super) fields: HashMap<String, Value>,
    pub(super) content: Content,
    /// `false` for ids `XAUTOCLAIM` reported deleted: Redis already dropped them from the
    /// pending list, so they cannot be delivered again.
    pub(super) in_pending: bool,
}

/// What a delivered entry holds, as far as the runner could tell.
#[allow(
    clippy::large_enum_variant,
    reason = "the event is the common case; boxing it would allocate once more per entry"
)]
pub(super) enum Content {
    /// Its event, decoded (or refetched from the event store).
    Event(RecordedEvent),
    /// Nothing yet: Redis deleted the entry while it was pending; the runner looks it up in
    /// the event store before it handles the batch.
    Deleted,
    /// Nothing usable, for this reason (malformed fields, deleted and not found): it goes to
    /// the dead-letter stream.
    Unusable(String),
    /// Deleted, and looking it up in the event store failed for now: it stays pending and is
    /// looked up again on its next delivery.
    RetryLater,
}

impl<H: EventHandler> ConsumerRunner<H> {
    /// One read of the read keys `keys` (own pending, reclaim, or new entries) and its
    /// processing; returns the numbers of entries handled and of entries given up on.
    ///
    /// `keys` lie in one hash slot (or on a single node), so each read is one `XREADGROUP`.
    /// With a `blocking` connection the read of new entries blocks on it (up to the block
    /// timeout); without, it returns at once.
    pub(super) async fn step(
        &self,
        keys: &[usize],
        shutdown: &CancellationToken,
        pending: &mut Option<Vec<String>>,
        last_reclaim: &mut Option<Instant>,
        blocking: Option<&mut RedisConnection>,
    ) -> Result<(u32, u32), RunnerError> {
        let batch = self.options.batch_size;
        let names: Vec<&str> = keys.iter().map(|&k| self.read_keys[k].as_str()).collect();
        let decode = self.decode;
        if let Some(cursors) = pending {
            let options = StreamReadOptions::default()
                .group(&self.group, &self.consumer)
                .count(batch);
            let reply: Option<StreamReadReply> = self
                .conn
                .clone()
                .xread_options(&names, cursors, &options)
                .await?;
            let mut deliveries = Vec::new();
            for stream in reply.map(|r| r.keys).unwrap_or_default() {
                let Some(at) = names.iter().position(|k| *k == stream.key) else {
                    continue;
                };
                if let Some(last) = stream.ids.last() {
                    cursors[at].clone_from(&last.id);
                }
                let idx = keys[at];
                deliveries.extend(
                    stream
                        .ids
                        .into_iter()
                        .map(|e| Self::delivery(decode, idx, e, true)),
                );
            }
            if deliveries.is_empty() {
                *pending = None;
                return Ok((0, 0));
            }
            return self.process(deliveries, shutdown).await;
        }
        let reclaim_every = self.options.idle_reclaim / 2;
        if last_reclaim.is_none_or(|at| at.elapsed() >= reclaim_every) {
            *last_reclaim = Some(Instant::now());
            return self.reclaim(keys, shutdown).await;
        }
        let until_reclaim = last_reclaim.map_or(Duration::ZERO, |at| {
            reclaim_every.saturating_sub(at.elapsed())
        });
        let block = self
            .options
            .block_timeout
            .min(until_reclaim)
            .max(Duration::from_millis(1));
        let mut options = StreamReadOptions::default()
            .group(&self.group, &self.consumer)
            .count(batch);
        let ids = vec![">"; names.len()];
        let mut shared = self.conn.clone();
        let conn = match blocking {
            Some(conn) => {
                options = options.block(usize::try_from(block.as_millis()).unwrap_or(usize::MAX));
                conn
            }
            // A polled loop (past the cap of blocking connections): a read that returns at
            // once, through the shared connection; the loop waits between empty reads.
            None => &mut shared,
        };
        let reply: Option<StreamReadReply> = tokio::select! {
            () = shutdown.cancelled() => return Ok((0, 0)),
            reply = conn.xread_options(&names, &ids, &options) => reply?,
        };
        let mut deliveries = Vec::new();
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            let Some(at) = names.iter().position(|k| *k == stream.key) else {
                continue;
            };
            let idx = keys[at];
            deliveries.extend(
                stream
                    .ids
                    .into_iter()
                    .map(|e| Self::delivery(decode, idx, e, true)),
            );
        }
        self.process(deliveries, shutdown).await
    }

    /// Claims entries of the read keys `keys` idle past the threshold from any consumer of the
    /// group and handles them.
    pub(super) async fn reclaim(
        &self,
        keys: &[usize],
        shutdown: &CancellationToken,
    ) -> Result<(u32, u32), RunnerError> {
        let idle = u64::try_from(self.options.idle_reclaim.as_millis()).unwrap_or(u64::MAX);
        let decode = self.decode;
        let mut totals = (0, 0);
        let mut conn = self.conn.clone();
        for &idx in keys {
            let mut start = "0-0".to_owned();
            loop {
                let reply: StreamAutoClaimReply = conn
                    .xautoclaim_options(
                        &self.read_keys[idx],
                        &self.group,
                        &self.consumer,
                        idle,
                        &start,
                        StreamAutoClaimOptions::default().count(self.options.batch_size),
                    )
                    .await?;
                let claimed = reply.claimed.len() + reply.deleted_ids.len();
                if claimed > 0 {
                    tracing::info!(
                        stream = %self.read_keys[idx],
                        group = %self.group,
                        consumer = %self.consumer,
                        claimed,
                        "reclaimed idle entries"
                    );
                }
                self.counters
                    .reclaimed
                    .fetch_add(claimed as u64, Ordering::Relaxed);
                let mut deliveries: Vec<Delivery> = reply
                    .claimed
                    .into_iter()
                    .map(|e| Self::delivery(decode, idx, e, true))
                    .collect();
                deliveries.extend(reply.deleted_ids.into_iter().map(|id| {
                    Self::delivery(
                        decode,
                        idx,
                        StreamId {
                            id,
                            ..StreamId::default()
                        },
                        false,
                    )
                }));
                let (s, f) = self.process(deliveries, shutdown).await?;
                totals = (totals.0 + s, totals.1 + f);
                if reply.next_stream_id == "0-0" || shutdown.is_cancelled() {
                    break;
                }
                start = reply.next_stream_id;
            }
        }
        Ok(totals)
    }

    /// The delivery of `entry`, read from read key `key`.
    fn delivery(decode: Decoder, key: usize, entry: StreamId, in_pending: bool) -> Delivery {
        let content = if entry.map.is_empty() {
            Content::Deleted
        } else {
            match decode(&entry.map) {
                Ok(event) => Content::Event(event),
                Err(e) => Content::Unusable(format!("malformed entry: {e}")),
            }
        };
        Delivery {
            key,
            id: entry.id,
            fields: entry.map,
            content,
            in_pending,
        }
    }

    /// Handles a read batch: resolves deleted entries, dead-letters malformed ones, runs the
    /// rest in lanes and acknowledges what succeeded. Returns the entries done with (handled
    /// or dead-lettered as unusable: either way the read found work) and the entries left
    /// pending.
    pub(super) async fn process(
        &self,
        mut deliveries: Vec<Delivery>,
        shutdown: &CancellationToken,
    ) -> Result<(u32, u32), RunnerError> {
        if deliveries.is_empty() {
            return Ok((0, 0));
        }
        let (mut failures, mut dead_lettered) = (0, 0);
        let mut lanes: Vec<Vec<Delivery>> =
            (0..self.options.concurrency).map(|_| Vec::new()).collect();
        for mut d in deliveries.drain(..) {
            if matches!(d.content, Content::Deleted) {
                d.content = self.resolve_missing(&d).await;
            }
            match &d.content {
                Content::Event(event) => {
                    let lane =
                        usize::try_from(self.hasher.hash_one(&event.stream) % lanes.len() as u64)
                            .unwrap_or(0);
                    lanes[lane].push(d);
                }
                // `Deleted` does not survive `resolve_missing`; either way the entry stays
                // pending for a retry.
                Content::RetryLater | Content::Deleted => failures += 1,
                Content::Unusable(reason) => {
                    tracing::warn!(
                        stream = %self.read_keys[d.key],
                        id = %d.id,
                        reason = %reason,
                        "dead-lettering unusable entry"
                    );
                    self.dead_letter(&d, None, reason, 1).await?;
                    dead_lettered += 1;
                }
            }
        }
        let outcomes = futures::future::join_all(
            lanes
                .iter()
                .filter(|lane| !lane.is_empty())
                .map(|lane| self.run_lane(lane, shutdown)),
        )
        .await;
        let mut acks: HashMap<usize, Vec<String>> = HashMap::new();
        let mut successes = dead_lettered;
        let mut error = None;
        for outcome in outcomes {
            successes += outcome.successes;
            failures += outcome.failures;
            for (key, id) in outcome.acks {
                acks.entry(key).or_default().push(id);
            }
            if error.is_none() {
                error = outcome.error;
            }
        }
        if !acks.is_empty() {
            // One pipeline: the keys of a batch lie in one hash slot (see `step`).
            let mut pipe = redis::pipe();
            for (key, ids) in &acks {
                pipe.xack(&self.read_keys[*key], &self.group, ids).ignore();
            }
            let span = tracing::debug_span!(
                "eventsource.redis.ack",
                group = %self.group,
                entries = acks.values().map(Vec::len).sum::<usize>()
            );
            pipe.query_async::<()>(&mut self.conn.clone())
                .instrument(span)
                .await?;
        }
        match error {
            Some(e) => Err(e),
            None => Ok((successes, failures)),
        }
    }
}
