//! An event enum without an aggregate: the unused handler trait must not warn.
#![deny(warnings)]

use eventsource_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum AuditEvent {
    #[event(name = "audit.logged")]
    Logged { line: String },
}

fn main() {
    let event = AuditEvent::Logged { line: "x".into() };
    assert_eq!(event.event_type(), "audit.logged");
    let AuditEvent::Logged { line } = AuditEvent::decode("audit.logged", 1, event.encode().unwrap()).unwrap();
    assert_eq!(line, "x");
}
