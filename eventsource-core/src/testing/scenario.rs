//! Given / when / then scenarios for aggregates, without any store.

use std::fmt::Debug;

use crate::aggregate::{Aggregate, AggregateRoot, Handle};

/// An aggregate built from past events, about to receive a command.
///
/// ```
/// # use eventsource_core::{Aggregate, DomainEvent, Handle, testing::Scenario};
/// # use serde::{Deserialize, Serialize};
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
/// enum DoorEvent { Opened, Closed }
///
/// #[derive(Default, Aggregate)]
/// #[aggregate(name = "door", event = DoorEvent)]
/// struct Door { open: bool }
///
/// impl DoorEventHandler for Door {
///     fn when_opened(&mut self) { self.open = true; }
///     fn when_closed(&mut self) { self.open = false; }
/// }
///
/// #[derive(Debug, thiserror::Error, PartialEq)]
/// #[error("already open")]
/// struct AlreadyOpen;
///
/// impl Handle for Door {
///     type Command = ();
///     type Error = AlreadyOpen;
///     fn handle(&self, (): ()) -> Result<Vec<DoorEvent>, AlreadyOpen> {
///         if self.open { Err(AlreadyOpen) } else { Ok(vec![DoorEvent::Opened]) }
///     }
/// }
///
/// Scenario::<Door>::given([DoorEvent::Opened, DoorEvent::Closed]).when(()).then([DoorEvent::Opened]);
/// Scenario::<Door>::given([DoorEvent::Opened]).when(()).then_error(AlreadyOpen);
/// ```
#[derive(Debug)]
pub struct Scenario<A: Aggregate> {
    root: AggregateRoot<A>,
}

impl<A: Aggregate> Scenario<A> {
    /// Starts from an aggregate that went through `events`.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        Self {
            root: AggregateRoot::from_history("scenario", events),
        }
    }

    /// Starts from a new aggregate.
    #[must_use]
    pub fn given_no_events() -> Self {
        Self::given([])
    }

    /// Handles `command`.
    pub fn when(self, command: A::Command) -> Outcome<A>
    where
        A: Handle,
    {
        let result = self.root.state().handle(command);
        Outcome {
            root: self.root,
            result,
        }
    }
}

/// What a command produced in a [`Scenario`].
#[derive(Debug)]
pub struct Outcome<A: Handle> {
    root: AggregateRoot<A>,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Handle> Outcome<A>
where
    A::Event: PartialEq,
{
    /// Asserts the command produced exactly `expected`; returns the state after applying them.
    ///
    /// # Panics
    ///
    /// When the command was rejected or produced other events.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) -> A {
        let expected: Vec<_> = expected.into_iter().collect();
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "the command produced other events");
                let mut root = self.root;
                for event in events {
                    root.apply_event(event);
                }
                root.into_state()
            }
            Err(e) => panic!("expected events {expected:?}, but the command was rejected: {e:?}"),
        }
    }
}

impl<A: Handle> Outcome<A> {
    /// Asserts the command was rejected with `expected`.
    ///
    /// # Panics
    ///
    /// When the command succeeded or failed with another error.
    #[track_caller]
    #[allow(clippy::needless_pass_by_value)] // `then_error(MyError::X)` reads better than a reference
    pub fn then_error(self, expected: A::Error)
    where
        A::Error: PartialEq,
        A::Event: Debug,
    {
        match self.result {
            Ok(events) => panic!("expected rejection {expected:?}, but got events {events:?}"),
            Err(e) => assert_eq!(e, expected, "the command was rejected for another reason"),
        }
    }

    /// Asserts the command was rejected with an error `check` accepts.
    ///
    /// # Panics
    ///
    /// When the command succeeded or `check` returns false.
    #[track_caller]
    pub fn then_error_matches(self, check: impl FnOnce(&A::Error) -> bool)
    where
        A::Event: Debug,
    {
        match self.result {
            Ok(events) => panic!("expected a rejection, but got events {events:?}"),
            Err(e) => assert!(check(&e), "unexpected rejection: {e:?}"),
        }
    }

    /// The raw result, for custom assertions.
    pub fn result(&self) -> &Result<Vec<A::Event>, A::Error> {
        &self.result
    }
}
