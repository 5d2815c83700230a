//! A bank account, after Akka's `AccountEntity` example
//! (`EventSourcedBehavior.withEnforcedReplies`, `StatusReply`).
//!
//! Commands (JSON, `"type"` names the variant):
//! `{"type":"CreateAccount"}`, `{"type":"Deposit","amount":100}`,
//! `{"type":"Withdraw","amount":30}`, `{"type":"GetBalance"}`, `{"type":"CloseAccount"}`.
//! Amounts are whole units (`u64`): money never goes through floats.
//!
//! Replies: every accepted command answers with the balance after it,
//! `{"balance":N}` (where Akka answers `StatusReply.Ack`, the balance is more useful
//! to an HTTP caller); rejections are error replies with Akka's messages.

use mneme_sdk::{export_entity, Context, Effect, Entity, Reply};
use serde::{Deserialize, Serialize};

pub struct AccountEntity;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Command {
    CreateAccount,
    Deposit { amount: u64 },
    Withdraw { amount: u64 },
    GetBalance,
    CloseAccount,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    AccountCreated,
    Deposited { amount: u64 },
    Withdrawn { amount: u64 },
    AccountClosed,
}

/// Stored as `{"status":"empty"}`, `{"status":"open","balance":N}` or
/// `{"status":"closed"}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Account {
    #[default]
    Empty,
    Open {
        balance: u64,
    },
    Closed,
}

#[derive(Serialize)]
struct CurrentBalance {
    balance: u64,
}

fn balance_reply(balance: u64) -> Reply {
    Reply::ok(&CurrentBalance { balance })
}

/// The reply to an accepted command: the balance after its events.
fn balance_of(account: &Account) -> Reply {
    match account {
        Account::Open { balance } => balance_reply(*balance),
        Account::Empty | Account::Closed => balance_reply(0),
    }
}

impl Entity for AccountEntity {
    type Command = Command;
    type Event = Event;
    type State = Account;
    const TYPE_NAME: &'static str = "bank-account";
    const SNAPSHOT_EVERY: u64 = 100;

    fn handle(state: &Account, command: Command, ctx: &Context) -> Effect<Event> {
        let account_number = &ctx.entity_id;
        match state {
            Account::Empty => match command {
                Command::CreateAccount => Effect::persist(Event::AccountCreated).then_reply_with(balance_of),
                _ => Effect::unhandled(),
            },
            Account::Open { balance } => match command {
                Command::Deposit { amount } => deposit(*balance, amount),
                Command::Withdraw { amount } => withdraw(*balance, amount),
                Command::GetBalance => Effect::reply(balance_reply(*balance)),
                Command::CloseAccount => close(*balance),
                Command::CreateAccount => {
                    Effect::reply(Reply::error(format!("Account {account_number} is already created")))
                }
            },
            Account::Closed => match command {
                Command::GetBalance => Effect::reply(balance_reply(0)),
                _ => Effect::reply(Reply::error(format!("Account {account_number} is closed"))),
            },
        }
    }

    fn apply(state: Account, event: &Event) -> Account {
        match (state, event) {
            (Account::Empty, Event::AccountCreated) => Account::Open { balance: 0 },
            (Account::Open { balance }, Event::Deposited { amount }) => {
                Account::Open { balance: balance.saturating_add(*amount) }
            }
            (Account::Open { balance }, Event::Withdrawn { amount }) => {
                Account::Open { balance: balance.saturating_sub(*amount) }
            }
            (Account::Open { .. }, Event::AccountClosed) => Account::Closed,
            // As in Akka: the command handler never persists these, so seeing one
            // means the journal is corrupt; fail recovery loudly.
            (state, event) => panic!("unexpected event [{event:?}] in state [{state:?}]"),
        }
    }

    fn tags(_event: &Event) -> Vec<String> {
        vec!["account".to_owned()]
    }
}

fn deposit(balance: u64, amount: u64) -> Effect<Event> {
    if balance.checked_add(amount).is_none() {
        return Effect::reply(Reply::error(format!("Deposit of {amount} would overflow the balance {balance}")));
    }
    Effect::persist(Event::Deposited { amount }).then_reply_with(balance_of)
}

fn withdraw(balance: u64, amount: u64) -> Effect<Event> {
    if amount <= balance {
        Effect::persist(Event::Withdrawn { amount }).then_reply_with(balance_of)
    } else {
        Effect::reply(Reply::error(format!("Insufficient balance {balance} to be able to withdraw {amount}")))
    }
}

fn close(balance: u64) -> Effect<Event> {
    if balance == 0 {
        Effect::persist(Event::AccountClosed).then_reply_with(balance_of)
    } else {
        Effect::reply(Reply::error("Can't close account with non-zero balance"))
    }
}

export_entity!(AccountEntity);

#[cfg(test)]
mod tests;
