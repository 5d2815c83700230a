//! Account balances: a read model of the bank accounts of `examples/bank-account`,
//! built by a projection from the events tagged `account`.
//!
//! The view, as JSON:
//!
//! * key = the account id (the entity id): `{"balance":N,"events":K}`, the account's
//!   balance and how many of its events were folded in;
//! * key `_total`: the same shape over every account: the sum of all balances and
//!   the number of all events.
//!
//! `events` makes "exactly once" visible: an event folded in twice would show in
//! the counts even when its amount is 0. An account named `_total` would share
//! the key of the sum; the example reserves that id.
//!
//! The same projection in Python (`examples/account-balances-python`) produces the
//! same view, byte for byte.

use mneme_sdk::{export_projection, EventEnvelope, Projection, View};
use serde::{Deserialize, Serialize};

pub struct AccountBalances;

/// The bank account's events, as `examples/bank-account` stores them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type")]
pub enum AccountEvent {
    AccountCreated,
    Deposited { amount: u64 },
    Withdrawn { amount: u64 },
    AccountClosed,
}

/// The value under each key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    pub balance: u64,
    pub events: u64,
}

/// The key of the sum over all accounts.
pub const TOTAL: &str = "_total";

impl Balance {
    /// One event of the account folded in (saturating, like the entity itself).
    pub fn apply(self, event: &AccountEvent) -> Balance {
        let balance = match event {
            AccountEvent::Deposited { amount } => self.balance.saturating_add(*amount),
            AccountEvent::Withdrawn { amount } => self.balance.saturating_sub(*amount),
            AccountEvent::AccountCreated | AccountEvent::AccountClosed => self.balance,
        };
        Balance { balance, events: self.events + 1 }
    }
}

impl Projection for AccountBalances {
    type Event = AccountEvent;
    const NAME: &'static str = "account-balances";
    const TAGS: &'static [&'static str] = &["account"];

    fn handle(view: &mut View, e: &EventEnvelope<AccountEvent>) -> Result<(), String> {
        let account = e.entity_id();
        let before: Balance = view.get(account)?.unwrap_or_default();
        let after = before.apply(&e.event);
        view.put(account, &after);
        view.update(TOTAL, |total: &mut Balance| {
            total.balance = total.balance.saturating_sub(before.balance).saturating_add(after.balance);
            total.events += 1;
        })
    }
}

export_projection!(AccountBalances);

#[cfg(test)]
mod tests;
