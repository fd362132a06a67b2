//! The aggregate contract and the root that tracks id, version and uncommitted events.

use crate::envelope::Version;
use crate::event::DomainEvent;

/// An aggregate's state: a type name, its event type and how each event changes it.
///
/// Usually derived: `#[derive(Aggregate)]` with `#[aggregate(name = "...", event = MyEvent)]`
/// generates this impl, and `apply` dispatches each variant of `MyEvent` to one hand-written
/// `when_<variant>` method of the `MyEventHandler` trait that `#[derive(DomainEvent)]` generated.
/// A struct variant's method receives the variant's borrowed view (`my_event::Variant<'_>`,
/// fields as references), so it reads only the fields it uses.
/// The command side lives in [`Handle`], written by hand.
///
/// `apply` is infallible and deterministic: no I/O, no clock, no randomness. Values such as
/// timestamps belong in the event.
///
/// Snapshots are opt-in: set [`SNAPSHOT_VERSION`](Aggregate::SNAPSHOT_VERSION) (the derive's
/// `#[aggregate(snapshot = N)]`, which needs `Serialize`/`Deserialize` on the state) and
/// [`Repository::with_snapshots`](crate::Repository::with_snapshots) stores and loads them.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an aggregate",
    label = "`{Self}` needs `#[derive(Aggregate)]`",
    note = "add `#[derive(Default, Aggregate)]` and `#[aggregate(event = YourEvent)]` to the \
            state struct (`use eventsource_core::Aggregate;`)"
)]
pub trait Aggregate: Default + Send + Sync + 'static {
    /// Stable aggregate type name, part of every stream id.
    const TYPE: &'static str;

    /// Schema version of the snapshot state, or `None` when the aggregate is not snapshotted.
    /// A stored snapshot with another version is ignored.
    const SNAPSHOT_VERSION: Option<u32> = None;

    /// The events this aggregate emits.
    type Event: DomainEvent;

    /// Changes the state by one event.
    fn apply(&mut self, event: &Self::Event);

    /// Serializes the state for a snapshot; `None` when snapshots are not supported.
    fn snapshot(&self) -> Option<serde_json::Value> {
        None
    }

    /// Rebuilds the state from a snapshot; `None` when it does not decode (the repository then
    /// replays the stream instead).
    #[must_use]
    fn restore(_snapshot: serde_json::Value) -> Option<Self> {
        None
    }
}

/// The command side of an aggregate: decides which events a command produces.
///
/// `handle` is pure: it reads `self` and returns events or a domain error. It is called again
/// with fresh state when an append conflicts, so it must not have side effects.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not handle commands",
    label = "`{Self}` needs `impl Handle for {Self}`",
    note = "implement `Handle` by hand: `type Command`, `type Error` (a `std::error::Error`, \
            e.g. with `#[derive(thiserror::Error)]`) and `fn handle(&self, command) -> \
            Result<Vec<Self::Event>, Self::Error>`"
)]
pub trait Handle: Aggregate {
    /// The commands this aggregate accepts.
    type Command: Clone + Send + Sync + 'static;

    /// Why a command is rejected: a `std::error::Error`, typically
    /// `#[derive(Debug, thiserror::Error)]`.
    // No custom diagnostic for a non-error type: rustc reports the unmet `std::error::Error`
    // bound itself, even through a marker trait with `#[diagnostic::do_not_recommend]` on its
    // blanket impl (tried for #14).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides the events for `command` given the current state.
    ///
    /// # Errors
    ///
    /// Returns the domain error when the command is not allowed in this state.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;
}

/// Routes an event to a handler's per-variant method. Implemented by `#[derive(DomainEvent)]`
/// for every type implementing the generated `<Event>Handler` trait.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot dispatch its events to `{H}`",
    label = "`{Self}` needs `#[derive(DomainEvent)]`",
    note = "`#[derive(DomainEvent)]` on `{Self}` generates this impl together with the handler \
            trait `{H}` must implement"
)]
pub trait Dispatch<H: ?Sized> {
    /// Calls the method of `handler` that belongs to this event's variant.
    fn dispatch(&self, handler: &mut H);
}

/// An aggregate with its id, version and the events applied since it was loaded.
///
/// ```
/// # use eventsource_core::{Aggregate, AggregateRoot, DomainEvent};
/// # use serde::{Deserialize, Serialize};
/// #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
/// enum CounterEvent { Incremented }
///
/// #[derive(Default, Aggregate)]
/// #[aggregate(name = "counter", event = CounterEvent)]
/// struct Counter { value: u32 }
///
/// impl CounterEventHandler for Counter {
///     fn when_incremented(&mut self) { self.value += 1; }
/// }
///
/// let mut root = AggregateRoot::<Counter>::from_history("c-1", [CounterEvent::Incremented]);
/// root.apply_event(CounterEvent::Incremented);
/// assert_eq!(root.state().value, 2);
/// assert_eq!(root.version().get(), 1);
/// assert_eq!(root.uncommitted_events().len(), 1);
/// root.mark_events_as_committed();
/// assert_eq!(root.version().get(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct AggregateRoot<A: Aggregate> {
    id: String,
    version: Version,
    state: A,
    uncommitted: Vec<A::Event>,
}

impl<A: Aggregate> AggregateRoot<A> {
    /// A new aggregate with no history.
    pub fn new(id: impl Into<String>) -> Self {
        Self::from_state(id, A::default(), Version::ZERO)
    }

    /// An aggregate whose state was restored (from a snapshot, a cache) at `version`.
    pub fn from_state(id: impl Into<String>, state: A, version: Version) -> Self {
        Self {
            id: id.into(),
            version,
            state,
            uncommitted: Vec::new(),
        }
    }

    /// Rebuilds an aggregate by applying its stored events in order.
    pub fn from_history(id: impl Into<String>, events: impl IntoIterator<Item = A::Event>) -> Self {
        let mut root = Self::new(id);
        for event in events {
            root.replay(&event);
        }
        root
    }

    /// Applies an already-stored event: the state changes and the version moves on.
    pub fn replay(&mut self, event: &A::Event) {
        self.state.apply(event);
        self.version = self.version.next();
    }

    /// Applies a new event and records it as uncommitted.
    pub fn apply_event(&mut self, event: A::Event) {
        self.state.apply(&event);
        self.uncommitted.push(event);
    }

    /// Handles a command against the current state and applies the resulting events.
    ///
    /// # Errors
    ///
    /// The aggregate's domain error; the state is then unchanged.
    pub fn execute(&mut self, command: A::Command) -> Result<&[A::Event], A::Error>
    where
        A: Handle,
    {
        let events = self.state.handle(command)?;
        let start = self.uncommitted.len();
        for event in events {
            self.apply_event(event);
        }
        Ok(&self.uncommitted[start..])
    }

    /// The aggregate id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The version of the last stored event applied (uncommitted events not counted).
    #[must_use]
    pub fn version(&self) -> Version {
        self.version
    }

    /// The current state, uncommitted events included.
    #[must_use]
    pub fn state(&self) -> &A {
        &self.state
    }

    /// Consumes the root, returning the state.
    #[must_use]
    pub fn into_state(self) -> A {
        self.state
    }

    /// Events applied since loading that are not yet stored.
    #[must_use]
    pub fn uncommitted_events(&self) -> &[A::Event] {
        &self.uncommitted
    }

    /// Takes the uncommitted events out, leaving the version unchanged.
    pub fn take_uncommitted_events(&mut self) -> Vec<A::Event> {
        std::mem::take(&mut self.uncommitted)
    }

    /// Marks the uncommitted events as stored: the version advances by their count.
    pub fn mark_events_as_committed(&mut self) {
        for _ in self.uncommitted.drain(..) {
            self.version = self.version.next();
        }
    }
}
