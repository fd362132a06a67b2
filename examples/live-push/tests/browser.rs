//! The page in headless Chromium: events appear as they arrive, and a connection the server
//! drops every three events resumes (the browser's `EventSource` sends `Last-Event-ID`) with
//! no event missed or doubled; a second page in a project room shows that room only.

mod support;

use std::time::Duration;

use live_push::PushOptions;
use support::Server;
use support::chromium::Browser;

const STATUS: &str = "document.getElementById('status').textContent";
const IDS: &str =
    "JSON.stringify([...document.querySelectorAll('#events li')].map(li => li.dataset.id))";

fn shown(value: &serde_json::Value) -> Vec<String> {
    serde_json::from_str(value.as_str().expect("a JSON string")).expect("a list of ids")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_events_and_resumes_dropped_connections_exactly() {
    let options = PushOptions::default()
        .with_close_after(3)
        .with_reconnect(Duration::from_millis(100));
    let Some(server) = Server::start(options).await else {
        return;
    };
    let (a, token_a) = server.a.clone();
    let (b, _) = server.b.clone();
    let Some(mut browser) = Browser::open(&server.url(&format!("/?token={token_a}"))).await else {
        server.stop().await;
        return;
    };
    // A second page in project alpha's room only.
    let alpha_url = server.url(&format!("/?token={token_a}&project=alpha"));
    let mut alpha_page = Browser::open(&alpha_url)
        .await
        .expect("chromium, found above");
    for page in [&mut browser, &mut alpha_page] {
        page.wait_for(STATUS, |v| v == "live").await;
    }

    let (mut appended, mut in_alpha) = (Vec::new(), Vec::new());
    for round in 0..5 {
        server.append(&b, 1, Some("alpha")).await;
        let project = if round % 2 == 0 { "alpha" } else { "beta" };
        let positions = server.append(&a, 2, Some(project)).await;
        if project == "alpha" {
            in_alpha.extend(positions.iter().map(ToString::to_string));
        }
        appended.extend(positions);
    }
    let expected: Vec<String> = appended.iter().map(ToString::to_string).collect();
    let alpha_ids = alpha_page
        .wait_for(IDS, |v| shown(v).len() >= in_alpha.len())
        .await;
    assert_eq!(
        shown(&alpha_ids),
        in_alpha,
        "the project room only, across resumes"
    );
    drop(alpha_page);
    let ids = browser
        .wait_for(IDS, |v| shown(v).len() >= expected.len())
        .await;
    assert_eq!(
        shown(&ids),
        expected,
        "every event of the tenant once, in order"
    );

    // Nothing more arrives late: the next event shown is the next one appended.
    let sentinel = server.append(&a, 1, None).await;
    let ids = browser
        .wait_for(IDS, |v| shown(v).len() > expected.len())
        .await;
    let mut with_sentinel = expected.clone();
    with_sentinel.push(sentinel[0].to_string());
    assert_eq!(shown(&ids), with_sentinel);

    let reconnects = browser
        .eval("Number(document.getElementById('reconnects').textContent)")
        .await;
    assert!(
        reconnects.as_u64().is_some_and(|n| n >= 3),
        "the server dropped the connection after every 3 events: {reconnects} reconnects"
    );
    let text = browser
        .eval("document.getElementById('events').textContent")
        .await;
    assert!(text.as_str().is_some_and(|t| t.contains("task-updated")));
    drop(browser);
    server.stop().await;
}
