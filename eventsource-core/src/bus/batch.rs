//! A publisher that gathers events and publishes them in batches.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{BusError, BusEvent, EventBus, validate_topic};

/// Buffers events and publishes them with [`EventBus::publish_batch`] once `max_batch` are
/// waiting, or when [`run`](Self::run) ticks its interval, or on [`flush`](Self::flush).
///
/// Events keep their order. A batch leaves the buffer only once the bus accepted it: a flush
/// that fails or is cancelled mid-publish leaves its events in front of the buffer, so the next
/// flush retries them; nothing is dropped (a batch the bus half-published before the
/// cancellation may be published twice). A malformed topic is refused by
/// [`publish`](Self::publish) itself, so it cannot poison a batch.
///
/// ```
/// # use std::{sync::Arc, time::Duration};
/// # use eventsource_core::bus::{BatchingPublisher, BusEvent, EventBus, InMemoryBus};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = InMemoryBus::new();
/// let batcher = BatchingPublisher::new(Arc::new(bus.clone()), 2, Duration::from_millis(50));
/// batcher.publish(BusEvent::new("metrics.tick", 1.into())).await?;
/// assert_eq!(bus.stats().published, 0, "buffered");
/// batcher.publish(BusEvent::new("metrics.tick", 2.into())).await?;
/// assert_eq!(bus.stats().published, 2, "a full batch is published at once");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct BatchingPublisher {
    bus: Arc<dyn EventBus>,
    max_batch: usize,
    interval: Duration,
    buffer: Mutex<Vec<BusEvent>>,
    /// One flush at a time, so batches reach the bus in buffer order.
    flushing: tokio::sync::Mutex<()>,
}

impl BatchingPublisher {
    /// Publishes to `bus` in batches of up to `max_batch` events (at least 1), and at least
    /// every `interval` while [`run`](Self::run) runs.
    #[must_use]
    pub fn new(bus: Arc<dyn EventBus>, max_batch: usize, interval: Duration) -> Self {
        Self {
            bus,
            max_batch: max_batch.max(1),
            interval,
            buffer: Mutex::default(),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    fn buffer(&self) -> MutexGuard<'_, Vec<BusEvent>> {
        self.buffer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Events waiting for a flush.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.buffer().len()
    }

    /// Buffers `event`; flushes when the buffer holds a full batch.
    ///
    /// # Errors
    ///
    /// A malformed topic (nothing is buffered), or the failure of the flush it triggered (the
    /// event stays buffered).
    pub async fn publish(&self, event: BusEvent) -> Result<(), BusError> {
        validate_topic(&event.topic)?;
        let full = {
            let mut buffer = self.buffer();
            buffer.push(event);
            buffer.len() >= self.max_batch
        };
        if full {
            self.flush().await?;
        }
        Ok(())
    }

    /// Publishes everything buffered, in batches of at most `max_batch`; returns how many
    /// events went out.
    ///
    /// # Errors
    ///
    /// The bus's error; the unpublished events stay in front of the buffer.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future keeps the batch it was publishing buffered, for the next flush.
    pub async fn flush(&self) -> Result<usize, BusError> {
        let _turn = self.flushing.lock().await;
        let mut sent = 0;
        loop {
            // A copy goes out; the events leave the buffer only once the bus took them, so a
            // flush cancelled mid-publish (select!, timeout, a dropped `run`) loses nothing.
            // `_turn` keeps other flushes off the front of the buffer meanwhile.
            let batch: Vec<BusEvent> = {
                let buffer = self.buffer();
                buffer[..buffer.len().min(self.max_batch)].to_vec()
            };
            if batch.is_empty() {
                return Ok(sent);
            }
            let count = batch.len();
            self.bus.publish_batch(batch).await?;
            self.buffer().drain(..count);
            sent += count;
        }
    }

    /// Flushes every interval until `shutdown` is cancelled, then once more. A failed flush is
    /// logged and retried at the next tick.
    ///
    /// # Cancel safety
    ///
    /// Cancel through `shutdown`, which ends with a final flush; dropping the future keeps
    /// the buffer for a later [`flush`](Self::flush).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), BusError> {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.interval) => {}
            }
            if let Err(e) = self.flush().await {
                tracing::warn!(error = %e, pending = self.pending(), "batch flush failed; retrying at the next tick");
            }
        }
        self.flush().await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{
        BusHandler, BusHealth, BusStats, InMemoryBus, Pattern, SubscribeOptions, SubscriptionId,
    };
    use futures::future::BoxFuture;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn the_interval_flushes_a_partial_batch_and_shutdown_the_rest() {
        let bus = InMemoryBus::new();
        let batcher = Arc::new(BatchingPublisher::new(
            Arc::new(bus.clone()),
            100,
            Duration::from_millis(20),
        ));
        let shutdown = CancellationToken::new();
        let runner = tokio::spawn({
            let (b, s) = (Arc::clone(&batcher), shutdown.clone());
            async move { b.run(s).await }
        });
        batcher.publish(BusEvent::new("t", 1.into())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(bus.stats().published, 1, "flushed by the interval");
        batcher.publish(BusEvent::new("t", 2.into())).await.unwrap();
        shutdown.cancel();
        runner.await.unwrap().unwrap();
        let order: Vec<_> = bus.history("t").into_iter().map(|e| e.payload).collect();
        assert_eq!(order, [serde_json::json!(1), serde_json::json!(2)]);
        assert!(
            batcher
                .publish(BusEvent::new("bad..t", 3.into()))
                .await
                .is_err()
        );
        assert_eq!(batcher.pending(), 0);
    }

    /// A bus whose first publication fails, or never finishes if `hang`.
    #[derive(Debug)]
    struct FlakyBus {
        failed_once: AtomicBool,
        hang: bool,
        inner: InMemoryBus,
    }

    impl EventBus for FlakyBus {
        fn publish(&self, event: BusEvent) -> BoxFuture<'_, Result<(), BusError>> {
            self.publish_batch(vec![event])
        }
        fn publish_batch(&self, events: Vec<BusEvent>) -> BoxFuture<'_, Result<(), BusError>> {
            if self.failed_once.swap(true, Ordering::SeqCst) {
                self.inner.publish_batch(events)
            } else if self.hang {
                Box::pin(std::future::pending())
            } else {
                Box::pin(async { Err(BusError::Backend("down".into())) })
            }
        }
        fn subscribe(
            &self,
            pattern: Pattern,
            handler: Arc<dyn BusHandler>,
            options: SubscribeOptions,
        ) -> BoxFuture<'_, Result<SubscriptionId, BusError>> {
            self.inner.subscribe(pattern, handler, options)
        }
        fn unsubscribe(&self, id: SubscriptionId) -> BoxFuture<'_, Result<bool, BusError>> {
            self.inner.unsubscribe(id)
        }
        fn health(&self) -> BoxFuture<'_, BusHealth> {
            self.inner.health()
        }
        fn stats(&self) -> BusStats {
            self.inner.stats()
        }
    }

    #[tokio::test]
    async fn a_failed_flush_keeps_its_events_in_order() {
        let inner = InMemoryBus::new();
        let bus = Arc::new(FlakyBus {
            failed_once: AtomicBool::new(false),
            hang: false,
            inner: inner.clone(),
        });
        let batcher = BatchingPublisher::new(bus, 2, Duration::from_secs(30));
        batcher.publish(BusEvent::new("t", 1.into())).await.unwrap();
        assert!(batcher.publish(BusEvent::new("t", 2.into())).await.is_err());
        assert_eq!(batcher.pending(), 2);
        // The next full buffer flushes the kept events first, then the new one.
        batcher.publish(BusEvent::new("t", 3.into())).await.unwrap();
        assert_eq!(batcher.pending(), 0);
        let order: Vec<_> = inner.history("t").into_iter().map(|e| e.payload).collect();
        assert_eq!(order, [1, 2, 3].map(|n| serde_json::json!(n)));
    }

    #[tokio::test]
    async fn a_flush_cancelled_mid_publish_keeps_its_events() {
        let inner = InMemoryBus::new();
        let bus = Arc::new(FlakyBus {
            failed_once: AtomicBool::new(false),
            hang: true,
            inner: inner.clone(),
        });
        let batcher = BatchingPublisher::new(bus, 10, Duration::from_secs(30));
        for n in 1..=3 {
            batcher.publish(BusEvent::new("t", n.into())).await.unwrap();
        }
        let cancelled = tokio::time::timeout(Duration::from_millis(20), batcher.flush()).await;
        assert!(cancelled.is_err(), "the first publication hangs");
        assert_eq!(
            batcher.pending(),
            3,
            "the cancelled batch is still buffered"
        );
        batcher.publish(BusEvent::new("t", 4.into())).await.unwrap();
        assert_eq!(batcher.flush().await.unwrap(), 4);
        assert_eq!(batcher.pending(), 0);
        let order: Vec<_> = inner.history("t").into_iter().map(|e| e.payload).collect();
        assert_eq!(order, [1, 2, 3, 4].map(|n| serde_json::json!(n)));
    }
}
