//! Waiting that a shutdown cuts short, shared by the relay, the runner and the job queue.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Sleeps for `delay`, or until `shutdown` is cancelled, whichever comes first.
pub(crate) async fn sleep_or_cancel(shutdown: &CancellationToken, delay: Duration) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(delay) => {}
    }
}
