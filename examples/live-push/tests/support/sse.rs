//! A minimal Server-Sent Events client over reqwest's byte stream.

use std::time::Duration;

use futures::StreamExt as _;
use live_push::PushMessage;

/// One open SSE response.
pub struct SseClient {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl SseClient {
    /// Opens `url` with `last_event_id` as the `Last-Event-ID` header; the response status
    /// must be 200.
    pub async fn open(url: &str, last_event_id: Option<&str>) -> Self {
        let mut request = reqwest::Client::new()
            .get(url)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("GET /events");
        assert_eq!(response.status(), 200, "GET {url}");
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next event (skipping comments and `retry`-only frames), or `None` when the
    /// server closed the response; fails after 20 s.
    pub async fn next(&mut self) -> Option<(String, PushMessage)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let mut id = None;
                let mut data = String::new();
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim_start().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if let Some(id) = id {
                    let message: PushMessage = serde_json::from_str(&data).expect("JSON data");
                    return Some((id, message));
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .expect("an SSE event within 20 s")?;
            self.buffer
                .push_str(std::str::from_utf8(&chunk.expect("the body")).expect("UTF-8"));
        }
    }

    /// The ids of the next `count` events.
    pub async fn ids(&mut self, count: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for _ in 0..count {
            let (id, message) = self.next().await.expect("the stream stays open");
            assert_eq!(id, message.id, "the SSE id is the message's id");
            ids.push(id);
        }
        ids
    }
}
