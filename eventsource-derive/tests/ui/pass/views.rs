//! What each variant's handler receives, across visibilities and modules.
#![deny(warnings)]

use eventsource_core::{Aggregate, AggregateRoot, DomainEvent};
use serde::{Deserialize, Serialize};

mod ledger {
    use super::{Deserialize, DomainEvent, Serialize};

    /// A type of the enum's own module, named in a field.
    #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
    pub struct Cents(pub u64);

    /// An event struct of the user's own: a one-field tuple variant passes `&Opened`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Opened {
        pub owner: String,
        pub tags: Vec<String>,
    }

    // `pub(crate)`: the views are `pub(crate)` too, so the crate root can name them.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
    pub(crate) enum LedgerEvent {
        Opened(Opened),
        Credited { amount: Cents, memo: Option<String>, seq: u64 },
        Moved(i32, i32),
        Closed,
    }

    // A private enum: its views are visible in this module.
    #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
    enum Note {
        Written { text: String },
    }

    #[derive(Debug, Default, eventsource_core::Aggregate)]
    #[aggregate(event = Note)]
    struct Notebook {
        lines: usize,
    }

    impl NoteHandler for Notebook {
        fn when_written(&mut self, e: note::Written) {
            self.lines += e.text.lines().count();
        }
    }

    pub(crate) fn notes() -> usize {
        let mut notebook = Notebook::default();
        eventsource_core::Aggregate::apply(&mut notebook, &Note::Written { text: "a\nb".into() });
        notebook.lines
    }
}

use ledger::{Cents, LedgerEvent, LedgerEventHandler, ledger_event};

#[derive(Debug, Default, Aggregate)]
#[aggregate(event = LedgerEvent)]
struct Ledger {
    owner: String,
    tags: usize,
    balance: u64,
    last_seq: u64,
    memos: Vec<String>,
    at: (i32, i32),
    closed: bool,
}

impl LedgerEventHandler for Ledger {
    fn when_opened(&mut self, e: &ledger::Opened) {
        self.owner.clone_from(&e.owner);
        self.tags = e.tags.len();
    }

    fn when_credited(&mut self, e: ledger_event::Credited) {
        let Cents(amount) = *e.amount;
        self.balance += amount;
        self.last_seq = *e.seq;
        self.memos.extend(e.memo.clone());
    }

    fn when_moved(&mut self, (x, y): (&i32, &i32)) {
        self.at = (*x, *y);
    }

    fn when_closed(&mut self) {
        self.closed = true;
    }
}

fn main() {
    let events = [
        LedgerEvent::Opened(ledger::Opened { owner: "ada".into(), tags: vec!["vip".into()] }),
        LedgerEvent::Credited { amount: Cents(5), memo: Some("pay".into()), seq: 1 },
        LedgerEvent::Credited { amount: Cents(7), memo: None, seq: 2 },
        LedgerEvent::Moved(-1, 2),
        LedgerEvent::Closed,
    ];
    for event in &events {
        let back = LedgerEvent::decode(event.event_type(), 1, event.encode().unwrap()).unwrap();
        assert_eq!(&back, event);
    }
    let root = AggregateRoot::<Ledger>::from_history("l-1", events);
    let state = root.state();
    assert_eq!((state.owner.as_str(), state.tags, state.balance), ("ada", 1, 12));
    assert_eq!((state.last_seq, state.memos.as_slice(), state.at), (2, &["pay".to_owned()][..], (-1, 2)));
    assert!(state.closed);
    assert_eq!(Ledger::TYPE, "ledger");
    assert_eq!(ledger::notes(), 2);

    // A view is `Copy` and `Debug`.
    let credited = LedgerEvent::Credited { amount: Cents(1), memo: None, seq: 3 };
    if let LedgerEvent::Credited { amount, memo, seq } = &credited {
        let view = ledger_event::Credited { amount, memo, seq };
        let copy = view;
        assert_eq!(format!("{view:?}"), format!("{copy:?}"));
    }
}
