use eventsource_core::DomainEvent;
use serde::{Deserialize, Serialize};

// Every mistake is reported in one compile.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    #[event(version = 0, colour = "red")]
    Opened { owner: String },
    #[event(name = 7, no_state_change(yes))]
    Closed,
}

fn main() {}
