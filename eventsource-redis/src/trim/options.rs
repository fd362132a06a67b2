//! Tuning of scheduled trimming.

use std::time::Duration;

/// How often a [`Trimmer`](crate::Trimmer) trims and how much recent history it keeps.
///
/// Defaults: a pass every minute, keeping at least the last 24 hours. Whatever the retention,
/// an entry some consumer group has not acknowledged, or not yet read, is never trimmed (see
/// [`trim_with_retention`](crate::trim_with_retention)); the retention only keeps more. A day
/// covers a consumer deployed or restarted a day late that starts from the beginning, and an
/// operator looking at yesterday's entries; the event store keeps everything in any case.
/// Lower it when a day of entries is too much memory (a day at 100 events/s of 1 KiB is about
/// 9 GB).
///
/// ```
/// # use eventsource_redis::TrimOptions;
/// # use std::time::Duration;
/// let options = TrimOptions::default()
///     .with_interval(Duration::from_mins(5))
///     .with_retention(Duration::from_hours(1));
/// assert_eq!(options.retention(), Duration::from_hours(1));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrimOptions {
    pub(crate) interval: Duration,
    pub(crate) retention: Duration,
}

impl Default for TrimOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_mins(1),
            retention: Duration::from_hours(24),
        }
    }
}

impl TrimOptions {
    /// Time between two passes (default 1 minute; at least 1 ms). The first pass comes one
    /// interval after the start.
    #[must_use]
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Entries recorded less than `retention` ago are kept even when every group has
    /// acknowledged them (default 24 hours; zero keeps only what the groups still need).
    #[must_use]
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Time between two passes.
    #[must_use]
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How much recent history is kept.
    #[must_use]
    pub fn retention(&self) -> Duration {
        self.retention
    }
}
