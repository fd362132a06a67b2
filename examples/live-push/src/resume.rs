//! Resuming: what a connection receives, from `Last-Event-ID` on, with nothing missed or
//! doubled.
//!
//! A connection's events come from two sources: the live fan-out ([`Hub`]) and the store's
//! log. On connect the connection first **subscribes** to the fan-out (its events buffer), then
//! **replays** its tenant's log after the client's last position from the store, then
//! **drains** the fan-out, skipping every event at or below the last position it has passed.
//!
//! Why the seam is exact: an event reaches the fan-out only after the relay read it from the
//! log, and the log only grows visible in order, so every event fanned out before the
//! subscription is in the replay; every event fanned out after it is in the buffer. A tenant's
//! events arrive over the fan-out in log order (one Redis stream per tenant, read in order), so
//! skipping positions at or below the last one passed drops exactly the doubles. A connection
//! that falls behind the fan-out's capacity replays again from its last position the same way.

use std::sync::Arc;

use eventsource_core::store::read_log;
use eventsource_core::{EventStore, LogFilter, LogPosition, RecordedEvent, StoreError};
use futures::StreamExt as _;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::error::PushError;
use crate::hub::Hub;
use crate::rooms::Rooms;

/// Parses a `Last-Event-ID`: a log position `<transaction>-<position>`. An empty value means
/// none (a browser's `EventSource` that has seen no id sends none).
///
/// ```
/// # use live_push::resume::parse_last_event_id;
/// # use eventsource_core::LogPosition;
/// assert_eq!(parse_last_event_id("812-40").unwrap(), Some(LogPosition::new(812, 40)));
/// assert_eq!(parse_last_event_id("").unwrap(), None);
/// assert!(parse_last_event_id("40").is_err());
/// ```
pub fn parse_last_event_id(value: &str) -> Result<Option<LogPosition>, PushError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    eventsource_redis::codec::parse_position(value)
        .map(Some)
        .ok_or_else(|| PushError::BadLastEventId(value.chars().take(64).collect()))
}

/// What a connection's task yields: an event for its rooms, or the store error that ended it.
pub type Delivery = Result<Arc<RecordedEvent>, StoreError>;

/// Starts the events of one connection: after `after` from the log (none if `None`), then live.
///
/// The returned channel ends when the store fails during a replay (the client reconnects and
/// resumes); the task behind it ends once the receiver is dropped or `shutdown` is cancelled.
pub fn follow<S: EventStore + Clone + 'static>(
    store: S,
    hub: &Hub,
    rooms: Rooms,
    after: Option<LogPosition>,
    replay_batch: usize,
    shutdown: CancellationToken,
) -> mpsc::Receiver<Delivery> {
    // Subscribe before replaying: see the module docs.
    let live = hub.subscribe();
    let head = hub.head(rooms.tenant_id());
    let (tx, rx) = mpsc::channel(64);
    let connection = Connection {
        rooms,
        replay_batch,
        tx,
        shutdown,
    };
    tokio::spawn(async move { connection.run(store, live, after, head).await });
    rx
}

/// One connection's task: its rooms and where its events go.
struct Connection {
    rooms: Rooms,
    replay_batch: usize,
    tx: mpsc::Sender<Delivery>,
    shutdown: CancellationToken,
}

impl Connection {
    async fn run<S: EventStore>(
        self,
        store: S,
        mut live: broadcast::Receiver<Arc<RecordedEvent>>,
        after: Option<LogPosition>,
        head: Option<LogPosition>,
    ) {
        // The highest position of the tenant passed so far (sent or not in the rooms). Without
        // a `Last-Event-ID` the connection starts at what the fan-out last fed: events from now
        // on.
        let mut cursor = after.or(head);
        if let Some(from) = after
            && !self.replay(&store, from, &mut cursor).await
        {
            return;
        }
        loop {
            // Only the wait for live events races the client's going away: a store read is
            // never cancelled half-way (a cancelled read can leave its pooled connection inside
            // a transaction, which holds back the log's visibility horizon for every reader). A
            // replay ends at its next send once the client is gone.
            let received = tokio::select! {
                received = live.recv() => received,
                () = self.tx.closed() => return,
                () = self.shutdown.cancelled() => return,
            };
            let event = match received {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    // The fan-out dropped events for this connection: they are in the log. (A
                    // connection that has no position yet replays its tenant's whole log.)
                    tracing::debug!(missed, "connection lagged; replaying from the log");
                    let from = cursor.unwrap_or(LogPosition::START);
                    if !self.replay(&store, from, &mut cursor).await {
                        return;
                    }
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if event.tenant() != self.rooms.tenant_id()
                || cursor.is_some_and(|c| event.position <= c)
            {
                continue;
            }
            cursor = Some(event.position);
            if self.rooms.admits(&event) && self.tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    }

    /// Sends the tenant's events after `from` in the rooms; `false` when the connection is
    /// over.
    async fn replay<S: EventStore>(
        &self,
        store: &S,
        from: LogPosition,
        cursor: &mut Option<LogPosition>,
    ) -> bool {
        let filter = LogFilter::tenant(self.rooms.tenant_id().clone());
        let mut log = std::pin::pin!(read_log(store, from, self.replay_batch, filter));
        while let Some(event) = log.next().await {
            match event {
                Ok(event) => {
                    *cursor = Some(event.position);
                    if self.rooms.admits(&event) && self.tx.send(Ok(Arc::new(event))).await.is_err()
                    {
                        return false;
                    }
                }
                Err(e) => {
                    let _ = self.tx.send(Err(e)).await;
                    return false;
                }
            }
            if self.shutdown.is_cancelled() {
                return false;
            }
        }
        true
    }
}
