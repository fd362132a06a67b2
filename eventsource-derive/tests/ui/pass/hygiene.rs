//! Field and function names that collide with the names generated code uses internally.
#![deny(warnings)]

use eventsource_core::{Aggregate, DomainEvent, UpcastError};
use serde::{Deserialize, Serialize};

#[allow(clippy::unnecessary_wraps)]
fn payload(_from: u32, payload: serde_json::Value) -> Result<serde_json::Value, UpcastError> {
    Ok(payload)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum H {
    Renamed { handler: u32, r#type: String, payload: bool, event_type: String },
    #[event(version = 2, upcast = payload)]
    Stored { stored: u32, schema_version: u32, upcaster: u32, source: u32 },
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(event = H)]
struct Thing {
    total: u32,
}

impl HHandler for Thing {
    fn when_renamed(&mut self, e: h::Renamed) {
        if *e.payload && e.r#type == e.event_type {
            self.total += e.handler;
        }
    }

    fn when_stored(&mut self, e: h::Stored) {
        self.total += e.stored + e.schema_version + e.upcaster + e.source;
    }
}

fn main() {
    let mut thing = Thing::default();
    let renamed = H::Renamed { handler: 1, r#type: "t".into(), payload: true, event_type: "t".into() };
    thing.apply(&renamed);
    let stored = H::Stored { stored: 1, schema_version: 2, upcaster: 3, source: 4 };
    thing.apply(&stored);
    assert_eq!(thing.total, 11);
    assert_eq!(Thing::TYPE, "thing");

    let old = H::decode("Stored", 1, stored.encode().unwrap()).unwrap();
    assert_eq!(old, stored);
    let back = H::decode("Renamed", 1, renamed.encode().unwrap()).unwrap();
    assert_eq!(back, renamed);
}
