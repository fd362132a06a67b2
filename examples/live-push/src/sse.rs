//! `GET /events`: Server-Sent Events.
//!
//! Each event is an SSE message whose `id` is its log position and whose `data` is a
//! [`PushMessage`](crate::PushMessage); the first message sets the browser's `retry` delay.
//! The browser's `EventSource` sends the last id back as `Last-Event-ID` when it reconnects.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use eventsource_core::EventStore;
use futures::StreamExt as _;

use crate::message::PushMessage;
use crate::{PushError, PushState, ws::ConnectQuery};

/// Authenticates, parses the rooms and `Last-Event-ID`, then streams.
pub(crate) async fn connect<S: EventStore + Clone + 'static>(
    State(state): State<Arc<PushState<S>>>,
    headers: HeaderMap,
    Query(query): Query<ConnectQuery>,
) -> Result<Response, PushError> {
    let deliveries = query.follow(&state, &headers)?;
    let close_after = state.options.close_after.unwrap_or(usize::MAX);
    let first = Event::default()
        .retry(state.options.reconnect)
        .comment("live");
    let events = tokio_stream_of(deliveries)
        .take_while(|delivery| {
            if let Err(e) = delivery {
                tracing::warn!(error = %e, "catching up from the log failed; closing");
            }
            std::future::ready(delivery.is_ok())
        })
        .filter_map(|delivery| std::future::ready(delivery.ok()))
        .take(close_after)
        .map(|event| {
            let message = PushMessage::new(&event);
            Ok::<_, Infallible>(Event::default().id(&message.id).data(message.to_json()))
        });
    let stream = futures::stream::once(std::future::ready(Ok(first))).chain(events);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The receiver as a stream.
fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
