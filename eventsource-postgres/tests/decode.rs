//! A stored payload that no longer deserializes gives a typed error naming the event; nothing
//! else of the stream is lost.

mod support;

use eventsource_core::{
    Aggregate, DomainEvent, EventStore, ExpectedVersion, LoadError, NewEvent, Repository,
    VersionRange,
};
use eventsource_postgres::PgEventStore;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum WalletEvent {
    Funded { cents: u64 },
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "wallet", event = WalletEvent)]
struct Wallet {
    cents: u64,
}

impl WalletEventHandler for Wallet {
    fn when_funded(&mut self, e: wallet_event::Funded) {
        self.cents += e.cents;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_payload_is_a_typed_error_naming_the_event() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let store = PgEventStore::new(pool);
    let tenant = support::tenant("decode");
    let repo: Repository<Wallet, _> = Repository::new(store.clone()).with_tenant(tenant.clone());
    let stream = repo.stream_id("w");

    let good = NewEvent::from_event(&WalletEvent::Funded { cents: 5 }).unwrap();
    // Written by an older build whose field had another type.
    let bad = NewEvent::new("Funded", 1, json!({ "cents": "five" }));
    let bad_id = bad.event_id;
    let later = NewEvent::from_event(&WalletEvent::Funded { cents: 7 }).unwrap();
    store
        .append(&stream, ExpectedVersion::NoStream, vec![good, bad, later])
        .await
        .unwrap();

    let err = repo.load("w").await.unwrap_err();
    let LoadError::Decode(decode) = &err else {
        panic!("expected a decode error, got {err}");
    };
    assert_eq!(decode.event_id(), bad_id);
    assert_eq!(decode.event_type(), "Funded");
    assert_eq!(decode.version().get(), 2);
    let message = decode.to_string();
    assert!(
        message.contains(&bad_id.to_string()) && message.contains("Funded"),
        "{message}"
    );

    // The rest of the stream is intact and still decodes.
    let stored = store
        .read_stream(&stream, VersionRange::all())
        .await
        .unwrap();
    assert_eq!(stored.len(), 3);
    assert_eq!(
        stored[0].decode::<WalletEvent>().unwrap().payload,
        WalletEvent::Funded { cents: 5 }
    );
    assert!(stored[1].decode::<WalletEvent>().is_err());
    assert_eq!(
        stored[2].decode::<WalletEvent>().unwrap().payload,
        WalletEvent::Funded { cents: 7 }
    );
}
