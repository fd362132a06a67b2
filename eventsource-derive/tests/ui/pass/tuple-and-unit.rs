//! Tuple and unit variants, a public enum with documented generated items, and a serde rename.
#![deny(warnings, missing_docs)]

use eventsource_core::{Aggregate, AggregateRoot, DomainEvent};
use serde::{Deserialize, Serialize};

/// The events of a light switch.
pub mod events {
    use super::{Deserialize, DomainEvent, Serialize};

    /// A light switch's events.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
    pub enum SwitchEvent {
        /// Turned on.
        TurnedOn,
        /// Turned off.
        #[serde(rename = "off")]
        TurnedOff,
        /// Dimmed to a level, by someone.
        Dimmed(u8, String),
        /// A one-field tuple.
        Labelled(String),
        /// A struct variant: its handler receives `switch_event::Moved<'_>`.
        Moved {
            /// Where to.
            room: String,
        },
    }
}

use events::{SwitchEvent, SwitchEventHandler};

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "switch", event = SwitchEvent)]
struct Switch {
    on: bool,
    level: u8,
    by: String,
    label: String,
}

impl SwitchEventHandler for Switch {
    fn when_turned_on(&mut self) {
        self.on = true;
    }

    fn when_turned_off(&mut self) {
        self.on = false;
    }

    fn when_dimmed(&mut self, (level, by): (&u8, &String)) {
        self.level = *level;
        self.by.clone_from(by);
    }

    fn when_labelled(&mut self, label: &String) {
        self.label.clone_from(label);
    }

    fn when_moved(&mut self, e: events::switch_event::Moved) {
        self.label.clone_from(e.room);
    }
}

fn main() {
    let events = vec![
        SwitchEvent::TurnedOn,
        SwitchEvent::Dimmed(40, "ada".into()),
        SwitchEvent::TurnedOff,
        SwitchEvent::Labelled("hall".into()),
    ];
    for event in &events {
        let payload = event.encode().unwrap();
        let back = SwitchEvent::decode(event.event_type(), 1, payload).unwrap();
        assert_eq!(&back, event);
    }
    assert_eq!(SwitchEvent::TurnedOn.encode().unwrap(), serde_json::Value::Null);
    assert_eq!(
        SwitchEvent::Dimmed(40, "ada".into()).encode().unwrap(),
        serde_json::json!([40, "ada"])
    );
    assert_eq!(
        SwitchEvent::Labelled("hall".into()).encode().unwrap(),
        serde_json::json!("hall")
    );
    // The stored name stays the variant name; the serde rename only matters inside decode.
    assert_eq!(SwitchEvent::TurnedOff.event_type(), "TurnedOff");

    let root = AggregateRoot::<Switch>::from_history("s-1", events);
    let state = root.state();
    assert!(!state.on);
    assert_eq!((state.level, state.by.as_str(), state.label.as_str()), (40, "ada", "hall"));
}
