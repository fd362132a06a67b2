//! The checkout saga: reserve the stock, take the payment, ship; release the stock when the
//! payment is declined or does not come before the deadline.

use chrono::{DateTime, Utc};
use eventsource_core::{
    CommandContext, CommandDecider, CommandError, Compensations, DEADLINE_REACHED, Decided,
    EventDecodeError, RecordedEvent, Rejection, Repository, Saga, TenantId,
};
use eventsource_postgres::PgEventStore;
use serde::{Deserialize, Serialize};

use crate::domain::{
    Charge, Declined, Order, OrderCommand, OrderError, OrderEvent, OutOfStock, Payment, Stock,
    StockCommand,
};

/// A command of the saga, addressed to an aggregate by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Command {
    Stock(String, StockCommand),
    Payment(String, Charge),
    Order(String, OrderCommand),
}

/// Where a checkout stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Phase {
    #[default]
    Started,
    AwaitingPayment,
    Shipped,
    Cancelled(String),
}

/// A checkout's state, stored by the saga store.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct CheckoutState {
    pub(crate) phase: Phase,
    order: String,
    cents: i64,
    due: Option<DateTime<Utc>>,
    compensations: Compensations<Command>,
}

/// One checkout per order; the payment must come within `window` of the order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checkout {
    pub(crate) window: chrono::Duration,
}

pub(crate) const DECLINED: &str = "payment declined";
pub(crate) const TIMED_OUT: &str = "no payment in time";
pub(crate) const OUT_OF_STOCK: &str = "out of stock";

impl Checkout {
    /// Cancels the order and releases what was reserved.
    fn cancel(state: &mut CheckoutState, reason: &str) -> Vec<Command> {
        state.phase = Phase::Cancelled(reason.to_owned());
        state.due = None;
        state.compensations.compensate();
        vec![Command::Order(
            state.order.clone(),
            OrderCommand::Cancel {
                reason: reason.to_owned(),
            },
        )]
    }
}

impl Saga for Checkout {
    const NAME: &'static str = "checkout";
    type State = CheckoutState;
    type Command = Command;
    type Error = EventDecodeError;

    fn correlate(&self, event: &RecordedEvent) -> Option<String> {
        matches!(
            event.event_type.as_str(),
            "order-placed" | "payment-submitted"
        )
        .then(|| event.stream.aggregate_id().to_owned())
    }

    fn react(
        &self,
        state: &mut CheckoutState,
        event: &RecordedEvent,
    ) -> Result<Vec<Command>, EventDecodeError> {
        if event.event_type == DEADLINE_REACHED {
            // The deadline is cleared once the payment comes, so a pending one means none came.
            if state.phase != Phase::AwaitingPayment {
                return Ok(vec![]);
            }
            return Ok(Self::cancel(state, TIMED_OUT));
        }
        let order = event.stream.aggregate_id().to_owned();
        match event.decode::<OrderEvent>()?.payload {
            OrderEvent::Placed { sku, qty, cents } if state.phase == Phase::Started => {
                state.phase = Phase::AwaitingPayment;
                state.cents = cents;
                state.due = Some(event.recorded_at + self.window);
                state.order.clone_from(&order);
                Ok(vec![Command::Stock(
                    sku,
                    StockCommand::Reserve { order, qty },
                )])
            }
            OrderEvent::PaymentSubmitted { card } if state.phase == Phase::AwaitingPayment => {
                state.phase = Phase::Shipped;
                state.due = None;
                let cents = state.cents;
                Ok(vec![
                    Command::Payment(order.clone(), Charge { cents, card }),
                    Command::Order(order, OrderCommand::Ship),
                ])
            }
            _ => Ok(vec![]),
        }
    }

    fn deadline(&self, state: &CheckoutState) -> Option<DateTime<Utc>> {
        state.due
    }

    fn compensation(&self, command: &Command) -> Option<Command> {
        match command {
            Command::Stock(sku, StockCommand::Reserve { order, qty }) => Some(Command::Stock(
                sku.clone(),
                StockCommand::Release {
                    order: order.clone(),
                    qty: *qty,
                },
            )),
            _ => None,
        }
    }

    fn compensations<'s>(
        &self,
        state: &'s mut CheckoutState,
    ) -> Option<&'s mut Compensations<Command>> {
        Some(&mut state.compensations)
    }

    fn on_rejected(
        &self,
        state: &mut CheckoutState,
        rejection: &Rejection<'_>,
    ) -> Result<Option<Vec<Command>>, EventDecodeError> {
        // The shipping that followed a declined charge is dropped with it.
        if rejection.error.is::<Declined>() {
            return Ok(Some(Self::cancel(state, DECLINED)));
        }
        if rejection.error.is::<OutOfStock>() {
            return Ok(Some(Self::cancel(state, OUT_OF_STOCK)));
        }
        Ok(None)
    }

    fn is_permanent(&self, _: &EventDecodeError) -> bool {
        true
    }
}

/// Decides the saga's commands through a repository per aggregate, for one tenant.
#[derive(Debug, Clone)]
pub(crate) struct Shop {
    pub(crate) orders: Repository<Order, PgEventStore>,
    pub(crate) stock: Repository<Stock, PgEventStore>,
    pub(crate) payments: Repository<Payment, PgEventStore>,
}

impl Shop {
    pub(crate) fn new(store: &PgEventStore, tenant: &TenantId) -> Self {
        Self {
            orders: Repository::new(store.clone()).with_tenant(tenant.clone()),
            stock: Repository::new(store.clone()).with_tenant(tenant.clone()),
            payments: Repository::new(store.clone()).with_tenant(tenant.clone()),
        }
    }
}

/// Why the shop could not decide a command.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ShopError {
    #[error(transparent)]
    Order(CommandError<OrderError>),
    #[error(transparent)]
    Stock(CommandError<OutOfStock>),
    #[error(transparent)]
    Payment(CommandError<Declined>),
}

impl CommandDecider<Command> for Shop {
    type Error = ShopError;

    async fn decide(
        &self,
        command: Command,
        ctx: &CommandContext,
    ) -> Result<Option<Decided>, ShopError> {
        match command {
            Command::Order(id, c) => self
                .orders
                .decide((id, c), ctx)
                .await
                .map_err(ShopError::Order),
            Command::Stock(id, c) => self
                .stock
                .decide((id, c), ctx)
                .await
                .map_err(ShopError::Stock),
            Command::Payment(id, c) => self
                .payments
                .decide((id, c), ctx)
                .await
                .map_err(ShopError::Payment),
        }
    }

    fn rejection<'e>(
        &self,
        error: &'e ShopError,
    ) -> Option<&'e (dyn std::error::Error + Send + Sync + 'static)> {
        match error {
            ShopError::Order(e) => e.rejection().map(|e| e as _),
            ShopError::Stock(e) => e.rejection().map(|e| e as _),
            ShopError::Payment(e) => e.rejection().map(|e| e as _),
        }
    }
}
