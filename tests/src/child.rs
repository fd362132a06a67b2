//! What the child processes of the crash tests (`src/bin/*_child.rs`) share: how they tell the
//! parent where they are, and how they read their configuration.
#![allow(clippy::print_stdout)] // the parent reads these lines

use std::io::Write as _;

/// Prints `line` for the parent, at once.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // The parent waits for the line; if it is gone there is no one to tell.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The environment variable `name`, or an error naming it.
///
/// # Errors
///
/// When `name` is unset or not Unicode.
pub fn var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|e| format!("{name}: {e}"))
}

/// A client of the Redis at `url`: one node's URL, or a cluster's node URLs separated by
/// commas (how the crash tests pass `REDIS_CLUSTER_URLS`).
///
/// # Errors
///
/// When a URL does not parse.
pub fn redis_client(url: &str) -> redis::RedisResult<eventsource_redis::RedisClient> {
    if url.contains(',') {
        eventsource_redis::RedisClient::open_cluster(url.split(','))
    } else {
        eventsource_redis::RedisClient::open(url)
    }
}
