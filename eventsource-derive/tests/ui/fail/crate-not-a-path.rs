use eventsource_core::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(crate = "not a path", name = "x")]
enum CounterEvent {
    #[event(crate = "eventsource_core")]
    Incremented,
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(event = CounterEvent, crate = eventsource_core)]
struct Counter;

fn main() {}
