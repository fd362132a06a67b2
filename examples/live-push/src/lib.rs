//! Live push of a tenant's events to browsers and other clients, over Server-Sent Events
//! (`GET /events`) and WebSocket (`GET /ws`), resumable by log position.
//!
//! The flow: commands append events to the store; the relay publishes them to Redis Streams
//! (one stream per tenant); this server reads those streams as one consumer group
//! ([`pipeline::feed`]) and fans each event out in process ([`Hub`]) to every connection whose
//! rooms ([`Rooms`]) it belongs to. Each pushed event carries its [`LogPosition`] as its id, so a
//! client that reconnects with `Last-Event-ID: <position>` first gets every event of its rooms
//! after that position from the store's log, then the live ones, with nothing missed and nothing
//! twice ([`resume`]).
//!
//! A bearer token decides the tenant ([`Tokens`]); an unknown token is refused with 401 and a
//! malformed `Last-Event-ID` with 400, before anything is streamed. `GET /` serves a page that
//! lists the events as they arrive.
//!
//! [`LogPosition`]: eventsource_core::LogPosition

pub mod auth;
mod error;
pub mod hub;
mod message;
pub mod pipeline;
pub mod resume;
pub mod rooms;
mod sse;
mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use eventsource_core::EventStore;
use tokio_util::sync::CancellationToken;

pub use auth::Tokens;
pub use error::PushError;
pub use hub::{Hub, HubFeed};
pub use message::PushMessage;
pub use rooms::Rooms;

/// The page at `GET /`: opens an `EventSource` on `/events` with the page's own query string
/// (`?token=…&project=…&user=…`) and lists each event as it arrives.
pub const PAGE: &str = include_str!("page.html");

/// How the server behaves toward its clients.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// How long a browser waits before it reconnects a dropped `EventSource` (sent as the SSE
    /// `retry` field).
    pub reconnect: Duration,
    /// Closes every connection after this many events: a test knob that makes clients
    /// reconnect and resume. `None` (the default) keeps connections open.
    pub close_after: Option<usize>,
    /// Events read from the log per query while a connection catches up.
    pub replay_batch: usize,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            reconnect: Duration::from_millis(500),
            close_after: None,
            replay_batch: 500,
        }
    }
}

impl PushOptions {
    /// Closes every connection after `events` events (see [`PushOptions::close_after`]).
    #[must_use]
    pub fn with_close_after(mut self, events: usize) -> Self {
        self.close_after = Some(events);
        self
    }

    /// Sets the browsers' reconnection delay.
    #[must_use]
    pub fn with_reconnect(mut self, reconnect: Duration) -> Self {
        self.reconnect = reconnect;
        self
    }
}

/// What every request handler shares: the store to catch up from, the live fan-out, the
/// tokens and the options.
#[derive(Debug)]
pub struct PushState<S> {
    store: S,
    hub: Hub,
    tokens: Tokens,
    options: PushOptions,
    shutdown: CancellationToken,
}

impl<S> PushState<S> {
    /// The shared state of a server.
    pub fn new(store: S, hub: Hub, tokens: Tokens, options: PushOptions) -> Self {
        Self {
            store,
            hub,
            tokens,
            options,
            shutdown: CancellationToken::new(),
        }
    }

    /// Ends every connection's stream when `shutdown` is cancelled, so that a graceful
    /// shutdown of the server does not wait for clients that never hang up.
    #[must_use]
    pub fn with_shutdown(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }
}

/// The server's routes: `GET /` (the page), `GET /events` (SSE) and `GET /ws` (WebSocket).
pub fn router<S: EventStore + Clone + 'static>(state: PushState<S>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/events", get(sse::connect::<S>))
        .route("/ws", get(ws::connect::<S>))
        .with_state(Arc::new(state))
}
