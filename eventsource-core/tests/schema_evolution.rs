//! Events stored by older versions of the code (older schema versions, former type names) are
//! read through the whole typed upcaster chain by the repository and by typed projections.

use eventsource_core::{
    Aggregate, DomainEvent, Envelope, EventStore, ExpectedVersion, InMemoryCheckpointStore,
    InMemoryEventStore, NewEvent, ProjectionRunner, Repository, StreamId, TenantId, Typed,
    TypedProjection,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum WalletEvent {
    #[event(name = "wallet-funded", alias = "funded", version = 3)]
    #[event(upcast_from(1 = FundedV1, 2 = FundedV2))]
    Funded { cents: u64, source: String },
}

/// Version 1 (stored as `funded`): whole units.
#[derive(Debug, Deserialize)]
struct FundedV1 {
    units: u64,
}

/// Version 2 (stored as `funded`): cents, no source.
#[derive(Debug, Deserialize)]
struct FundedV2 {
    cents: u64,
}

impl From<FundedV1> for FundedV2 {
    fn from(v1: FundedV1) -> Self {
        Self {
            cents: v1.units * 100,
        }
    }
}

impl From<FundedV2> for WalletEvent {
    fn from(v2: FundedV2) -> Self {
        WalletEvent::Funded {
            cents: v2.cents,
            source: "unknown".into(),
        }
    }
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "wallet", event = WalletEvent)]
struct Wallet {
    cents: u64,
    sources: Vec<String>,
}

impl WalletEventHandler for Wallet {
    fn when_funded(&mut self, e: wallet_event::Funded) {
        self.cents += e.cents;
        self.sources.push(e.source.clone());
    }
}

/// What three releases of the code stored, oldest first.
fn history() -> Vec<NewEvent> {
    vec![
        NewEvent::new("funded", 1, json!({ "units": 2 })),
        NewEvent::new("funded", 2, json!({ "cents": 150 })),
        NewEvent::from_event(&WalletEvent::Funded {
            cents: 25,
            source: "card".into(),
        })
        .expect("encodes"),
    ]
}

#[tokio::test]
async fn the_repository_reads_every_stored_version_through_the_chain() {
    let store = InMemoryEventStore::new();
    let wallets = Repository::<Wallet, _>::new(store.clone());
    store
        .append(
            &wallets.stream_id("w-1"),
            ExpectedVersion::NoStream,
            history(),
        )
        .await
        .expect("append");
    let wallet = wallets.load("w-1").await.expect("loads");
    assert_eq!(wallet.state().cents, 200 + 150 + 25);
    assert_eq!(wallet.state().sources, ["unknown", "unknown", "card"]);
    assert_eq!(wallet.version().get(), 3);
}

#[derive(Debug, Default)]
struct Total(u64);

impl TypedProjection for Total {
    type Event = WalletEvent;
    type Error = std::convert::Infallible;

    fn name(&self) -> &'static str {
        "total"
    }

    async fn apply(&mut self, event: &Envelope<WalletEvent>) -> Result<(), Self::Error> {
        let WalletEvent::Funded { cents, .. } = event.payload;
        assert_eq!(
            event.schema_version, 3,
            "decoded events carry the current version"
        );
        self.0 += cents;
        Ok(())
    }
}

#[tokio::test]
async fn a_typed_projection_knows_former_names() {
    let store = InMemoryEventStore::new();
    let stream = StreamId::new(TenantId::default(), "wallet", "w-1");
    store
        .append(&stream, ExpectedVersion::NoStream, history())
        .await
        .expect("append");
    let mut runner = ProjectionRunner::new(
        store,
        InMemoryCheckpointStore::new(),
        Typed::new(Total::default()),
    );
    assert_eq!(runner.catch_up().await.expect("catch up"), 3);
    assert_eq!(runner.projection().get_ref().0, 375);
}

#[tokio::test]
async fn temporal_reads_replay_old_versions_through_the_chain() {
    let store = InMemoryEventStore::new();
    let wallets = Repository::<Wallet, _>::new(store.clone());
    let stream = wallets.stream_id("w-1");
    store
        .append(&stream, ExpectedVersion::NoStream, history())
        .await
        .expect("append");

    let at = |v| wallets.load_at("w-1", eventsource_core::Version::new(v));
    assert_eq!(at(0).await.expect("v0").state().cents, 0);
    assert_eq!(at(1).await.expect("v1").state().cents, 200);
    let v2 = at(2).await.expect("v2");
    assert_eq!((v2.state().cents, v2.version().get()), (350, 2));
    let beyond = at(9).await.expect("past the end");
    assert_eq!((beyond.state().cents, beyond.version().get()), (375, 3));

    let recorded = store
        .read_stream(&stream, eventsource_core::VersionRange::all())
        .await
        .expect("read");
    let as_of = |at| wallets.load_as_of("w-1", at);
    let before = recorded[0].recorded_at - chrono::Duration::seconds(1);
    assert_eq!(as_of(before).await.expect("before").version().get(), 0);
    let second = as_of(recorded[1].recorded_at).await.expect("at the second");
    assert!(
        second.version().get() >= 2,
        "events recorded by then are applied"
    );
    let now = as_of(chrono::Utc::now()).await.expect("now");
    assert_eq!(now.state().cents, 375);
}
