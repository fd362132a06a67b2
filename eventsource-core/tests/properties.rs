//! Property tests: replay equals fold, snapshot + tail equals replay, and the in-memory store
//! behaves like a simple model under any sequence of appends.

use std::collections::HashMap;

use eventsource_core::{
    Aggregate, AggregateRoot, DomainEvent, EventId, EventStore, ExpectedVersion,
    InMemoryEventStore, InMemorySnapshotStore, LogFilter, LogPosition, NewEvent, Repository,
    SnapshotPolicy, StoreError, StreamId, TenantId, Version, VersionRange,
};
use eventsource_core::{Dispatch, Handle};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

/// A hand-written aggregate (no derive), so these properties do not depend on the macros.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum TankEvent {
    Filled { litres: u32 },
    Drained { litres: u32 },
    Sealed,
}

impl DomainEvent for TankEvent {
    const EVENT_TYPES: &'static [eventsource_core::EventType] = &[
        eventsource_core::EventType {
            name: "filled",
            version: 1,
        },
        eventsource_core::EventType {
            name: "drained",
            version: 1,
        },
        eventsource_core::EventType {
            name: "sealed",
            version: 1,
        },
    ];

    fn event_type(&self) -> &'static str {
        match self {
            Self::Filled { .. } => "filled",
            Self::Drained { .. } => "drained",
            Self::Sealed => "sealed",
        }
    }

    fn schema_version(&self) -> u32 {
        1
    }

    fn encode(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(self)
    }

    fn decode(
        _event_type: &str,
        _schema_version: u32,
        payload: serde_json::Value,
    ) -> Result<Self, eventsource_core::DecodeError> {
        serde_json::from_value(payload).map_err(|source| eventsource_core::DecodeError::Payload {
            event_type: "tank".into(),
            source,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Tank {
    level: u32,
    high_water: u32,
    sealed: bool,
    changes: u32,
}

impl Dispatch<Tank> for TankEvent {
    fn dispatch(&self, tank: &mut Tank) {
        match self {
            Self::Filled { litres } => tank.level += litres,
            Self::Drained { litres } => tank.level -= litres,
            Self::Sealed => tank.sealed = true,
        }
        tank.high_water = tank.high_water.max(tank.level);
        tank.changes += 1;
    }
}

impl Aggregate for Tank {
    const TYPE: &'static str = "tank";
    const SNAPSHOT_VERSION: Option<u32> = Some(1);
    type Event = TankEvent;

    fn apply(&mut self, event: &TankEvent) {
        event.dispatch(self);
    }

    fn snapshot(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self).ok()
    }

    fn restore(snapshot: serde_json::Value) -> Option<Self> {
        serde_json::from_value(snapshot).ok()
    }
}

#[derive(Debug, Clone)]
enum TankCommand {
    Fill(u32),
    Drain(u32),
    Seal,
}

#[derive(Debug, thiserror::Error)]
enum TankError {
    #[error("sealed")]
    Sealed,
    #[error("not enough water")]
    TooLow,
}

impl Handle for Tank {
    type Command = TankCommand;
    type Error = TankError;

    fn handle(&self, command: TankCommand) -> Result<Vec<TankEvent>, TankError> {
        if self.sealed {
            return Err(TankError::Sealed);
        }
        match command {
            TankCommand::Fill(0) | TankCommand::Drain(0) => Ok(vec![]),
            TankCommand::Fill(litres) => Ok(vec![TankEvent::Filled { litres }]),
            TankCommand::Drain(litres) if litres > self.level => Err(TankError::TooLow),
            TankCommand::Drain(litres) => Ok(vec![TankEvent::Drained { litres }]),
            TankCommand::Seal => Ok(vec![TankEvent::Sealed]),
        }
    }
}

fn command() -> impl Strategy<Value = TankCommand> {
    prop_oneof![
        8 => (0u32..50).prop_map(TankCommand::Fill),
        8 => (0u32..60).prop_map(TankCommand::Drain),
        1 => Just(TankCommand::Seal),
    ]
}

fn event() -> impl Strategy<Value = TankEvent> {
    prop_oneof![
        (1u32..50).prop_map(|litres| TankEvent::Filled { litres }),
        Just(TankEvent::Sealed),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

proptest! {
    /// Applying events one at a time, committing in arbitrary chunks, equals replaying them.
    #[test]
    fn step_by_step_equals_replay(events in prop::collection::vec(event(), 0..60), chunk in 1usize..7) {
        let replayed = AggregateRoot::<Tank>::from_history("t", events.clone());
        let mut stepped = AggregateRoot::<Tank>::new("t");
        for part in events.chunks(chunk) {
            for e in part {
                stepped.apply_event(e.clone());
            }
            stepped.mark_events_as_committed();
        }
        prop_assert_eq!(stepped.state(), replayed.state());
        prop_assert_eq!(stepped.version(), replayed.version());
        prop_assert_eq!(replayed.version().get(), events.len() as u64);
    }

    /// Commands through the repository, then a load, give the state of folding the stored events.
    #[test]
    fn repository_state_equals_fold_of_stored_events(commands in prop::collection::vec(command(), 0..40)) {
        let rt = runtime();
        rt.block_on(async {
            let store = InMemoryEventStore::new();
            let repo = Repository::<Tank, _>::new(store.clone());
            let mut produced = Vec::new();
            for c in commands {
                if let Ok(done) = repo.execute("t", c).await {
                    produced.extend(done.events);
                }
            }
            let loaded = repo.load("t").await.expect("load");
            let stream = repo.stream_id("t");
            let stored: Vec<TankEvent> = store
                .read_stream(&stream, VersionRange::all())
                .await
                .expect("read")
                .iter()
                .map(|e| e.decode::<TankEvent>().expect("decode").payload)
                .collect();
            prop_assert_eq!(&stored, &produced);
            let folded = AggregateRoot::<Tank>::from_history("t", stored);
            prop_assert_eq!(loaded.state(), folded.state());
            prop_assert_eq!(loaded.version(), folded.version());
            Ok(())
        })?;
    }

    /// Loading from a snapshot plus the tail equals a full replay, whatever the snapshot interval.
    #[test]
    fn snapshot_plus_tail_equals_replay(commands in prop::collection::vec(command(), 1..60), every in 1u64..8) {
        let rt = runtime();
        rt.block_on(async {
            let store = InMemoryEventStore::new();
            let snapshots = InMemorySnapshotStore::new();
            let with = Repository::<Tank, _>::new(store.clone())
                .with_snapshots(snapshots.clone(), SnapshotPolicy::Every(every));
            for c in commands {
                let _ = with.execute("t", c).await;
            }
            let without = Repository::<Tank, _>::new(store.clone());
            let full = without.load("t").await.expect("replay");
            let fast = with.load("t").await.expect("snapshot + tail");
            prop_assert_eq!(fast.state(), full.state());
            prop_assert_eq!(fast.version(), full.version());
            Ok(())
        })?;
    }
}

/// One step of the store state machine.
#[derive(Debug, Clone)]
enum Op {
    /// Append `count` fresh events to stream `stream` with an expectation.
    Append {
        stream: usize,
        expect: Expect,
        count: usize,
    },
    /// Re-append the batch of an earlier successful append (by index, modulo).
    Retry { batch: usize },
}

#[derive(Debug, Clone, Copy)]
enum Expect {
    Any,
    NoStream,
    StreamExists,
    /// The model's current version plus this offset (0 = correct).
    Exact(i64),
}

fn op() -> impl Strategy<Value = Op> {
    let expect = prop_oneof![
        Just(Expect::Any),
        Just(Expect::NoStream),
        Just(Expect::StreamExists),
        (-2i64..=2).prop_map(Expect::Exact),
    ];
    prop_oneof![
        4 => (0usize..3, expect, 1usize..4).prop_map(|(stream, expect, count)| Op::Append { stream, expect, count }),
        1 => (0usize..100).prop_map(|batch| Op::Retry { batch }),
    ]
}

proptest! {
    /// The in-memory store against a model: streams as `Vec`s of ids, the log as one `Vec`.
    #[test]
    fn in_memory_store_matches_model(ops in prop::collection::vec(op(), 1..60)) {
        let rt = runtime();
        rt.block_on(async {
            let store = InMemoryEventStore::new();
            let tenant = TenantId::new("model");
            let streams: Vec<StreamId> = (0..3).map(|i| StreamId::new(tenant.clone(), "model", format!("s{i}"))).collect();
            let mut model: HashMap<usize, Vec<EventId>> = HashMap::new();
            let mut log: Vec<EventId> = Vec::new();
            let mut batches: Vec<(usize, Vec<NewEvent>, Version)> = Vec::new();
            for op in ops {
                match op {
                    Op::Append { stream, expect, count } => {
                        let current = model.get(&stream).map_or(0, Vec::len) as u64;
                        let expected = match expect {
                            Expect::Any => ExpectedVersion::Any,
                            Expect::NoStream => ExpectedVersion::NoStream,
                            Expect::StreamExists => ExpectedVersion::StreamExists,
                            Expect::Exact(offset) => ExpectedVersion::Exact(Version::new(current.saturating_add_signed(offset))),
                        };
                        let admitted = expected.admits(Version::new(current));
                        let batch: Vec<NewEvent> = (0..count).map(|i| NewEvent::new("e", 1, serde_json::json!(i))).collect();
                        let result = store.append(&streams[stream], expected, batch.clone()).await;
                        if admitted {
                            let appended = result.expect("admitted append succeeds");
                            let ids: Vec<EventId> = batch.iter().map(|e| e.event_id).collect();
                            model.entry(stream).or_default().extend(&ids);
                            log.extend(&ids);
                            prop_assert_eq!(appended.version.get(), current + count as u64);
                            batches.push((stream, batch, appended.version));
                        } else {
                            let is_conflict = matches!(result, Err(StoreError::Conflict { actual, .. }) if actual.get() == current);
                            prop_assert!(is_conflict);
                        }
                    }
                    Op::Retry { batch } => {
                        if batches.is_empty() {
                            continue;
                        }
                        let (stream, events, version) = batches[batch % batches.len()].clone();
                        let again = store.append(&streams[stream], ExpectedVersion::Any, events).await.expect("idempotent retry");
                        prop_assert_eq!(again.version, version);
                    }
                }
            }
            for (i, s) in streams.iter().enumerate() {
                let stored: Vec<EventId> = store.read_stream(s, VersionRange::all()).await.expect("read").iter().map(|e| e.event_id).collect();
                let expected = model.get(&i).cloned().unwrap_or_default();
                prop_assert_eq!(stored, expected);
            }
            let all: Vec<EventId> = store.read_all(LogPosition::START, usize::MAX, &LogFilter::all()).await.expect("read").iter().map(|e| e.event_id).collect();
            prop_assert_eq!(all, log);
            Ok(())
        })?;
    }
}
