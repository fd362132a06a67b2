//! `#[event(crate = "...")]` and `#[aggregate(crate = "...")]`: generated code names
//! `eventsource_core` by the given path, as when the dependency is renamed or re-exported.
#![deny(warnings)]

use serde::{Deserialize, Serialize};

mod framework {
    pub use eventsource_core as es;
}

use framework::es::{Aggregate as _, AggregateRoot, DomainEvent as _};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, framework::es::DomainEvent)]
#[event(crate = "framework::es")]
enum CounterEvent {
    Added { by: u32 },
    Reset,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize, framework::es::Aggregate)]
#[aggregate(event = CounterEvent, snapshot = 1, crate = "crate::framework::es")]
struct Counter {
    value: u32,
}

impl CounterEventHandler for Counter {
    fn when_added(&mut self, e: counter_event::Added) {
        self.value += e.by;
    }

    fn when_reset(&mut self) {
        self.value = 0;
    }
}

fn main() {
    let event = CounterEvent::Added { by: 2 };
    let back = CounterEvent::decode("Added", 1, event.encode().unwrap()).unwrap();
    assert_eq!(back, event);
    let root = AggregateRoot::<Counter>::from_history("c-1", [event, CounterEvent::Reset, back]);
    assert_eq!(root.state().value, 2);
    assert_eq!(Counter::restore(root.state().snapshot().unwrap()).as_ref(), Some(root.state()));
}
