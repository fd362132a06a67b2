//! Handling a batch in lanes: one aggregate stream's entries in order, lanes side by side.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use eventsource_core::{EventHandler, RecordedEvent};
use futures::FutureExt as _;
use redis::AsyncCommands as _;
use redis::streams::StreamPendingCountReply;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::ConsumerRunner;
use super::delivery::{Content, Delivery};
use crate::backoff::sleep_or_cancel;
use crate::error::{RunnerError, error_chain, panic_message};

/// What became of one entry in a lane.
pub(super) struct LaneOutcome {
    pub(super) acks: Vec<(usize, String)>,
    pub(super) successes: u32,
    pub(super) failures: u32,
    pub(super) error: Option<RunnerError>,
}

/// Why a handler gave up on an entry.
struct Failure {
    error: String,
    /// The error will recur (the handler said so, or it panicked): dead-letter without
    /// further deliveries.
    permanent: bool,
}

impl<H: EventHandler> ConsumerRunner<H> {
    /// Handles a lane's entries in order.
    pub(super) async fn run_lane(
        &self,
        lane: &[Delivery],
        shutdown: &CancellationToken,
    ) -> LaneOutcome {
        let mut outcome = LaneOutcome {
            acks: Vec::new(),
            successes: 0,
            failures: 0,
            error: None,
        };
        let mut blocked = HashSet::new();
        for d in lane {
            let Content::Event(event) = &d.content else {
                continue;
            };
            if shutdown.is_cancelled() {
                break;
            }
            if d.in_pending && blocked.contains(&event.stream) {
                continue;
            }
            match self.handle(d, event, shutdown).await {
                Ok(()) => {
                    self.counters.handled.fetch_add(1, Ordering::Relaxed);
                    outcome.successes += 1;
                    outcome.acks.push((d.key, d.id.clone()));
                }
                Err(Failure { error, permanent }) => {
                    outcome.failures += 1;
                    if shutdown.is_cancelled() && d.in_pending && !permanent {
                        break;
                    }
                    let deliveries = if d.in_pending && !permanent {
                        match self.delivery_count(d).await {
                            Ok(n) => n,
                            Err(e) => {
                                outcome.error = Some(e);
                                break;
                            }
                        }
                    } else {
                        self.options.max_deliveries
                    };
                    if deliveries >= self.options.max_deliveries {
                        tracing::warn!(
                            stream = %self.read_keys[d.key],
                            id = %d.id,
                            deliveries,
                            error = %error,
                            "handler gave up; dead-lettering entry"
                        );
                        if let Err(e) = self.dead_letter(d, Some(event), &error, deliveries).await {
                            outcome.error = Some(e);
                            break;
                        }
                    } else {
                        tracing::info!(
                            stream = %self.read_keys[d.key],
                            id = %d.id,
                            deliveries,
                            error = %error,
                            "handler failed; entry stays pending for redelivery"
                        );
                        blocked.insert(event.stream.clone());
                    }
                }
            }
        }
        outcome
    }

    /// permanent error (see [`EventHandler::is_permanent`]) is not retried.
    async fn handle(
        &self,
        d: &Delivery,
        event: &RecordedEvent,
        shutdown: &CancellationToken,
    ) -> Result<(), Failure> {
        let attempts = self.options.retry.max_attempts();
        let mut attempt = 1;
        loop {
            let span = tracing::debug_span!(
                "eventsource.redis.handle",
                stream = %self.read_keys[d.key],
                id = %d.id,
                group = %self.group,
                event_type = %event.event_type,
                attempt,
            );
            let call = std::panic::AssertUnwindSafe(self.handler.handle(event).instrument(span))
                .catch_unwind();
            let outcome = match self.options.handler_timeout {
                Some(limit) => tokio::time::timeout(limit, call).await.map_err(|_| limit),
                None => Ok(call.await),
            };
            // The handler's verdict: the error text and whether it will recur.
            let (error, permanent) = match outcome {
                Ok(Ok(Ok(()))) => return Ok(()),
                Ok(Ok(Err(e))) => (error_chain(&e), self.handler.is_permanent(&e)),
                // A panicking handler would panic again on every redelivery and take the
                // runner down each time: dead-letter the entry instead.
                Ok(Err(panic)) => (panic_message(panic.as_ref()), true),
                Err(limit) => (format!("handler timed out after {limit:?}"), false),
            };
            self.counters
                .failed_attempts
                .fetch_add(1, Ordering::Relaxed);
            if permanent || attempt >= attempts || shutdown.is_cancelled() {
                return Err(Failure { error, permanent });
            }
            tracing::debug!(id = %d.id, attempt, %error, "handler failed; retrying");
            sleep_or_cancel(shutdown, self.options.retry.delay(attempt)).await;
            attempt += 1;
        }
    }

    /// How often Redis delivered the entry.
    async fn delivery_count(&self, d: &Delivery) -> Result<u64, RunnerError> {
        let reply: StreamPendingCountReply = self
            .conn
            .clone()
            .xpending_count(&self.read_keys[d.key], &self.group, &d.id, &d.id, 1)
            .await?;
        Ok(reply.ids.first().map_or(1, |p| p.times_delivered as u64))
    }
}
