//! Headless Chromium (Debian's `chromium`) driven over the DevTools protocol: open a page,
//! evaluate JavaScript in it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

/// A headless Chromium with one page open; killed (its whole process group) when dropped.
pub struct Browser {
    child: tokio::process::Child,
    profile: PathBuf,
    page: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Browser {
    /// Opens `url` in a new headless Chromium, or `None` (after a notice) when `chromium` is
    /// not on the PATH; under `CI` that is a failure, never a skip.
    pub async fn open(url: &str) -> Option<Self> {
        let found = std::process::Command::new("chromium")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            assert!(
                std::env::var_os("CI").is_none(),
                "`chromium` is not on the PATH: install Debian's package (apt-get install chromium)"
            );
            eprintln!("`chromium` is not on the PATH; skipping this test (run scripts/test)");
            return None;
        }
        let profile = std::env::temp_dir().join(super::unique("live-push-chromium"));
        std::fs::create_dir_all(&profile).expect("a profile directory");
        let child = tokio::process::Command::new("chromium")
            .args([
                "--headless",
                // Tests run as root in containers, where the sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        let port = wait_for_port(&profile).await;
        let page = page_socket(port, url).await;
        let (page, _) = tokio_tungstenite::connect_async(page.as_str())
            .await
            .expect("the DevTools socket of the page");
        Some(Self {
            child,
            profile,
            page,
            next_id: 0,
        })
    }

    /// The value of the JavaScript expression `expression` in the page.
    pub async fn eval(&mut self, expression: &str) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = serde_json::json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": { "expression": expression, "returnByValue": true },
        });
        self.page
            .send(Message::Text(command.to_string().into()))
            .await
            .expect("send to DevTools");
        loop {
            let message = tokio::time::timeout(Duration::from_secs(20), self.page.next())
                .await
                .expect("DevTools answers within 20 s")
                .expect("the DevTools socket stays open")
                .expect("a DevTools message");
            let Message::Text(text) = message else {
                continue;
            };
            let reply: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "DevTools error: {reply}");
                return reply["result"]["result"]["value"].clone();
            }
        }
    }

    /// Evaluates `expression` every 50 ms until `done` holds for its value (20 s at most).
    pub async fn wait_for(
        &mut self,
        expression: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let value = self.eval(expression).await;
            if done(&value) {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page did not show what was expected in 20 s: {expression} = {value}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium runs renderer and helper processes: end its whole process group.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The DevTools port Chromium chose, from the profile's `DevToolsActivePort` file.
async fn wait_for_port(profile: &std::path::Path) -> u16 {
    let file = profile.join("DevToolsActivePort");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Some(port) = text.lines().next().and_then(|l| l.trim().parse().ok())
        {
            return port;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromium did not open its DevTools port in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The DevTools socket URL of the page showing `url`.
async fn page_socket(port: u16, url: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let targets: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await
            .expect("the DevTools target list")
            .json()
            .await
            .expect("JSON");
        let page = targets.as_array().and_then(|targets| {
            targets.iter().find(|t| {
                t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url))
            })
        });
        if let Some(socket) = page.and_then(|p| p["webSocketDebuggerUrl"].as_str()) {
            return socket.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromium did not open {url} in 30 s: {targets}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
