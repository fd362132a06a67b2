//! Metric names, recorded through the [`metrics`](https://docs.rs/metrics) facade when the
//! `metrics` feature is on. The library never installs a recorder: the application does.

/// Events a running [`PgRebuild`](crate::PgRebuild) applied so far, labelled `projection`
/// and `generation`.
pub const REBUILD_PROCESSED_EVENTS: &str = "eventsource_rebuild_processed_events";
/// Events the rebuild has to apply, as last counted, labelled as above.
pub const REBUILD_TOTAL_EVENTS: &str = "eventsource_rebuild_total_events";
/// Events the rebuild applies per second, labelled as above.
pub const REBUILD_EVENTS_PER_SECOND: &str = "eventsource_rebuild_events_per_second";
/// Seconds the rebuild expects to take still, labelled as above.
pub const REBUILD_ETA_SECONDS: &str = "eventsource_rebuild_eta_seconds";

/// Describes every metric to the installed recorder; call once after installing it.
pub fn describe() {
    #[cfg(feature = "metrics")]
    {
        use metrics::{Unit, describe_gauge};
        describe_gauge!(
            REBUILD_PROCESSED_EVENTS,
            Unit::Count,
            "events a rebuild applied"
        );
        describe_gauge!(
            REBUILD_TOTAL_EVENTS,
            Unit::Count,
            "events a rebuild has to apply"
        );
        describe_gauge!(
            REBUILD_EVENTS_PER_SECOND,
            "events a rebuild applies per second"
        );
        describe_gauge!(
            REBUILD_ETA_SECONDS,
            Unit::Seconds,
            "time a rebuild expects to take still"
        );
    }
}

/// Records a rebuild's progress.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn rebuild_progress(projection: &str, progress: &crate::RebuildProgress) {
    #[cfg(feature = "metrics")]
    {
        #[allow(clippy::cast_precision_loss, reason = "gauges are floating point")]
        let (processed, total) = (progress.processed as f64, progress.total as f64);
        let labels = [
            ("projection", projection.to_owned()),
            ("generation", progress.generation.to_string()),
        ];
        metrics::gauge!(REBUILD_PROCESSED_EVENTS, &labels).set(processed);
        metrics::gauge!(REBUILD_TOTAL_EVENTS, &labels).set(total);
        metrics::gauge!(REBUILD_EVENTS_PER_SECOND, &labels).set(progress.events_per_second);
        if let Some(eta) = progress.eta {
            metrics::gauge!(REBUILD_ETA_SECONDS, &labels).set(eta.as_secs_f64());
        }
    }
}
