//! Subscribers: the handler shape and the retry loop adapters share.

use std::future::Future;

use futures::future::BoxFuture;

use super::event::BusEvent;
use crate::retry::RetryPolicy;

/// A handler's error: anything, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Handles the events of a subscription (ADR-004's handler: `handle` plus a `can_handle`
/// filter).
///
/// Object safe, so buses store `Arc<dyn BusHandler>`. A closure
/// `Fn(BusEvent) -> impl Future<Output = Result<(), BoxError>>` is a handler that accepts
/// every event.
///
/// ```
/// # use eventsource_core::bus::{BoxError, BusEvent, BusHandler};
/// # use futures::future::BoxFuture;
/// struct OnlyUrgent;
/// impl BusHandler for OnlyUrgent {
///     fn handle<'a>(&'a self, event: &'a BusEvent) -> BoxFuture<'a, Result<(), BoxError>> {
///         Box::pin(async move {
///             tracing::info!(topic = %event.topic, "urgent");
///             Ok(())
///         })
///     }
///     fn can_handle(&self, event: &BusEvent) -> bool {
///         event.payload["urgent"] == true
///     }
/// }
/// let handler: std::sync::Arc<dyn BusHandler> = std::sync::Arc::new(OnlyUrgent);
/// assert!(!handler.can_handle(&BusEvent::new("alerts", serde_json::json!({ "urgent": false }))));
/// ```
pub trait BusHandler: Send + Sync {
    /// Handles one event; an error makes the bus retry, then dead-letter it.
    fn handle<'a>(&'a self, event: &'a BusEvent) -> BoxFuture<'a, Result<(), BoxError>>;

    /// Whether this handler wants `event` at all; events it declines count as handled and are
    /// never retried. Accepts everything by default.
    ///
    /// Keep it a cheap, pure filter: the bus calls it once per event and subscription (the
    /// in-memory bus while publishing; it may call back into the bus). In a
    /// [`Delivery::Group`](super::Delivery::Group) the adapters differ: the in-memory bus
    /// gives an event to a member that accepts it, whereas on Redis the member that reads the
    /// event asks its own handler and, if declined, acknowledges it unhandled for the whole
    /// group. Members of a group should therefore share one `can_handle`.
    fn can_handle(&self, event: &BusEvent) -> bool {
        let _ = event;
        true
    }
}

impl std::fmt::Debug for dyn BusHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusHandler")
    }
}

impl<F, Fut> BusHandler for F
where
    F: Fn(BusEvent) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    fn handle<'a>(&'a self, event: &'a BusEvent) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(self(event.clone()))
    }
}

/// Why a delivery was given up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeliveryFailure {
    /// The last error, with its sources.
    pub error: String,
    /// Handler calls made.
    pub attempts: u32,
}

/// Calls `handler` with `event` up to `retry.max_attempts()` times, sleeping `retry.delay(n)`
/// between attempts. Events the handler declines ([`BusHandler::can_handle`]) succeed at once.
/// A panicking handler is not retried (it would panic again).
///
/// Adapters call this for every delivery so that retries behave alike on every backend.
///
/// ```
/// # use eventsource_core::{RetryPolicy, bus::{BoxError, BusEvent, deliver}};
/// # use std::sync::atomic::{AtomicU32, Ordering};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let calls = AtomicU32::new(0);
/// let flaky = |_: BusEvent| {
///     let n = calls.fetch_add(1, Ordering::SeqCst);
///     async move { if n < 2 { Err::<(), BoxError>("not yet".into()) } else { Ok(()) } }
/// };
/// let retry = RetryPolicy::default().with_max_attempts(3).with_jitter(false);
/// let event = BusEvent::new("a.b", serde_json::json!(null));
/// assert!(deliver(&flaky, &event, &retry).await.is_ok());
/// assert_eq!(calls.load(Ordering::SeqCst), 3);
/// # }
/// ```
pub async fn deliver(
    handler: &(impl BusHandler + ?Sized),
    event: &BusEvent,
    retry: &RetryPolicy,
) -> Result<(), DeliveryFailure> {
    use futures::FutureExt as _;
    if !handler.can_handle(event) {
        return Ok(());
    }
    let mut attempt = 1;
    loop {
        let outcome = std::panic::AssertUnwindSafe(handler.handle(event))
            .catch_unwind()
            .await;
        let error = match outcome {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => chain(&*e),
            Err(_) => {
                return Err(DeliveryFailure {
                    error: "handler panicked".to_owned(),
                    attempts: attempt,
                });
            }
        };
        if attempt >= retry.max_attempts() {
            return Err(DeliveryFailure {
                error,
                attempts: attempt,
            });
        }
        tracing::debug!(topic = %event.topic, id = %event.id, attempt, %error, "bus handler failed; retrying");
        tokio::time::sleep(retry.delay(attempt)).await;
        attempt += 1;
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct Panics(AtomicU32);

    impl BusHandler for Panics {
        fn handle<'a>(&'a self, _: &'a BusEvent) -> BoxFuture<'a, Result<(), BoxError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { panic!("boom") })
        }
    }

    #[tokio::test]
    async fn a_panicking_handler_is_not_retried() {
        let handler = Panics(AtomicU32::new(0));
        let event = BusEvent::new("t", serde_json::json!(null));
        let failure = deliver(
            &handler,
            &event,
            &RetryPolicy::default().with_max_attempts(5),
        )
        .await
        .unwrap_err();
        assert_eq!(failure.attempts, 1);
        assert_eq!(handler.0.load(Ordering::SeqCst), 1);
        assert_eq!(failure.error, "handler panicked");
    }
}
