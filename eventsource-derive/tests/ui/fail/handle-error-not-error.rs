use eventsource_core::{Aggregate, DomainEvent, Handle};
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

impl Handle for Counter {
    type Command = ();
    // A domain error must be a `std::error::Error`; a bare string is not.
    type Error = String;

    fn handle(&self, (): ()) -> Result<Vec<CounterEvent>, String> {
        Ok(vec![CounterEvent::Incremented])
    }
}

fn main() {}
