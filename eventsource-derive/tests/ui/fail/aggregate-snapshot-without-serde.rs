use eventsource_core::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    Opened { owner: String },
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(event = AccountEvent, snapshot = 1)]
struct Account {
    open: bool,
}

impl AccountEventHandler for Account {
    fn when_opened(&mut self, _: account_event::Opened) {
        self.open = true;
    }
}

fn main() {}
