//! The per-stream order of the global log, under concurrent appends of every kind.

use std::collections::HashMap;

use crate::envelope::StreamId;
use crate::store::{EventStore, ExpectedVersion, LogFilter, StoreError};

use super::{event, settled_log, stream, tenant};

/// Writers append to a few shared streams at once, each append in its own call but several
/// streams per writer in turn and in a different order per writer (so a store that commits
/// concurrent appends together sees transactions that hold one stream while they wait for
/// another), with `Any`, `StreamExists` and `Exact` expectations: along the log, every stream's
/// versions are exactly `1..=n`, in that order.
pub async fn streams_stay_in_version_order_along_the_log<S: EventStore + Clone + 'static>(
    store: &S,
) {
    let t = tenant();
    let hot: Vec<StreamId> = (0..4).map(|i| stream(&t, &format!("hot-{i}"))).collect();
    for s in &hot {
        store
            .append(s, ExpectedVersion::NoStream, vec![event(0)])
            .await
            .expect("first event");
    }
    let tasks: Vec<_> = (0..16u64)
        .map(|task| {
            let (store, hot) = (store.clone(), hot.clone());
            tokio::spawn(async move {
                let mut written = 0u64;
                for i in 0..12u64 {
                    let s = &hot[usize::try_from((task + i * (task % 3 + 1)) % 4).unwrap_or(0)];
                    let n = 1 + task * 100 + i;
                    let expected = match (task + i) % 3 {
                        0 => ExpectedVersion::Any,
                        1 => ExpectedVersion::StreamExists,
                        _ => ExpectedVersion::Exact(
                            store.stream_version(s).await.expect("stream version"),
                        ),
                    };
                    let batch = if i % 4 == 0 {
                        vec![event(n), event(n + 50)]
                    } else {
                        vec![event(n)]
                    };
                    let size = batch.len() as u64;
                    match store.append(s, expected, batch).await {
                        Ok(_) => written += size,
                        Err(StoreError::Conflict { .. })
                            if matches!(expected, ExpectedVersion::Exact(_)) => {}
                        Err(e) => panic!("append to {s} with {expected}: {e}"),
                    }
                }
                written
            })
        })
        .collect();
    let mut written = 4;
    for task in tasks {
        written += task.await.expect("task");
    }
    let expected_len = usize::try_from(written).expect("event count fits usize");
    let log = settled_log(store, LogFilter::tenant(t.clone()), expected_len).await;
    assert_eq!(
        log.len(),
        expected_len,
        "every appended event is in the log once"
    );
    let mut last: HashMap<&StreamId, u64> = HashMap::new();
    for e in &log {
        let previous = last.insert(&e.stream, e.version.get()).unwrap_or(0);
        assert_eq!(
            e.version.get(),
            previous + 1,
            "{} version {} follows version {previous} along the log (at {})",
            e.stream,
            e.version,
            e.position
        );
    }
}
