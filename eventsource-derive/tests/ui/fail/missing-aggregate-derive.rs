use eventsource_core::{AggregateRoot, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum CounterEvent {
    Incremented,
}

// `Aggregate` is missing from the derives.
#[derive(Debug, Default)]
struct Counter {
    value: u32,
}

impl CounterEventHandler for Counter {
    fn when_incremented(&mut self) {
        self.value += 1;
    }
}

fn main() {
    let _ = AggregateRoot::<Counter>::new("c-1");
}
