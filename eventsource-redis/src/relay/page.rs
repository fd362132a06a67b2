//! A page of the log as one shard publishes it: what was read, where the checkpoint goes once
//! it is published, and its script calls when they were prepared ahead.

use eventsource_core::{LogPosition, RecordedEvent, Shard};

use super::publish::Calls;

/// One batch of a shard, read from the store.
pub(super) struct Page {
    /// The checkpoint the page was read after: a page read ahead is used only if the shard's
    /// checkpoint is still there.
    pub(super) after: LogPosition,
    /// Events the store returned.
    pub(super) read: usize,
    /// Fewer than a batch came back: the shard is at the log's end.
    pub(super) caught_up: bool,
    /// Where the checkpoint moves once the page is published; `None`: nothing to publish or
    /// save.
    pub(super) last: Option<LogPosition>,
    /// The shard's events of the page, in log order.
    pub(super) events: Vec<RecordedEvent>,
    /// Their script calls, when prepared ahead (while Redis ran the page before).
    pub(super) calls: Option<Calls>,
}

impl Page {
    /// The page of `events` read after `after` with `batch_size`, `head` being the log's
    /// head asked for before the read (see `EventStore::log_head`).
    pub(super) fn new(
        after: LogPosition,
        mut events: Vec<RecordedEvent>,
        head: Option<LogPosition>,
        batch_size: usize,
        shard: Shard,
    ) -> Self {
        let read = events.len();
        let caught_up = read < batch_size;
        let last_read = events.last().map(|e| e.position);
        // A short page holds every event of the shard up to the head asked for before it:
        // the checkpoint may move to the head even past the last event read.
        let last = match (last_read, head) {
            (Some(l), Some(h)) if caught_up => Some(l.max(h)),
            (None, Some(h)) if h > after => Some(h),
            (l, _) => l,
        };
        if shard.count() > 1 {
            // Again, for a store that does not filter by shard.
            events.retain(|e| shard.contains(e.tenant()));
        }
        Self {
            after,
            read,
            caught_up,
            last,
            events,
            calls: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use eventsource_core::{
        EventId, LogPosition, Metadata, RecordedEvent, Shard, StreamId, TenantId, Version,
    };
    use serde_json::json;

    use super::Page;

    fn event(tenant: &str, position: u64) -> RecordedEvent {
        RecordedEvent {
            event_id: EventId::new(),
            stream: StreamId::new(TenantId::new(tenant), "order", "1"),
            version: Version::new(position),
            position: LogPosition::new(1, position),
            event_type: "happened".to_owned(),
            schema_version: 1,
            recorded_at: chrono::Utc::now(),
            metadata: Metadata::new(),
            payload: json!({}),
        }
    }

    #[test]
    fn a_short_page_moves_to_the_head_a_full_one_to_its_last_event() {
        let one = Shard::new(0, 1);
        let after = LogPosition::new(1, 1);
        let end = LogPosition::new(1, 9);
        let head = Some(end);
        let short = Page::new(after, vec![event("a", 2)], head, 2, one);
        assert!(short.caught_up);
        assert_eq!(short.last, head);
        let full = Page::new(after, vec![event("a", 2), event("a", 3)], head, 2, one);
        assert!(!full.caught_up);
        assert_eq!(full.last, Some(LogPosition::new(1, 3)), "more may follow");
        let empty = Page::new(after, Vec::new(), head, 2, one);
        assert_eq!(empty.last, head, "nothing of the shard up to the head");
        let behind = Page::new(end, Vec::new(), Some(after), 2, one);
        assert_eq!(
            behind.last, None,
            "a head behind the checkpoint moves nothing"
        );
        let unknown = Page::new(after, Vec::new(), None, 2, one);
        assert_eq!(unknown.last, None);
    }

    #[test]
    fn a_page_keeps_only_its_shards_events() {
        let tenants = ["t-0", "t-1", "t-2", "t-3", "t-4", "t-5"];
        let events: Vec<_> = (0..6u64)
            .map(|i| event(tenants[usize::try_from(i).unwrap()], i + 1))
            .collect();
        let shard = Shard::new(1, 2);
        let page = Page::new(LogPosition::START, events.clone(), None, 10, shard);
        assert_eq!(page.read, 6);
        assert_eq!(page.last, Some(LogPosition::new(1, 6)), "the last read");
        let kept: Vec<_> = events
            .into_iter()
            .filter(|e| shard.contains(e.tenant()))
            .collect();
        assert_eq!(page.events, kept);
    }
}
