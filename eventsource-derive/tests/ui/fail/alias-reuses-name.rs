use eventsource_core::DomainEvent;
use serde::{Deserialize, Serialize};

// A stored name decodes to one variant only.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    #[event(name = "opened")]
    Opened { owner: String },
    #[event(name = "reopened", alias = "opened")]
    Reopened { owner: String },
}

fn main() {}
