//! Shared helpers of the end-to-end tests.
#![allow(dead_code, unreachable_pub, clippy::missing_panics_doc)]

use std::time::Duration;

/// The value of a service URL variable, or `None` after a notice; under `CI` a missing service
/// is a failure, never a skip.
pub fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) => Some(url),
        Err(e) if std::env::var_os("CI").is_some() => panic!("{var} must be set in CI: {e}"),
        Err(_) => {
            eprintln!("{var} is not set; skipping this test (run scripts/test)");
            None
        }
    }
}

/// Waits up to 20 s for `check` to hold.
pub async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A unique name for keys, tenants and databases.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

pub mod order;
