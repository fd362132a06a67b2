use eventsource_core::{Aggregate, AggregateRoot, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum CounterEvent {
    Incremented,
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(event = CounterEvent)]
struct Counter {
    value: u32,
}

impl CounterEventHandler for Counter {
    fn when_incremented(&mut self) {
        self.value += 1;
    }
}

fn main() {
    // Commands need `impl Handle for Counter`.
    let mut root = AggregateRoot::<Counter>::new("c-1");
    let _ = root.execute(());
}
