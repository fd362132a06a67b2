//! With the `metrics` feature, commands are counted by outcome.
#![cfg(feature = "metrics")]

use eventsource_core::{Aggregate, DomainEvent, Handle, InMemoryEventStore, Repository};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum PingEvent {
    Pinged,
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "pinger", event = PingEvent)]
struct Pinger;

impl PingEventHandler for Pinger {
    fn when_pinged(&mut self) {}
}

#[derive(Debug, thiserror::Error)]
#[error("no")]
struct No;

impl Handle for Pinger {
    type Command = bool;
    type Error = No;
    fn handle(&self, ok: bool) -> Result<Vec<PingEvent>, No> {
        if ok {
            Ok(vec![PingEvent::Pinged])
        } else {
            Err(No)
        }
    }
}

#[test]
fn commands_are_counted_by_outcome() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            eventsource_core::metrics::describe();
            let repo = Repository::<Pinger, _>::new(InMemoryEventStore::new());
            repo.execute("p", true).await.expect("ok");
            repo.execute("p", true).await.expect("ok");
            repo.execute("p", false).await.expect_err("rejected");
        });
    });
    let counters: Vec<(String, Vec<String>, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(n) => Some((
                key.key().name().to_owned(),
                key.key()
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect(),
                n,
            )),
            _ => None,
        })
        .collect();
    let count = |name: &str, label: &str| {
        counters
            .iter()
            .filter(|(n, labels, _)| n == name && labels.iter().any(|l| l == label))
            .map(|(_, _, v)| *v)
            .sum::<u64>()
    };
    assert_eq!(
        count(eventsource_core::metrics::COMMANDS_TOTAL, "outcome=ok"),
        2
    );
    assert_eq!(
        count(
            eventsource_core::metrics::COMMANDS_TOTAL,
            "outcome=rejected"
        ),
        1
    );
    assert_eq!(
        count(
            eventsource_core::metrics::EVENTS_APPENDED_TOTAL,
            "aggregate=pinger"
        ),
        2
    );
}
