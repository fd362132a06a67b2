//! The order saga of the saga crash tests (`tests/saga_crash.rs`), shared by the test and the
//! saga runner process it kills (`src/bin/saga_child.rs`).
//!
//! An order is placed with a kind ([`Kind`]) that decides its outcome. The saga reserves its
//! stock, then charges its payment, then ships it and completes the order:
//!
//! - [`Kind::Ok`]: `order-placed` → `stock-reserved` → `payment-charged` → `shipped` →
//!   `order-completed`;
//! - [`Kind::Declined`]: the payment aggregate rejects the charge; the saga hears the
//!   rejection, releases the stock (the compensation of the reservation) and cancels the order:
//!   `stock-released`, `order-cancelled` (`declined`);
//! - [`Kind::Manual`]: the payment is awaited and never comes; the order's short deadline fires
//!   and the saga cancels the order and releases the stock: `saga-deadline-reached`,
//!   `stock-released`, `order-cancelled` (`timeout`).
//!
//! Every event names its order in `payload.order`, so a test can count the events of each
//! order by type, whatever stream they are on.

use chrono::{DateTime, Utc};
use eventsource_core::{
    Aggregate, CommandContext, CommandDecider, CommandError, Compensations, DEADLINE_REACHED,
    Decided, DomainEvent, EventStore, Handle, RecordedEvent, Rejection, Repository, Saga, TenantId,
};
use serde::{Deserialize, Serialize};

/// The saga's name.
pub const SAGA: &str = "order-saga";

/// How long a [`Kind::Manual`] order waits for its payment.
pub const MANUAL_PAYMENT_WINDOW_MS: i64 = 1_500;

/// How long any other order may take before it is cancelled: longer than any test runs.
const ORDER_WINDOW_MS: i64 = 600_000;

/// What becomes of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Paid, shipped, completed.
    Ok,
    /// The card is declined: stock released, order cancelled.
    Declined,
    /// Paid by hand, never: the deadline cancels it and releases the stock.
    Manual,
}

impl Kind {
    /// The kind of the `i`-th order of a test: 60 % ok, 20 % declined, 20 % manual.
    #[must_use]
    pub fn of(i: usize) -> Self {
        match i % 10 {
            6 | 7 => Self::Declined,
            8 | 9 => Self::Manual,
            _ => Self::Ok,
        }
    }

    /// The event types of the order's whole story, each once, as the log must hold them.
    #[must_use]
    pub fn story(self) -> &'static [&'static str] {
        match self {
            Self::Ok => &[
                "order-placed",
                "stock-reserved",
                "payment-charged",
                "shipped",
                "order-completed",
            ],
            Self::Declined => &[
                "order-placed",
                "stock-reserved",
                "stock-released",
                "order-cancelled",
            ],
            Self::Manual => &[
                "order-placed",
                "stock-reserved",
                DEADLINE_REACHED,
                "stock-released",
                "order-cancelled",
            ],
        }
    }
}

/// Why an aggregate refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The payment's card was declined.
    #[error("card declined")]
    Declined,
}

/// The events of an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
pub enum OrderEvent {
    /// Placed by a customer.
    #[event(name = "order-placed")]
    Placed {
        /// The order's id.
        order: String,
        /// The stock item it takes.
        sku: String,
        /// What becomes of it.
        kind: Kind,
    },
    /// Shipped and done.
    #[event(name = "order-completed")]
    Completed {
        /// The order's id.
        order: String,
    },
    /// Given up.
    #[event(name = "order-cancelled")]
    Cancelled {
        /// The order's id.
        order: String,
        /// `declined` or `timeout`.
        reason: String,
    },
}

/// An order; accepts every command, so a command issued twice would show in the log.
#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "order", event = OrderEvent)]
pub struct Order;

impl OrderEventHandler for Order {
    fn when_placed(&mut self, _: order_event::Placed) {}
    fn when_completed(&mut self, _: order_event::Completed) {}
    fn when_cancelled(&mut self, _: order_event::Cancelled) {}
}

impl Handle for Order {
    type Command = OrderEvent;
    type Error = Refused;

    fn handle(&self, event: OrderEvent) -> Result<Vec<OrderEvent>, Refused> {
        Ok(vec![event])
    }
}

/// The events of a stock item (one stream per sku, shared by many orders).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
pub enum StockEvent {
    /// Taken for an order.
    #[event(name = "stock-reserved")]
    Reserved {
        /// The order.
        order: String,
    },
    /// Given back by an order.
    #[event(name = "stock-released")]
    Released {
        /// The order.
        order: String,
    },
}

/// A stock item; accepts every command.
#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "stock", event = StockEvent)]
pub struct Stock;

impl StockEventHandler for Stock {
    fn when_reserved(&mut self, _: stock_event::Reserved) {}
    fn when_released(&mut self, _: stock_event::Released) {}
}

impl Handle for Stock {
    type Command = StockEvent;
    type Error = Refused;

    fn handle(&self, event: StockEvent) -> Result<Vec<StockEvent>, Refused> {
        Ok(vec![event])
    }
}

/// The events of a payment (one stream per order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
pub enum PaymentEvent {
    /// Money taken.
    #[event(name = "payment-charged")]
    Charged {
        /// The order.
        order: String,
    },
}

/// A payment: refuses to charge a declined card.
#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "payment", event = PaymentEvent)]
pub struct Payment;

impl PaymentEventHandler for Payment {
    fn when_charged(&mut self, _: payment_event::Charged) {}
}

impl Handle for Payment {
    /// The order, and whether its card is declined.
    type Command = (String, bool);
    type Error = Refused;

    fn handle(&self, (order, declined): (String, bool)) -> Result<Vec<PaymentEvent>, Refused> {
        if declined {
            return Err(Refused::Declined);
        }
        Ok(vec![PaymentEvent::Charged { order }])
    }
}

/// The events of a shipment (one stream per order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
pub enum ShipmentEvent {
    /// Sent.
    #[event(name = "shipped")]
    Shipped {
        /// The order.
        order: String,
    },
}

/// A shipment; accepts every command.
#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "shipment", event = ShipmentEvent)]
pub struct Shipment;

impl ShipmentEventHandler for Shipment {
    fn when_shipped(&mut self, _: shipment_event::Shipped) {}
}

impl Handle for Shipment {
    type Command = ShipmentEvent;
    type Error = Refused;

    fn handle(&self, event: ShipmentEvent) -> Result<Vec<ShipmentEvent>, Refused> {
        Ok(vec![event])
    }
}

/// What the saga asks of the aggregates, each addressed by aggregate id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// To an order.
    Order(String, OrderEvent),
    /// To a stock item.
    Stock(String, StockEvent),
    /// To a payment: the order, whether the card is declined.
    Charge(String, bool),
    /// To a shipment.
    Ship(String, ShipmentEvent),
}

/// Where an order's saga instance stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Nothing handled yet.
    #[default]
    New,
    /// Placed; stock being reserved, payment and shipping under way.
    Placed,
    /// Completed (terminal).
    Completed,
    /// Cancelled (terminal).
    Cancelled,
}

/// An order saga instance's state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct OrderState {
    /// Where it stands.
    pub stage: Stage,
    /// The order's kind, from `order-placed`.
    pub kind: Option<Kind>,
    /// When the order is cancelled unless it completed.
    pub due: Option<DateTime<Utc>>,
    /// Why it was cancelled.
    pub reason: Option<String>,
    /// The compensations of its completed steps.
    pub compensations: Compensations<Command>,
}

impl OrderState {
    fn cancel(&mut self, reason: &str) {
        self.stage = Stage::Cancelled;
        self.reason = Some(reason.to_owned());
        self.due = None;
        self.compensations.compensate();
    }
}

/// The saga, as described in the module's documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderSaga;

/// Why the saga could not react: an event it routes does not decode.
#[derive(Debug, thiserror::Error)]
#[error("event {event_type} of order saga does not decode: {message}")]
pub struct ReactError {
    event_type: String,
    message: String,
}

fn order_of(event: &RecordedEvent) -> Option<String> {
    event.payload["order"].as_str().map(str::to_owned)
}

impl Saga for OrderSaga {
    const NAME: &'static str = SAGA;
    type State = OrderState;
    type Command = Command;
    type Error = ReactError;

    fn correlate(&self, event: &RecordedEvent) -> Option<String> {
        match event.event_type.as_str() {
            "order-placed" | "stock-reserved" | "payment-charged" | "shipped" => order_of(event),
            _ => None,
        }
    }

    fn react(
        &self,
        state: &mut OrderState,
        event: &RecordedEvent,
    ) -> Result<Vec<Command>, ReactError> {
        let order = event.stream.aggregate_id().to_owned();
        match (event.event_type.as_str(), state.stage) {
            (DEADLINE_REACHED, Stage::Placed) => {
                let order = event.payload["instance"].as_str().unwrap_or_default();
                state.cancel("timeout");
                Ok(vec![cancel_order(order, "timeout")])
            }
            ("order-placed", Stage::New) => {
                let placed = event
                    .decode::<OrderEvent>()
                    .map_err(|e| ReactError {
                        event_type: event.event_type.clone(),
                        message: e.to_string(),
                    })?
                    .payload;
                let OrderEvent::Placed { sku, kind, .. } = placed else {
                    return Ok(vec![]);
                };
                let window = if kind == Kind::Manual {
                    MANUAL_PAYMENT_WINDOW_MS
                } else {
                    ORDER_WINDOW_MS
                };
                state.stage = Stage::Placed;
                state.kind = Some(kind);
                state.due = Some(event.recorded_at + chrono::Duration::milliseconds(window));
                Ok(vec![Command::Stock(sku, StockEvent::Reserved { order })])
            }
            ("stock-reserved", Stage::Placed) => {
                let order = order_of(event).unwrap_or_default();
                Ok(match state.kind {
                    Some(Kind::Ok) => vec![Command::Charge(order, false)],
                    Some(Kind::Declined) => vec![Command::Charge(order, true)],
                    // Awaits a payment by hand, which never comes: the deadline decides.
                    Some(Kind::Manual) | None => vec![],
                })
            }
            ("payment-charged", Stage::Placed) => {
                let order = order_of(event).unwrap_or_default();
                Ok(vec![Command::Ship(
                    order.clone(),
                    ShipmentEvent::Shipped { order },
                )])
            }
            ("shipped", Stage::Placed) => {
                let order = order_of(event).unwrap_or_default();
                state.stage = Stage::Completed;
                state.due = None;
                Ok(vec![Command::Order(
                    order.clone(),
                    OrderEvent::Completed { order },
                )])
            }
            // Late news for a finished order, or out of turn: nothing to do.
            _ => Ok(vec![]),
        }
    }

    fn deadline(&self, state: &OrderState) -> Option<DateTime<Utc>> {
        state.due
    }

    fn compensation(&self, command: &Command) -> Option<Command> {
        match command {
            Command::Stock(sku, StockEvent::Reserved { order }) => Some(Command::Stock(
                sku.clone(),
                StockEvent::Released {
                    order: order.clone(),
                },
            )),
            _ => None,
        }
    }

    fn compensations<'s>(
        &self,
        state: &'s mut OrderState,
    ) -> Option<&'s mut Compensations<Command>> {
        Some(&mut state.compensations)
    }

    fn on_rejected(
        &self,
        state: &mut OrderState,
        rejection: &Rejection<'_>,
    ) -> Result<Option<Vec<Command>>, ReactError> {
        if !rejection.error.is::<Refused>() {
            return Ok(None);
        }
        let order = order_of(rejection.event).unwrap_or_default();
        state.cancel("declined");
        Ok(Some(vec![cancel_order(&order, "declined")]))
    }
}

fn cancel_order(order: &str, reason: &str) -> Command {
    Command::Order(
        order.to_owned(),
        OrderEvent::Cancelled {
            order: order.to_owned(),
            reason: reason.to_owned(),
        },
    )
}

/// Decides the saga's commands through a repository per aggregate.
#[derive(Debug, Clone)]
pub struct Aggregates<S> {
    orders: Repository<Order, S>,
    stock: Repository<Stock, S>,
    payments: Repository<Payment, S>,
    shipments: Repository<Shipment, S>,
}

impl<S: EventStore + Clone> Aggregates<S> {
    /// Repositories of `tenant` on `store`, without caches (several processes append).
    pub fn new(store: &S, tenant: &TenantId) -> Self {
        Self {
            orders: Repository::new(store.clone())
                .with_tenant(tenant.clone())
                .without_cache(),
            stock: Repository::new(store.clone())
                .with_tenant(tenant.clone())
                .without_cache(),
            payments: Repository::new(store.clone())
                .with_tenant(tenant.clone())
                .without_cache(),
            shipments: Repository::new(store.clone())
                .with_tenant(tenant.clone())
                .without_cache(),
        }
    }

    /// The orders' repository, to place orders with.
    pub fn orders(&self) -> &Repository<Order, S> {
        &self.orders
    }
}

impl<S: EventStore + Clone> CommandDecider<Command> for Aggregates<S> {
    type Error = CommandError<Refused>;

    async fn decide(
        &self,
        command: Command,
        ctx: &CommandContext,
    ) -> Result<Option<Decided>, Self::Error> {
        match command {
            Command::Order(id, c) => self.orders.decide((id, c), ctx).await,
            Command::Stock(id, c) => self.stock.decide((id, c), ctx).await,
            Command::Charge(id, declined) => {
                self.payments
                    .decide((id.clone(), (id, declined)), ctx)
                    .await
            }
            Command::Ship(id, c) => self.shipments.decide((id, c), ctx).await,
        }
    }

    fn rejection<'e>(
        &self,
        error: &'e Self::Error,
    ) -> Option<&'e (dyn std::error::Error + Send + Sync + 'static)> {
        error.rejection().map(|e| e as _)
    }
}
