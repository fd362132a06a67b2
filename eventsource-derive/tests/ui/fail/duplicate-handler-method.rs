use eventsource_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum WebhookEvent {
    HTTPSent { url: String },
    HttpSent { url: String },
}

fn main() {}
