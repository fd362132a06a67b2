//! `GET /ws`: WebSocket, and the connection parameters both transports share.
//!
//! Each event is a text message holding a [`PushMessage`](crate::PushMessage) whose `id` is the
//! event's log position. To resume, reconnect with that id as the `Last-Event-ID` header or, from
//! a browser (which cannot set headers on a WebSocket), as `?last_event_id=`. Messages from the
//! client are ignored, except a close.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use eventsource_core::EventStore;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::message::PushMessage;
use crate::resume::{self, Delivery};
use crate::rooms::Rooms;
use crate::{PushError, PushState};

/// The query parameters of `/events` and `/ws`.
#[derive(Debug, Deserialize)]
pub(crate) struct ConnectQuery {
    token: Option<String>,
    project: Option<String>,
    user: Option<String>,
    last_event_id: Option<String>,
}

impl ConnectQuery {
    /// Checks the token, the rooms and the resume position, then starts the connection's
    /// events; nothing is started when any of them is wrong.
    pub(crate) fn follow<S: EventStore + Clone + 'static>(
        &self,
        state: &PushState<S>,
        headers: &HeaderMap,
    ) -> Result<mpsc::Receiver<Delivery>, PushError> {
        let tenant = state.tokens.authenticate(headers, self.token.as_deref())?;
        let rooms = Rooms::from_query(tenant, self.project.as_deref(), self.user.as_deref())?;
        let last_event_id = match headers.get("last-event-id") {
            Some(value) => {
                let value = value
                    .to_str()
                    .map_err(|_| PushError::BadLastEventId("(not text)".to_owned()))?;
                resume::parse_last_event_id(value)?
            }
            None => resume::parse_last_event_id(self.last_event_id.as_deref().unwrap_or(""))?,
        };
        Ok(resume::follow(
            state.store.clone(),
            &state.hub,
            rooms,
            last_event_id,
            state.options.replay_batch,
            state.shutdown.clone(),
        ))
    }
}

/// Authenticates, parses the rooms and `Last-Event-ID`, then upgrades.
pub(crate) async fn connect<S: EventStore + Clone + 'static>(
    State(state): State<Arc<PushState<S>>>,
    headers: HeaderMap,
    Query(query): Query<ConnectQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, PushError> {
    let deliveries = query.follow(&state, &headers)?;
    let close_after = state.options.close_after.unwrap_or(usize::MAX);
    Ok(upgrade.on_upgrade(move |socket| push(socket, deliveries, close_after)))
}

async fn push(mut socket: WebSocket, mut deliveries: mpsc::Receiver<Delivery>, limit: usize) {
    let mut sent = 0;
    while sent < limit {
        tokio::select! {
            delivery = deliveries.recv() => {
                let event = match delivery {
                    Some(Ok(event)) => event,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "catching up from the log failed; closing");
                        break;
                    }
                    None => break,
                };
                let text = PushMessage::new(&event).to_json();
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
                sent += 1;
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}
