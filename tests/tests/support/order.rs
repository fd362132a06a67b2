//! What the order tests share: an aggregate whose events name themselves, and the checks that
//! a sequence of events keeps every stream in version order and holds each event once.

use std::collections::{BTreeSet, HashMap};

use eventsource_core::{Aggregate, DomainEvent, Handle, NewEvent, RecordedEvent, StreamId};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

/// The one event of [`Counter`]: `label` is unique across a test run, so the test can tell
/// which appends landed and whether any landed twice, whoever wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
pub enum Tick {
    Ticked { label: u64 },
}

/// An aggregate that accepts every command: raw appends and repository commands can share its
/// streams, since every event of them decodes.
#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "counter", event = Tick)]
pub struct Counter {
    ticks: u64,
}

impl TickHandler for Counter {
    fn when_ticked(&mut self, _tick: tick::Ticked) {
        self.ticks += 1;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

impl Handle for Counter {
    /// The label of the event to record.
    type Command = u64;
    type Error = Never;

    fn handle(&self, label: u64) -> Result<Vec<Tick>, Never> {
        Ok(vec![Tick::Ticked { label }])
    }
}

/// A raw event as [`Counter`] records it.
pub fn tick(label: u64) -> NewEvent {
    NewEvent::from_event(&Tick::Ticked { label }).expect("a tick serializes")
}

/// The label an event of [`Counter`] carries.
pub fn label(event: &RecordedEvent) -> u64 {
    event.payload["label"].as_u64().unwrap_or_else(|| {
        panic!(
            "event {} carries no label: {}",
            event.event_id, event.payload
        )
    })
}

/// Where `events` break version order, if they do: every stream's versions must run 1, 2, 3 …
/// along them (a stream's first event must be its version 1). Names `what` was read, how many
/// events are out of place and the first of them.
pub fn version_order_error(what: &str, events: &[RecordedEvent]) -> Option<String> {
    let mut last: HashMap<&StreamId, u64> = HashMap::new();
    let mut out_of_order = 0usize;
    let mut first = None;
    for (i, e) in events.iter().enumerate() {
        let previous = last.entry(&e.stream).or_insert(0);
        if e.version.get() != *previous + 1 {
            out_of_order += 1;
            first.get_or_insert_with(|| {
                format!(
                    "{} v{} (at {}, index {i}) where v{} belongs",
                    e.stream,
                    e.version,
                    e.position,
                    *previous + 1
                )
            });
        }
        *previous = (*previous).max(e.version.get());
    }
    first.map(|first| {
        format!(
            "{what}: {out_of_order} of {} events out of version order; first: {first}",
            events.len()
        )
    })
}

/// Where `events` differ from the labels `committed`, each once, if they do.
pub fn exactly_once_error(
    what: &str,
    events: &[RecordedEvent],
    committed: &BTreeSet<u64>,
) -> Option<String> {
    let mut seen = BTreeSet::new();
    let duplicated: Vec<u64> = events
        .iter()
        .map(label)
        .filter(|l| !seen.insert(*l))
        .collect();
    if let Some(first) = duplicated.first() {
        return Some(format!(
            "{what}: {} events appear twice, label {first} first",
            duplicated.len()
        ));
    }
    let missing = committed.difference(&seen).count();
    let extra = seen.difference(committed).count();
    (missing > 0 || extra > 0).then(|| {
        format!(
            "{what}: {missing} committed events missing, {extra} events present that were \
             never committed ({} seen, {} committed)",
            seen.len(),
            committed.len()
        )
    })
}

/// Every entry of a Redis stream as (entry id, decoded event), through the crate's codec, read
/// in pages (one reply of thousands of entries can outlast the connection's response timeout).
pub async fn redis_entries<C: redis::aio::ConnectionLike + Send + Sync>(
    conn: &mut C,
    key: &str,
) -> Vec<(String, RecordedEvent)> {
    let mut entries = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let reply: redis::streams::StreamRangeReply =
            redis::AsyncCommands::xrange_count(conn, key, &start, "+", 500)
                .await
                .expect("XRANGE");
        let Some(last) = reply.ids.last() else {
            return entries;
        };
        start = format!("({}", last.id);
        for entry in reply.ids {
            let event = eventsource_redis::codec::decode(&entry.map)
                .unwrap_or_else(|e| panic!("entry {} of {key} does not decode: {e}", entry.id));
            entries.push((entry.id, event));
        }
    }
}

/// A log position below every transaction that has not started yet: a read of the log after
/// it sees everything the test writes from now on, and little of what came before.
pub async fn log_start(pool: &PgPool) -> eventsource_core::LogPosition {
    let xmin: String = sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        .fetch_one(pool)
        .await
        .expect("the snapshot's xmin");
    let xmin: u64 = xmin.parse().expect("a transaction id");
    eventsource_core::LogPosition::new(xmin.saturating_sub(1), 0)
}
