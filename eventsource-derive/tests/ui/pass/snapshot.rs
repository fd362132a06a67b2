//! `#[aggregate(snapshot = N)]` serializes the state with serde.
#![deny(warnings)]

use eventsource_core::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum CounterEvent {
    Incremented { by: u32 },
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "counter", event = CounterEvent, snapshot = 3)]
struct Counter {
    value: u32,
}

impl CounterEventHandler for Counter {
    fn when_incremented(&mut self, e: counter_event::Incremented) {
        self.value += e.by;
    }
}

fn main() {
    assert_eq!(Counter::SNAPSHOT_VERSION, Some(3));
    let mut counter = Counter::default();
    counter.apply(&CounterEvent::Incremented { by: 4 });
    let snapshot = counter.snapshot().unwrap();
    assert_eq!(snapshot, serde_json::json!({ "value": 4 }));
    assert_eq!(Counter::restore(snapshot), Some(Counter { value: 4 }));
    assert_eq!(Counter::restore(serde_json::json!("nonsense")), None);
}
