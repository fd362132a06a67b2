//! The live path: Redis Pub/Sub, for subscriptions that ask for no durability.

use eventsource_core::bus::{BusError, BusEvent};
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::handler::Subscriber;
use super::{Running, backend};

/// Subscribes to every channel of the bus (`glob`) and hands matching events to the
/// subscriber, one after the other, until stopped. Returns once Redis confirmed the
/// subscription.
pub(super) async fn subscribe(
    client: &redis::Client,
    glob: &str,
    subscriber: Subscriber,
) -> Result<Running, BusError> {
    let mut pubsub = client.get_async_pubsub().await.map_err(backend)?;
    pubsub.psubscribe(glob).await.map_err(backend)?;
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        loop {
            let message = tokio::select! {
                () = token.cancelled() => return,
                message = messages.next() => message,
            };
            let Some(message) = message else {
                tracing::warn!("bus Pub/Sub connection closed; live subscription ended");
                return;
            };
            let event: BusEvent = match serde_json::from_slice(message.get_payload_bytes()) {
                Ok(event) => event,
                Err(e) => {
                    tracing::warn!(channel = message.get_channel_name(), error = %e, "ignoring malformed bus message");
                    continue;
                }
            };
            if let Err(e) = subscriber.handle_event(&event).await {
                // Nothing to redeliver from on this path: the event is lost, loudly.
                tracing::error!(topic = %event.topic, id = %event.id, error = %e, "live bus delivery failed");
            }
        }
    });
    Ok(Running {
        stop,
        task,
        own_group: None,
    })
}
