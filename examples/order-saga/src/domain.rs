//! The aggregates the checkout saga drives: orders, stock per sku, payments per order.

use eventsource_core::{Aggregate, DomainEvent, Handle};
use serde::{Deserialize, Serialize};

/// A card the payment provider declines.
pub(crate) const DECLINED_CARD: &str = "4000-0000-0000-0002";

/// Units of each sku on hand.
pub(crate) const STOCK_ON_HAND: i64 = 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
pub(crate) enum OrderEvent {
    #[event(name = "order-placed")]
    Placed { sku: String, qty: u32, cents: i64 },
    #[event(name = "payment-submitted")]
    PaymentSubmitted { card: String },
    #[event(name = "order-shipped")]
    Shipped,
    #[event(name = "order-cancelled")]
    Cancelled { reason: String },
}

/// Where an order ended, or stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Status {
    #[default]
    New,
    Placed,
    Paying,
    Shipped,
    Cancelled(String),
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "order", event = OrderEvent)]
pub(crate) struct Order {
    pub(crate) status: Status,
}

impl OrderEventHandler for Order {
    fn when_placed(&mut self, _: order_event::Placed) {
        self.status = Status::Placed;
    }

    fn when_payment_submitted(&mut self, _: order_event::PaymentSubmitted) {
        self.status = Status::Paying;
    }

    fn when_shipped(&mut self) {
        self.status = Status::Shipped;
    }

    fn when_cancelled(&mut self, e: order_event::Cancelled) {
        self.status = Status::Cancelled(e.reason.clone());
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum OrderCommand {
    Place { sku: String, qty: u32, cents: i64 },
    SubmitPayment { card: String },
    Ship,
    Cancel { reason: String },
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("order is {0:?}: cannot {1}")]
pub(crate) struct OrderError(Status, &'static str);

impl Handle for Order {
    type Command = OrderCommand;
    type Error = OrderError;

    fn handle(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        let refuse = |what| Err(OrderError(self.status.clone(), what));
        match (command, &self.status) {
            (OrderCommand::Place { sku, qty, cents }, Status::New) => {
                Ok(vec![OrderEvent::Placed { sku, qty, cents }])
            }
            (OrderCommand::SubmitPayment { card }, Status::Placed) => {
                Ok(vec![OrderEvent::PaymentSubmitted { card }])
            }
            (OrderCommand::Ship, Status::Paying) => Ok(vec![OrderEvent::Shipped]),
            (OrderCommand::Cancel { reason }, Status::Placed | Status::Paying) => {
                Ok(vec![OrderEvent::Cancelled { reason }])
            }
            (OrderCommand::Place { .. }, _) => refuse("place"),
            (OrderCommand::SubmitPayment { .. }, _) => refuse("pay"),
            (OrderCommand::Ship, _) => refuse("ship"),
            (OrderCommand::Cancel { .. }, _) => refuse("cancel"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
pub(crate) enum StockEvent {
    #[event(name = "stock-reserved")]
    Reserved { order: String, qty: u32 },
    #[event(name = "stock-released")]
    Released { order: String, qty: u32 },
}

/// One sku's stock.
#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "stock", event = StockEvent)]
pub(crate) struct Stock {
    /// Signed, so that a release too many would show rather than wrap.
    pub(crate) reserved: i64,
}

impl StockEventHandler for Stock {
    fn when_reserved(&mut self, e: stock_event::Reserved) {
        self.reserved += i64::from(*e.qty);
    }

    fn when_released(&mut self, e: stock_event::Released) {
        self.reserved -= i64::from(*e.qty);
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum StockCommand {
    Reserve { order: String, qty: u32 },
    Release { order: String, qty: u32 },
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("out of stock: {reserved} of {STOCK_ON_HAND} reserved, {wanted} wanted")]
pub(crate) struct OutOfStock {
    reserved: i64,
    wanted: u32,
}

impl Handle for Stock {
    type Command = StockCommand;
    type Error = OutOfStock;

    fn handle(&self, command: StockCommand) -> Result<Vec<StockEvent>, OutOfStock> {
        match command {
            StockCommand::Reserve { order, qty }
                if self.reserved + i64::from(qty) <= STOCK_ON_HAND =>
            {
                Ok(vec![StockEvent::Reserved { order, qty }])
            }
            StockCommand::Reserve { qty, .. } => Err(OutOfStock {
                reserved: self.reserved,
                wanted: qty,
            }),
            StockCommand::Release { order, qty } => Ok(vec![StockEvent::Released { order, qty }]),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
pub(crate) enum PaymentEvent {
    #[event(name = "payment-charged")]
    Charged { cents: i64 },
}

/// One order's payment.
#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "payment", event = PaymentEvent)]
pub(crate) struct Payment {
    pub(crate) charged: i64,
}

impl PaymentEventHandler for Payment {
    fn when_charged(&mut self, e: payment_event::Charged) {
        self.charged += *e.cents;
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Charge {
    pub(crate) cents: i64,
    pub(crate) card: String,
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("card declined")]
pub(crate) struct Declined;

impl Handle for Payment {
    type Command = Charge;
    type Error = Declined;

    fn handle(&self, charge: Charge) -> Result<Vec<PaymentEvent>, Declined> {
        if charge.card == DECLINED_CARD {
            return Err(Declined);
        }
        Ok(vec![PaymentEvent::Charged {
            cents: charge.cents,
        }])
    }
}
