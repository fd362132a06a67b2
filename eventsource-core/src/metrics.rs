//! Metric names, recorded through the [`metrics`](https://docs.rs/metrics) facade when the
//! `metrics` feature is on. The library never installs a recorder: the application does.

/// Commands executed by a repository, labelled `aggregate` and `outcome`
/// (`ok`, `rejected`, `conflict`, `error`).
pub const COMMANDS_TOTAL: &str = "eventsource_commands_total";
/// Events appended by a repository, labelled `aggregate`.
pub const EVENTS_APPENDED_TOTAL: &str = "eventsource_events_appended_total";
/// Append conflicts met by a repository (each one retried or surfaced), labelled `aggregate`.
pub const CONFLICTS_TOTAL: &str = "eventsource_conflicts_total";
/// Time from loading to a committed append, in seconds, labelled `aggregate`.
pub const COMMAND_DURATION_SECONDS: &str = "eventsource_command_duration_seconds";

/// Describes every metric to the installed recorder; call once after installing it.
pub fn describe() {
    #[cfg(feature = "metrics")]
    {
        use metrics::{Unit, describe_counter, describe_histogram};
        describe_counter!(COMMANDS_TOTAL, "commands executed, by outcome");
        describe_counter!(EVENTS_APPENDED_TOTAL, "events appended by commands");
        describe_counter!(
            CONFLICTS_TOTAL,
            "optimistic-concurrency conflicts met by commands"
        );
        describe_histogram!(
            COMMAND_DURATION_SECONDS,
            Unit::Seconds,
            "command latency from load to committed append"
        );
    }
}

/// Records one finished command.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn command(
    aggregate: &'static str,
    outcome: &'static str,
    events: usize,
    conflicts: u32,
    started: std::time::Instant,
) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!(COMMANDS_TOTAL, "aggregate" => aggregate, "outcome" => outcome)
            .increment(1);
        if events > 0 {
            metrics::counter!(EVENTS_APPENDED_TOTAL, "aggregate" => aggregate)
                .increment(events as u64);
        }
        if conflicts > 0 {
            metrics::counter!(CONFLICTS_TOTAL, "aggregate" => aggregate)
                .increment(u64::from(conflicts));
        }
        metrics::histogram!(COMMAND_DURATION_SECONDS, "aggregate" => aggregate)
            .record(started.elapsed().as_secs_f64());
    }
}
