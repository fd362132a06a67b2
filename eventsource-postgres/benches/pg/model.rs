//! The aggregates the scenarios command and load.

use eventsource_core::{Aggregate, DomainEvent, Handle, NewEvent};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
pub(crate) enum CounterEvent {
    Incremented { by: u64 },
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "counter", event = CounterEvent, snapshot = 1)]
pub(crate) struct Counter {
    pub(crate) value: u64,
}

impl CounterEventHandler for Counter {
    fn when_incremented(&mut self, by: &u64) {
        self.value += by;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
pub(crate) struct Never;

impl Handle for Counter {
    type Command = u64;
    type Error = Never;
    fn handle(&self, by: u64) -> Result<Vec<CounterEvent>, Never> {
        Ok(vec![CounterEvent::Incremented { by }])
    }
}

pub(crate) fn event() -> NewEvent {
    NewEvent::new("Incremented", 1, json!({ "by": 1 }))
}
