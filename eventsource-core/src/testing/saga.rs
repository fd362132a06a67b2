//! Given / when / then scenarios for sagas, without any store.
//!
//! [`SagaScenario`] runs a [`Saga`] the way the handlers do — routing, per-event
//! deduplication, the reaction, rejections heard as outcomes, compensations, the next deadline
//! and the state's round trip through JSON — with the store and the aggregates replaced by a
//! map in memory and a rule saying which commands the aggregates reject.

use std::collections::HashSet;
use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::envelope::{EventId, LogPosition, NewEvent, RecordedEvent, StreamId, Version};
use crate::saga::{
    DueDeadline, Loaded, Plan, Saga, SagaError, SagaKey, SagaState, deadline_event, plan, route,
};

/// `command` → the aggregate's error if it rejects it.
type Rejecter<C> =
    Arc<dyn Fn(&C) -> Option<Box<dyn std::error::Error + Send + Sync + 'static>> + Send + Sync>;

/// A stored event built from `event` in `stream`, as a store would hand it to a saga: the
/// event's id, type, payload and metadata, version 1, recorded now at the start of the log.
/// Set the public fields for anything else (`recorded_at` for deadlines, say).
///
/// ```
/// use eventsource_core::testing::recorded;
/// use eventsource_core::{NewEvent, StreamId, TenantId};
///
/// let stream = StreamId::new(TenantId::default(), "order", "o-1");
/// let placed = recorded(stream, NewEvent::new("order-placed", 1, serde_json::json!({})));
/// assert_eq!(placed.event_type, "order-placed");
/// ```
#[must_use]
pub fn recorded(stream: StreamId, event: NewEvent) -> RecordedEvent {
    RecordedEvent {
        event_id: event.event_id,
        stream,
        version: Version::new(1),
        position: LogPosition::START,
        event_type: event.event_type,
        schema_version: event.schema_version,
        recorded_at: Utc::now(),
        metadata: event.metadata,
        payload: event.payload,
    }
}

/// A saga instance that went through past events, about to receive one more.
///
/// Built with [`new`](Self::new), told which commands its aggregates reject with
/// [`rejecting`](Self::rejecting), fed past events with [`given`](Self::given) (their
/// commands are issued and forgotten), then [`when`](Self::when) delivers the event under
/// test; the [`SagaOutcome`] asserts what that one delivery did. The scenario follows one
/// instance: events the saga ignores change nothing, an event routed to another instance
/// panics.
///
/// ```
/// use eventsource_core::testing::{SagaScenario, recorded};
/// use eventsource_core::{Compensations, NewEvent, RecordedEvent, Saga, StreamId, TenantId};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("card declined")]
/// struct Declined;
///
/// #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
/// struct Checkout { paid: bool, cancelled: bool, steps: Compensations<String> }
///
/// /// Order placed → reserve stock; stock reserved → charge; charged → ship. A declined
/// /// charge releases the stock; no charge within 30 minutes cancels the order.
/// struct OrderSaga;
///
/// impl Saga for OrderSaga {
///     const NAME: &'static str = "order";
///     type State = Checkout;
///     type Command = String;
///     type Error = std::convert::Infallible;
///
///     fn correlate(&self, event: &RecordedEvent) -> Option<String> {
///         event.payload["order"].as_str().map(str::to_owned)
///     }
///
///     fn react(&self, state: &mut Checkout, event: &RecordedEvent) -> Result<Vec<String>, Self::Error> {
///         Ok(match event.event_type.as_str() {
///             "order-placed" => vec!["reserve".into()],
///             "stock-reserved" => vec!["charge".into()],
///             "charged" => { state.paid = true; vec!["ship".into()] }
///             eventsource_core::DEADLINE_REACHED => {
///                 state.cancelled = true;
///                 state.steps.compensate();
///                 vec![]
///             }
///             _ => vec![],
///         })
///     }
///
///     fn deadline(&self, state: &Checkout) -> Option<chrono::DateTime<chrono::Utc>> {
///         let due = chrono::DateTime::UNIX_EPOCH + chrono::Duration::minutes(30);
///         (!state.paid && !state.cancelled && !state.steps.pending().is_empty()).then_some(due)
///     }
///
///     fn compensation(&self, command: &String) -> Option<String> {
///         match command.as_str() {
///             "reserve" => Some("release".into()),
///             "charge" => Some("refund".into()),
///             _ => None,
///         }
///     }
///
///     fn compensations<'s>(&self, state: &'s mut Checkout) -> Option<&'s mut Compensations<String>> {
///         Some(&mut state.steps)
///     }
/// }
///
/// let event = |event_type: &str| {
///     let stream = StreamId::new(TenantId::default(), "shop", "o-1");
///     recorded(stream, NewEvent::new(event_type, 1, serde_json::json!({ "order": "o-1" })))
/// };
///
/// // The happy path: each step issues the next command.
/// SagaScenario::new(OrderSaga)
///     .given([event("order-placed")])
///     .when(event("stock-reserved"))
///     .then_commands(["charge".to_owned()])
///     .then_compensations([]);
///
/// // A declined payment releases the stock (the charge's own compensation never ran: it failed).
/// SagaScenario::new(OrderSaga)
///     .rejecting(|command: &String| (command == "charge").then_some(Declined))
///     .given([event("order-placed")])
///     .when(event("stock-reserved"))
///     .then_commands(["charge".to_owned()])
///     .then_compensations(["release".to_owned()])
///     .then_deadline(None);
///
/// // No payment before the deadline: the order is cancelled and the stock released, once.
/// let scenario = SagaScenario::new(OrderSaga).given([event("order-placed")]);
/// assert!(scenario.deadline().is_some(), "waiting for payment");
/// scenario
///     .when_deadline()
///     .then_compensations(["release".to_owned()])
///     .then_deadline(None)
///     .then_state(|state: &Checkout| {
///         assert!(state.cancelled);
///         assert_eq!(state.steps.ran(), ["release"]);
///     });
/// ```
pub struct SagaScenario<G: Saga> {
    saga: G,
    key: Option<SagaKey>,
    state: Option<SagaState>,
    handled: HashSet<EventId>,
    rejecter: Option<Rejecter<G::Command>>,
}

impl<G: Saga> fmt::Debug for SagaScenario<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaScenario")
            .field("saga", &G::NAME)
            .field("key", &self.key)
            .field("state", &self.state)
            .field("handled", &self.handled.len())
            .finish_non_exhaustive()
    }
}

impl<G: Saga> SagaScenario<G> {
    /// A scenario for a new instance of `saga`, whose commands all succeed.
    pub fn new(saga: G) -> Self {
        Self {
            saga,
            key: None,
            state: None,
            handled: HashSet::new(),
            rejecter: None,
        }
    }

    /// The aggregates reject each command for which `rejects` returns an error; the saga
    /// hears the error as a [`Rejection`](crate::saga::Rejection), as from a
    /// [`Repository`](crate::Repository). Applies to the given events and the one under test.
    #[must_use]
    pub fn rejecting<E, F>(mut self, rejects: F) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
        F: Fn(&G::Command) -> Option<E> + Send + Sync + 'static,
    {
        self.rejecter = Some(Arc::new(move |command| {
            rejects(command).map(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        }));
        self
    }

    /// Delivers past `events`, in order, as a handler would; their commands are issued (and
    /// rejected as [`rejecting`](Self::rejecting) says) and forgotten.
    ///
    /// # Panics
    ///
    /// When handling one of them fails, or it belongs to another instance.
    #[must_use]
    pub fn given(mut self, events: impl IntoIterator<Item = RecordedEvent>) -> Self {
        for event in events {
            if let Err(e) = self.deliver(&event).result {
                panic!(
                    "given event {} ({}) failed: {e}",
                    event.event_id, event.event_type
                );
            }
        }
        self
    }

    /// The instance's pending deadline.
    #[must_use]
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        self.state.as_ref().and_then(|s| s.deadline)
    }

    /// Delivers `event` and returns what the delivery did.
    ///
    /// # Panics
    ///
    /// When `event` belongs to another instance than the given ones.
    #[must_use]
    pub fn when(mut self, event: RecordedEvent) -> SagaOutcome<G> {
        let delivery = self.deliver(&event);
        SagaOutcome {
            scenario: self,
            event,
            delivery,
        }
    }

    /// Delivers the event a deadline runner appends when the pending deadline falls due.
    ///
    /// # Panics
    ///
    /// When no deadline is pending.
    #[must_use]
    pub fn when_deadline(self) -> SagaOutcome<G> {
        let (Some(key), Some(due_at)) = (self.key.clone(), self.deadline()) else {
            panic!("saga {}: no deadline is pending", G::NAME);
        };
        let (stream, event) = deadline_event(&DueDeadline::new(key, due_at))
            .expect("a deadline event always serializes");
        self.when(recorded(stream, event))
    }

    fn deliver(&mut self, event: &RecordedEvent) -> Delivery<G> {
        let mut delivery = Delivery {
            skipped: true,
            commands: Vec::new(),
            compensations: Vec::new(),
            result: Ok(()),
        };
        let Some(key) = route(&self.saga, event) else {
            return delivery;
        };
        match &self.key {
            Some(known) => assert_eq!(
                known, &key,
                "the scenario follows one saga instance; event {} goes to another",
                event.event_id
            ),
            None => self.key = Some(key.clone()),
        }
        let loaded = Loaded::new(self.state.clone(), self.handled.contains(&event.event_id));
        let reaction = match plan::<G, Infallible>(&self.saga, &key, loaded, event) {
            Ok(Plan::React(reaction)) => reaction,
            Ok(_) => return delivery,
            Err(e) => {
                delivery.result = Err(e.into());
                return delivery;
            }
        };
        delivery.skipped = false;
        let mut reaction = reaction;
        while let Some((command, _)) = reaction.next_command() {
            let compensating = reaction.is_compensation();
            let rejection = self.rejecter.as_ref().and_then(|rejects| rejects(&command));
            if compensating {
                delivery.compensations.push(command);
            } else {
                delivery.commands.push(command);
            }
            match rejection {
                None => reaction.succeeded(),
                Some(error) => match reaction.rejected::<Infallible>(&*error) {
                    Ok(true) => {}
                    Ok(false) => {
                        delivery.result = Err(SagaDeliveryError::Rejected(error));
                        return delivery;
                    }
                    Err(e) => {
                        delivery.result = Err(e.into());
                        return delivery;
                    }
                },
            }
        }
        match reaction.finish::<Infallible>() {
            Ok(state) => {
                self.state = Some(state);
                self.handled.insert(event.event_id);
            }
            Err(e) => delivery.result = Err(e.into()),
        }
        delivery
    }

    fn decoded_state(&self) -> G::State {
        match &self.state {
            None => G::State::default(),
            Some(stored) => serde_json::from_value(stored.state.clone()).unwrap_or_else(|e| {
                panic!("saga {}: the stored state does not decode: {e}", G::NAME)
            }),
        }
    }
}

/// Why a delivery in a [`SagaScenario`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SagaDeliveryError<E: std::error::Error + 'static> {
    /// The saga failed (its reaction, or its state's encoding).
    #[error(transparent)]
    Saga(#[from] SagaError<E, Infallible>),
    /// A command was rejected and the saga does not hear it as an outcome: a real handler
    /// reports the dispatch error and the event is delivered again.
    #[error("a command was rejected and the saga did not handle it")]
    Rejected(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// What one delivery did.
struct Delivery<G: Saga> {
    skipped: bool,
    commands: Vec<G::Command>,
    compensations: Vec<G::Command>,
    result: Result<(), SagaDeliveryError<G::Error>>,
}

/// What [`SagaScenario::when`] did: assert it with the `then_*` methods, which chain (and
/// may end a statement: each returns the outcome for the next check).
pub struct SagaOutcome<G: Saga> {
    scenario: SagaScenario<G>,
    event: RecordedEvent,
    delivery: Delivery<G>,
}

impl<G: Saga> fmt::Debug for SagaOutcome<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaOutcome")
            .field("scenario", &self.scenario)
            .field("event", &self.event.event_id)
            .field("skipped", &self.delivery.skipped)
            .field("commands", &self.delivery.commands.len())
            .field("compensations", &self.delivery.compensations.len())
            .field("result", &self.delivery.result)
            .finish()
    }
}

#[allow(
    clippy::return_self_not_must_use,
    reason = "an assertion may end the statement; it returns the outcome only to chain the next"
)]
impl<G: Saga> SagaOutcome<G> {
    /// The event delivered (a deadline event after [`SagaScenario::when_deadline`]).
    #[must_use]
    pub fn event(&self) -> &RecordedEvent {
        &self.event
    }

    /// Asserts that the delivery issued exactly `expected`, in order: the reaction's commands
    /// (a rejected one included, later ones dropped) and those of
    /// [`on_rejected`](Saga::on_rejected), compensations excluded.
    ///
    /// # Panics
    ///
    /// When the delivery failed or issued other commands.
    #[track_caller]
    pub fn then_commands(self, expected: impl IntoIterator<Item = G::Command>) -> Self
    where
        G::Command: PartialEq + fmt::Debug,
    {
        self.assert_ok();
        let expected: Vec<G::Command> = expected.into_iter().collect();
        assert_eq!(
            self.delivery.commands,
            expected,
            "saga {}: commands",
            G::NAME
        );
        self
    }

    /// Asserts that the delivery issued exactly the compensations `expected`, in the order
    /// issued (last completed step first).
    ///
    /// # Panics
    ///
    /// When the delivery failed or issued other compensations.
    #[track_caller]
    pub fn then_compensations(self, expected: impl IntoIterator<Item = G::Command>) -> Self
    where
        G::Command: PartialEq + fmt::Debug,
    {
        self.assert_ok();
        let expected: Vec<G::Command> = expected.into_iter().collect();
        assert_eq!(
            self.delivery.compensations,
            expected,
            "saga {}: compensations",
            G::NAME
        );
        self
    }

    /// Asserts the instance's pending deadline after the delivery (`None`: none).
    ///
    /// # Panics
    ///
    /// When the delivery failed or the deadline differs.
    #[track_caller]
    pub fn then_deadline(self, expected: impl Into<Option<DateTime<Utc>>>) -> Self {
        self.assert_ok();
        assert_eq!(
            self.scenario.deadline(),
            expected.into(),
            "saga {}: deadline",
            G::NAME
        );
        self
    }

    /// Checks the instance's state after the delivery, as stored (through JSON): `check`
    /// asserts on it, or pass the expected state with [`then_state_eq`](Self::then_state_eq).
    ///
    /// # Panics
    ///
    /// When the delivery failed, the state does not decode, or `check` panics.
    #[track_caller]
    pub fn then_state(self, check: impl FnOnce(&G::State)) -> Self {
        self.assert_ok();
        check(&self.scenario.decoded_state());
        self
    }

    /// Asserts that the instance's state after the delivery, as stored, equals `expected`.
    ///
    /// # Panics
    ///
    /// When the delivery failed or the state differs.
    #[track_caller]
    pub fn then_state_eq(self, expected: &G::State) -> Self
    where
        G::State: PartialEq + fmt::Debug,
    {
        self.then_state(|state| assert_eq!(state, expected, "saga {}: state", G::NAME))
    }

    /// Asserts that the saga ignored the event or had handled it already: nothing issued,
    /// nothing stored.
    ///
    /// # Panics
    ///
    /// When the delivery did anything.
    #[track_caller]
    pub fn then_skipped(self) -> Self {
        self.assert_ok();
        assert!(
            self.delivery.skipped,
            "saga {}: the event was handled, not skipped",
            G::NAME
        );
        self
    }

    /// The delivery's error; `check` asserts on it.
    ///
    /// # Panics
    ///
    /// When the delivery succeeded.
    #[track_caller]
    pub fn then_error(self, check: impl FnOnce(&SagaDeliveryError<G::Error>)) {
        match &self.delivery.result {
            Ok(()) => panic!("saga {}: the delivery succeeded", G::NAME),
            Err(e) => check(e),
        }
    }

    /// Continues the scenario: the delivery becomes a given event.
    #[must_use]
    pub fn and(self) -> SagaScenario<G> {
        self.scenario
    }

    #[track_caller]
    fn assert_ok(&self) {
        if let Err(e) = &self.delivery.result {
            panic!("saga {}: the delivery failed: {e} ({e:?})", G::NAME);
        }
    }
}
