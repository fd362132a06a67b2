//! Compensation: the record of a saga's completed steps, rejections the saga hears as outcomes,
//! and [`Reaction`], the command-by-command driver shared by every saga handler.

use std::collections::VecDeque;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{DeadlineReached, Saga, SagaError, SagaKey, SagaState};
use crate::envelope::RecordedEvent;
use crate::repository::CommandContext;

/// The compensations of a saga instance's completed steps, kept in its state (see
/// [`Saga::compensations`]).
///
/// When a command the saga issued succeeds and the saga declares the command that undoes it
/// ([`Saga::compensation`]), the handler records that compensation here. When a later step
/// fails — the aggregate rejects its command ([`Saga::on_rejected`] compensates by default), or
/// the saga calls [`compensate`](Self::compensate) from a reaction, typically to a deadline —
/// the handler issues the recorded compensations in reverse order, each once, and moves them
/// to [`ran`](Self::ran). Compensations are commands like any other: correlated with the event
/// being handled and with event ids derived from the instance and that event, so a redelivery
/// appends nothing twice; they are stored with the state, so they never run again.
///
/// ```
/// use eventsource_core::saga::Compensations;
///
/// let mut steps = Compensations::new();
/// steps.record("release stock");
/// steps.record("refund payment");
/// assert_eq!(steps.pending(), ["release stock", "refund payment"]);
/// assert!(steps.ran().is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(serialize = "C: Serialize", deserialize = "C: DeserializeOwned"))]
pub struct Compensations<C> {
    /// Compensations of the completed steps not undone yet, in the order the steps completed.
    #[serde(default)]
    pending: Vec<C>,
    /// Compensations issued, in the order they were issued.
    #[serde(default)]
    ran: Vec<C>,
    /// Set by `compensate`, consumed by the reaction that set it (never stored).
    #[serde(skip)]
    requested: bool,
}

impl<C> Default for Compensations<C> {
    fn default() -> Self {
        Self {
            pending: Vec::new(),
            ran: Vec::new(),
            requested: false,
        }
    }
}

impl<C> Compensations<C> {
    /// An empty record.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `compensation` for a step that completed; handlers do this for every succeeded
    /// command [`Saga::compensation`] names a compensation for.
    pub fn record(&mut self, compensation: C) {
        self.pending.push(compensation);
    }

    /// Asks for the pending compensations to be issued, last completed step first, once the
    /// current reaction's commands are issued.
    pub fn compensate(&mut self) {
        self.requested = true;
    }

    /// The compensations of the completed steps, in the order the steps completed.
    #[must_use]
    pub fn pending(&self) -> &[C] {
        &self.pending
    }

    /// The compensations issued, in the order they were issued.
    #[must_use]
    pub fn ran(&self) -> &[C] {
        &self.ran
    }

    /// Whether [`compensate`](Self::compensate) was called in the current reaction.
    #[must_use]
    pub fn is_requested(&self) -> bool {
        self.requested
    }

    /// The next compensation to issue, if one was requested: the last pending one, moved to
    /// `ran` (the caller issues a copy).
    fn next(&mut self) -> Option<C>
    where
        C: Clone,
    {
        if !self.requested {
            return None;
        }
        let Some(next) = self.pending.pop() else {
            self.requested = false;
            return None;
        };
        self.ran.push(next.clone());
        Some(next)
    }
}

/// A command of the saga that its aggregate rejected, as [`Saga::on_rejected`] hears it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Rejection<'a> {
    /// The event whose reaction issued the command.
    pub event: &'a RecordedEvent,
    /// The command's index among the commands the reaction returned.
    pub index: usize,
    /// The aggregate's error (for a [`Repository`](crate::Repository), its
    /// [`Handle::Error`](crate::Handle::Error)): downcast it to tell rejections apart.
    pub error: &'a (dyn std::error::Error + Send + Sync + 'static),
}

/// Where a command of a [`Reaction`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The `index`-th command `react` returned.
    React(usize),
    /// The `index`-th command `on_rejected` returned.
    Rejected(usize),
    /// The `index`-th compensation issued in this reaction.
    Compensation(usize),
}

/// The commands a saga instance issues for one event, one at a time, and its state after them:
/// what [`plan`](super::plan) returns when the event is to be handled. A handler asks
/// [`next_command`](Self::next_command) for a command, issues it, and reports the outcome with
/// [`succeeded`](Self::succeeded) or [`rejected`](Self::rejected) (a rejection may queue the
/// saga's reaction to it and the compensations); when no command is left it stores
/// [`finish`](Self::finish)'s state over [`expected`](Self::expected).
///
/// Each command's context continues the event's correlation, names it as the cause, and derives
/// event ids from the saga, the instance, the event and where the command comes from, so the
/// same delivery handled again issues the same commands with the same ids.
pub struct Reaction<'a, G: Saga> {
    saga: &'a G,
    key: &'a SagaKey,
    event: &'a RecordedEvent,
    fired: Option<DeadlineReached>,
    state: G::State,
    expected: u64,
    namespace: Uuid,
    queue: VecDeque<(Origin, G::Command)>,
    /// The command issued last, and the compensation to record if it succeeds.
    issued: Option<(Origin, Option<G::Command>)>,
    compensations: usize,
    rejected_once: bool,
}

impl<G: Saga> std::fmt::Debug for Reaction<'_, G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaction")
            .field("saga", &G::NAME)
            .field("key", &self.key)
            .field("event", &self.event.event_id)
            .field("expected", &self.expected)
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl<'a, G: Saga> Reaction<'a, G> {
    pub(super) fn new(
        saga: &'a G,
        key: &'a SagaKey,
        event: &'a RecordedEvent,
        fired: Option<DeadlineReached>,
        state: G::State,
        expected: u64,
        commands: Vec<G::Command>,
    ) -> Self {
        let namespace = super::id_namespace(G::NAME, key.instance(), event);
        Self {
            saga,
            key,
            event,
            fired,
            state,
            expected,
            namespace,
            queue: commands
                .into_iter()
                .enumerate()
                .map(|(i, c)| (Origin::React(i), c))
                .collect(),
            issued: None,
            compensations: 0,
            rejected_once: false,
        }
    }

    /// The stored version the new state replaces (0: none).
    #[must_use]
    pub fn expected(&self) -> u64 {
        self.expected
    }

    /// The saga's state as the reaction left it so far.
    #[must_use]
    pub fn state(&self) -> &G::State {
        &self.state
    }

    /// The next command to issue, with its context; `None` when every command was issued.
    /// Report its outcome before asking for the next one.
    pub fn next_command(&mut self) -> Option<(G::Command, CommandContext)> {
        let (origin, command) = if let Some(next) = self.queue.pop_front() {
            next
        } else {
            let next = self.saga.compensations(&mut self.state)?.next()?;
            self.compensations += 1;
            (Origin::Compensation(self.compensations - 1), next)
        };
        let undo = match origin {
            Origin::Compensation(_) => None,
            _ => self.saga.compensation(&command),
        };
        self.issued = Some((origin, undo));
        Some((command, self.context(origin)))
    }

    /// Whether the command [`next_command`](Self::next_command) handed out last is a
    /// compensation.
    #[must_use]
    pub fn is_compensation(&self) -> bool {
        matches!(self.issued, Some((Origin::Compensation(_), _)))
    }

    /// The command from [`next_command`](Self::next_command) succeeded: its compensation, if
    /// the saga declares one, is recorded in the state.
    pub fn succeeded(&mut self) {
        if let Some((_, Some(undo))) = self.issued.take()
            && let Some(record) = self.saga.compensations(&mut self.state)
        {
            record.record(undo);
        }
    }

    /// The aggregate rejected the command from [`next_command`](Self::next_command) with
    /// `error`. The commands the reaction had not issued yet are dropped (they were later
    /// steps), and the saga hears the rejection ([`Saga::on_rejected`]): the commands it
    /// returns are issued next, then the compensations it asked for. Returns `false` when the
    /// rejection stays a failure: the saga does not handle it, it rejected a compensation or a
    /// command issued in reaction to a rejection; report the dispatch error then.
    ///
    /// # Errors
    ///
    /// [`SagaError::React`] when `on_rejected` fails.
    pub fn rejected<D: std::error::Error + 'static>(
        &mut self,
        error: &(dyn std::error::Error + Send + Sync + 'static),
    ) -> Result<bool, SagaError<G::Error, D>> {
        let Some((Origin::React(index), _)) = self.issued.take() else {
            return Ok(false);
        };
        if self.rejected_once {
            return Ok(false);
        }
        let rejection = Rejection {
            event: self.event,
            index,
            error,
        };
        let Some(commands) = self
            .saga
            .on_rejected(&mut self.state, &rejection)
            .map_err(SagaError::React)?
        else {
            return Ok(false);
        };
        tracing::debug!(saga = G::NAME, instance = self.key.instance(), index, error = %error, "command rejected");
        self.rejected_once = true;
        self.queue = commands
            .into_iter()
            .enumerate()
            .map(|(i, c)| (Origin::Rejected(i), c))
            .collect();
        Ok(true)
    }

    /// The new state to store over [`expected`](Self::expected), its next deadline included.
    ///
    /// # Errors
    ///
    /// [`SagaError::Encode`] when the state does not serialize.
    pub fn finish<D: std::error::Error + 'static>(
        self,
    ) -> Result<SagaState, SagaError<G::Error, D>> {
        // A deadline that just fired is consumed even if the saga names it again.
        let deadline = self
            .saga
            .deadline(&self.state)
            .filter(|d| self.fired.as_ref().is_none_or(|f| f.due_at != *d));
        let state = serde_json::to_value(&self.state).map_err(SagaError::Encode)?;
        Ok(SagaState::new(
            state,
            G::STATE_VERSION,
            self.expected + 1,
            self.event.position,
        )
        .with_deadline(deadline))
    }

    fn context(&self, origin: Origin) -> CommandContext {
        // `React` keeps the ids of the first release (the index alone) so that commands
        // re-issued across an upgrade are still deduplicated.
        let ns = match origin {
            Origin::React(i) => Uuid::new_v5(&self.namespace, &(i as u64).to_be_bytes()),
            Origin::Rejected(i) => {
                Uuid::new_v5(&self.namespace, format!("rejected/{i}").as_bytes())
            }
            Origin::Compensation(i) => {
                Uuid::new_v5(&self.namespace, format!("compensation/{i}").as_bytes())
            }
        };
        CommandContext::caused_by(self.event).with_deterministic_ids(ns)
    }
}
