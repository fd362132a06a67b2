//! Rust clients over SSE and WebSocket against a real server on PostgreSQL and Redis: rooms,
//! tenant isolation, resuming with `Last-Event-ID`, and refused connections.

mod support;

use std::time::Duration;

use eventsource_core::LogPosition;
use futures::StreamExt as _;
use live_push::{PushMessage, PushOptions};
use support::Server;
use support::sse::SseClient;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _};

fn ids(positions: &[LogPosition]) -> Vec<String> {
    positions.iter().map(ToString::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_sends_a_tenants_rooms_and_resumes_after_the_last_event_id() {
    let Some(server) = Server::start(PushOptions::default()).await else {
        return;
    };
    let (a, token_a) = server.a.clone();
    let (b, _) = server.b.clone();
    let mut all = SseClient::open(&server.url(&format!("/events?token={token_a}")), None).await;
    let mut alpha = SseClient::open(
        &server.url(&format!("/events?token={token_a}&project=alpha")),
        None,
    )
    .await;

    // Tenant B's events come first: a client of tenant A must never see them.
    server.append(&b, 3, Some("alpha")).await;
    let in_alpha = server.append(&a, 3, Some("alpha")).await;
    let in_beta = server.append(&a, 2, Some("beta")).await;
    let mut first = in_alpha.clone();
    first.extend(&in_beta);
    assert_eq!(
        all.ids(5).await,
        ids(&first),
        "the tenant room, in log order"
    );
    assert_eq!(alpha.ids(3).await, ids(&in_alpha), "the project room only");

    // Disconnect, miss some events, reconnect with the last id: exactly the missed ones.
    let last = first.last().copied().expect("five events");
    drop(all);
    server.append(&b, 2, None).await;
    let missed = server.append(&a, 4, None).await;
    let mut resumed = SseClient::open(
        &server.url(&format!("/events?token={token_a}")),
        Some(&last.to_string()),
    )
    .await;
    assert_eq!(
        resumed.ids(4).await,
        ids(&missed),
        "the missed events, in order"
    );
    // Then live, with nothing doubled in between: the next event is the next one appended.
    let next = server.append(&a, 1, None).await;
    assert_eq!(
        resumed.ids(1).await,
        ids(&next),
        "live after the replay, none twice"
    );

    // A reconnect from the start of the log replays the tenant's whole log.
    let mut from_start = SseClient::open(
        &server.url(&format!("/events?token={token_a}")),
        Some("0-0"),
    )
    .await;
    let whole = server.log(&a).await;
    assert_eq!(whole.len(), 10);
    assert_eq!(from_start.ids(10).await, ids(&whole));
    drop((alpha, resumed, from_start));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_connections_closed_every_few_events_resume_with_none_missed_or_doubled() {
    let Some(server) = Server::start(PushOptions::default().with_close_after(3)).await else {
        return;
    };
    let (a, token_a) = server.a.clone();
    let url = server.url(&format!("/events?token={token_a}"));
    let mut client = SseClient::open(&url, None).await;
    let appended = server.append(&a, 10, None).await;
    let mut received = Vec::new();
    let mut reconnects = 0;
    while received.len() < appended.len() {
        if let Some((id, _)) = client.next().await {
            received.push(id);
        } else {
            reconnects += 1;
            client = SseClient::open(&url, received.last().map(String::as_str)).await;
        }
    }
    assert_eq!(received, ids(&appended));
    assert_eq!(reconnects, 3, "closed after events 3, 6 and 9");
    server.stop().await;
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_open(server: &Server, query: &str, last_event_id: Option<&str>) -> Ws {
    let url = format!("ws://{}/ws?{query}", server.addr);
    let mut request = url.into_client_request().expect("a request");
    if let Some(id) = last_event_id {
        request
            .headers_mut()
            .insert("last-event-id", id.parse().expect("a header value"));
    }
    tokio_tungstenite::connect_async(request)
        .await
        .expect("the upgrade")
        .0
}

async fn ws_ids(ws: &mut Ws, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    while ids.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a message within 20 s")
            .expect("the socket stays open")
            .expect("a message");
        if let tungstenite::Message::Text(text) = message {
            let message: PushMessage = serde_json::from_str(&text).expect("JSON");
            ids.push(message.id);
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sends_a_tenants_rooms_and_resumes_after_the_last_event_id() {
    let Some(server) = Server::start(PushOptions::default()).await else {
        return;
    };
    let (a, token_a) = server.a.clone();
    let (b, token_b) = server.b.clone();
    let mut ws_a = ws_open(&server, &format!("token={token_a}"), None).await;
    let mut ws_b = ws_open(&server, &format!("token={token_b}&project=beta"), None).await;

    let of_a = server.append(&a, 3, Some("beta")).await;
    let of_b = server.append(&b, 2, Some("alpha")).await;
    let of_b_beta = server.append(&b, 2, Some("beta")).await;
    assert_eq!(ws_ids(&mut ws_a, 3).await, ids(&of_a));
    assert_eq!(
        ws_ids(&mut ws_b, 2).await,
        ids(&of_b_beta),
        "B's beta room only"
    );
    assert!(!of_b.is_empty());

    // Close, miss events, resume with the header; then with the query parameter.
    ws_a.close(None).await.expect("close");
    let missed = server.append(&a, 3, None).await;
    let mut ws_a = ws_open(
        &server,
        &format!("token={token_a}"),
        Some(&of_a[2].to_string()),
    )
    .await;
    assert_eq!(ws_ids(&mut ws_a, 3).await, ids(&missed));
    let next = server.append(&a, 1, None).await;
    assert_eq!(ws_ids(&mut ws_a, 1).await, ids(&next), "live, none twice");
    drop(ws_a);
    let mut ws_q = ws_open(
        &server,
        &format!("token={token_a}&last_event_id={}", missed[0]),
        None,
    )
    .await;
    let mut rest = missed[1..].to_vec();
    rest.extend(&next);
    assert_eq!(ws_ids(&mut ws_q, 3).await, ids(&rest));
    drop((ws_b, ws_q));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tokens_and_malformed_ids_are_refused_before_streaming() {
    let Some(server) = Server::start(PushOptions::default()).await else {
        return;
    };
    let token_a = server.a.1.clone();
    let http = reqwest::Client::new();
    let status = |path: String, last: Option<&'static str>| {
        let mut request = http.get(server.url(&path));
        if let Some(last) = last {
            request = request.header("last-event-id", last);
        }
        async move { request.send().await.expect("a response").status().as_u16() }
    };
    assert_eq!(status("/events".into(), None).await, 401, "no token");
    assert_eq!(status("/events?token=nope".into(), None).await, 401);
    assert_eq!(
        status(format!("/events?token={token_a}x"), None).await,
        401,
        "a token's extension is another token"
    );
    assert_eq!(
        status(format!("/events?token={token_a}"), Some("12")).await,
        400,
        "not a position"
    );
    assert_eq!(
        status(format!("/events?token={token_a}&last_event_id=a-b"), None).await,
        400
    );
    assert_eq!(
        status(format!("/events?token={token_a}&project="), None).await,
        400,
        "an empty room"
    );
    let bearer = http
        .get(server.url("/events"))
        .bearer_auth(&token_a)
        .send()
        .await
        .expect("a response");
    assert_eq!(bearer.status(), 200, "a bearer token works too");
    drop(bearer);
    let ws = tokio_tungstenite::connect_async(format!("ws://{}/ws?token=nope", server.addr)).await;
    match ws {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected a 401, got {other:?}"),
    }
    let page = http.get(server.url("/")).send().await.expect("the page");
    assert_eq!(page.status(), 200);
    assert!(page.text().await.expect("HTML").contains("EventSource"));
    server.stop().await;
}

/// Ids over SSE from the start of the log until `count`, reconnecting with the last id whenever the server closes.
async fn sse_until(server: &Server, token: &str, count: usize) -> (Vec<String>, usize) {
    let url = server.url(&format!("/events?token={token}"));
    // From the start of the log: the writer may already have begun.
    let mut client = SseClient::open(&url, Some("0-0")).await;
    let (mut received, mut reconnects) = (Vec::new(), 0);
    while received.len() < count {
        if let Some((id, _)) = client.next().await {
            received.push(id);
        } else {
            reconnects += 1;
            client = SseClient::open(&url, received.last().map(String::as_str)).await;
        }
    }
    (received, reconnects)
}

/// Ids over WebSocket from the start of the log until `count`, reconnecting with the last id whenever the server closes.
async fn ws_until(server: &Server, token: &str, count: usize) -> (Vec<String>, usize) {
    let query = format!("token={token}");
    let mut ws = ws_open(server, &query, Some("0-0")).await;
    let (mut received, mut reconnects) = (Vec::new(), 0);
    while received.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a message within 20 s");
        match message {
            Some(Ok(tungstenite::Message::Text(text))) => {
                let message: PushMessage = serde_json::from_str(&text).expect("JSON");
                received.push(message.id);
            }
            Some(Ok(tungstenite::Message::Close(_)) | Err(_)) | None => {
                reconnects += 1;
                ws = ws_open(server, &query, received.last().map(String::as_str)).await;
            }
            Some(Ok(_)) => {}
        }
    }
    (received, reconnects)
}

/// Events appended while the clients of the concurrent test reconnect.
const EVENTS: usize = 80;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reconnecting_while_events_are_appended_miss_nothing_and_get_nothing_twice() {
    // A fan-out of two events makes connections lag and catch up from the log as well.
    let options = PushOptions::default().with_close_after(7);
    let Some(server) = Server::start_with(options, 2).await else {
        return;
    };
    let (a, token_a) = server.a.clone();
    let (b, _) = server.b.clone();
    let writer = async {
        for i in 0..EVENTS {
            server.append_one(&a, i).await;
            if i % 4 == 0 {
                server.append_one(&b, i).await;
            }
        }
    };
    let ((), sse, ws) = tokio::join!(
        writer,
        sse_until(&server, &token_a, EVENTS),
        ws_until(&server, &token_a, EVENTS)
    );
    let log = ids(&server.log(&a).await);
    assert_eq!(log.len(), EVENTS);
    assert_eq!(sse.0, log, "SSE: the tenant's log, once each, in order");
    assert_eq!(
        ws.0, log,
        "WebSocket: the tenant's log, once each, in order"
    );
    assert!(
        sse.1 >= EVENTS / 7 && ws.1 >= EVENTS / 7,
        "reconnects: {} {}",
        sse.1,
        ws.1
    );
    server.stop().await;
}
