//! A bank account, after Akka's `AccountEntity` example
//! (`EventSourcedBehavior.withEnforcedReplies`, `StatusReply`), with transfers
//! between accounts as a saga.
//!
//! Commands (JSON, `"type"` names the variant):
//! `{"type":"CreateAccount"}`, `{"type":"Deposit","amount":100}`,
//! `{"type":"Withdraw","amount":30}`, `{"type":"GetBalance"}`, `{"type":"CloseAccount"}`,
//! `{"type":"Transfer","to":"bob","amount":25}`.
//! Amounts are whole units (`u64`): money never goes through floats.
//!
//! Replies: every accepted command answers with the balance after it,
//! `{"balance":N}` (where Akka answers `StatusReply.Ack`, the balance is more useful
//! to an HTTP caller); rejections are error replies with Akka's messages.
//!
//! # Transfers: how two entities talk
//!
//! A transfer is a saga of commands the accounts send each other (`send` side
//! effects, which mneme stores with the events that produced them and delivers at
//! least once; each account applies each delivered command at most once):
//!
//! 1. `Transfer` on the paying account: withdraws at once (`TransferSent`, the
//!    transfer is *pending*) and sends `ReceiveTransfer` to the other account;
//!    replies `{"balance":N,"transferId":"alice#7"}`.
//! 2. The receiving account, if open, deposits (`TransferReceived`) and sends
//!    `ConfirmTransfer` back; if it does not exist or is closed it persists nothing
//!    and sends `RejectTransfer` back.
//! 3. The paying account ends the transfer: `TransferCompleted`, or the
//!    compensation `TransferRefunded` (the amount comes back).
//!
//! Money is never created or lost: every amount withdrawn by a `TransferSent` is
//! either deposited by exactly one `TransferReceived` or refunded by exactly one
//! `TransferRefunded`. The saga's commands are accepted only from the account they
//! concern (the sender mneme names in the command's metadata): an HTTP caller
//! cannot send `ReceiveTransfer`. An account with pending transfers cannot close.

use std::collections::BTreeMap;

use mneme_sdk::{export_entity, Context, Effect, Entity, Reply, SideEffect};
use serde::{Deserialize, Serialize};

pub struct AccountEntity;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Command {
    CreateAccount,
    Deposit {
        amount: u64,
    },
    Withdraw {
        amount: u64,
    },
    GetBalance,
    CloseAccount,
    /// Pay `amount` to the account `to`.
    Transfer {
        to: String,
        amount: u64,
    },
    /// Sent by the paying account: deposit `amount` of transfer `transfer_id`.
    #[serde(rename_all = "camelCase")]
    ReceiveTransfer {
        transfer_id: String,
        from: String,
        amount: u64,
    },
    /// Sent back by the receiving account: the transfer is done.
    #[serde(rename_all = "camelCase")]
    ConfirmTransfer {
        transfer_id: String,
    },
    /// Sent back by the receiving account: it could not take the money.
    #[serde(rename_all = "camelCase")]
    RejectTransfer {
        transfer_id: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    AccountCreated,
    Deposited {
        amount: u64,
    },
    Withdrawn {
        amount: u64,
    },
    AccountClosed,
    /// Withdrawn for a transfer, pending until confirmed or refunded.
    #[serde(rename_all = "camelCase")]
    TransferSent {
        transfer_id: String,
        to: String,
        amount: u64,
    },
    /// Deposited by a transfer from another account.
    #[serde(rename_all = "camelCase")]
    TransferReceived {
        transfer_id: String,
        from: String,
        amount: u64,
    },
    #[serde(rename_all = "camelCase")]
    TransferCompleted {
        transfer_id: String,
    },
    /// The compensation: the receiving account rejected the transfer, the amount
    /// comes back.
    #[serde(rename_all = "camelCase")]
    TransferRefunded {
        transfer_id: String,
        amount: u64,
        reason: String,
    },
}

/// A transfer withdrawn here and not yet confirmed or refunded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingTransfer {
    pub to: String,
    pub amount: u64,
}

/// Stored as `{"status":"empty"}`, `{"status":"open","balance":N}` (with
/// `"pending":{...}` while transfers are pending) or `{"status":"closed"}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Account {
    #[default]
    Empty,
    Open {
        balance: u64,
        /// Pending transfers by id.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pending: BTreeMap<String, PendingTransfer>,
    },
    Closed,
}

impl Account {
    /// An open account with `balance` and no pending transfer.
    pub fn open(balance: u64) -> Account {
        Account::Open { balance, pending: BTreeMap::new() }
    }
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
        Account::Open { balance, .. } => balance_reply(*balance),
        Account::Empty | Account::Closed => balance_reply(0),
    }
}

const TYPE_NAME: &str = "bank-account";

impl Entity for AccountEntity {
    type Command = Command;
    type Event = Event;
    type State = Account;
    const TYPE_NAME: &'static str = TYPE_NAME;
    const SNAPSHOT_EVERY: u64 = 100;

    fn handle(state: &Account, command: Command, ctx: &Context) -> Effect<Event> {
        let account_number = &ctx.entity_id;
        // The saga's commands, whatever the state: only from the account concerned.
        match &command {
            Command::ReceiveTransfer { from, .. } if !sent_by(ctx, from) => return not_from(ctx, from),
            Command::ConfirmTransfer { transfer_id } | Command::RejectTransfer { transfer_id, .. } => {
                return match pending(state, transfer_id) {
                    Some(p) if sent_by(ctx, &p.to) => end_transfer(command, p.amount),
                    Some(p) => not_from(ctx, &p.to),
                    // Already ended (or never started): nothing to do.
                    None => Effect::none(),
                };
            }
            _ => {}
        }
        match state {
            Account::Empty => match command {
                Command::CreateAccount => Effect::persist(Event::AccountCreated).then_reply_with(balance_of),
                Command::ReceiveTransfer { transfer_id, from, .. } => {
                    reject(&transfer_id, &from, format!("Account {account_number} does not exist"))
                }
                _ => Effect::unhandled(),
            },
            Account::Open { balance, pending } => match command {
                Command::Deposit { amount } => deposit(*balance, amount),
                Command::Withdraw { amount } => withdraw(*balance, amount),
                Command::GetBalance => Effect::reply(balance_reply(*balance)),
                Command::CloseAccount if !pending.is_empty() => {
                    Effect::reply(Reply::error("Can't close account with pending transfers"))
                }
                Command::CloseAccount => close(*balance),
                Command::CreateAccount => {
                    Effect::reply(Reply::error(format!("Account {account_number} is already created")))
                }
                Command::Transfer { to, amount } => transfer(*balance, to, amount, ctx),
                Command::ReceiveTransfer { transfer_id, from, amount } => match balance.checked_add(amount) {
                    Some(_) => Effect::persist(Event::TransferReceived {
                        transfer_id: transfer_id.clone(),
                        from: from.clone(),
                        amount,
                    })
                    .then_run(SideEffect::send(TYPE_NAME, from, &Command::ConfirmTransfer { transfer_id }))
                    .then_reply_with(balance_of),
                    None => reject(&transfer_id, &from, format!("Deposit of {amount} would overflow the balance")),
                },
                Command::ConfirmTransfer { .. } | Command::RejectTransfer { .. } => Effect::none(),
            },
            Account::Closed => match command {
                Command::GetBalance => Effect::reply(balance_reply(0)),
                Command::ReceiveTransfer { transfer_id, from, .. } => {
                    reject(&transfer_id, &from, format!("Account {account_number} is closed"))
                }
                _ => Effect::reply(Reply::error(format!("Account {account_number} is closed"))),
            },
        }
    }

    fn apply(state: Account, event: &Event) -> Account {
        match (state, event) {
            (Account::Empty, Event::AccountCreated) => Account::open(0),
            (
                Account::Open { balance, pending },
                Event::Deposited { amount } | Event::TransferReceived { amount, .. },
            ) => Account::Open { balance: balance.saturating_add(*amount), pending },
            (Account::Open { balance, pending }, Event::Withdrawn { amount }) => {
                Account::Open { balance: balance.saturating_sub(*amount), pending }
            }
            (Account::Open { balance, mut pending }, Event::TransferSent { transfer_id, to, amount }) => {
                pending.insert(transfer_id.clone(), PendingTransfer { to: to.clone(), amount: *amount });
                Account::Open { balance: balance.saturating_sub(*amount), pending }
            }
            (Account::Open { balance, mut pending }, Event::TransferCompleted { transfer_id }) => {
                pending.remove(transfer_id);
                Account::Open { balance, pending }
            }
            (Account::Open { balance, mut pending }, Event::TransferRefunded { transfer_id, amount, .. }) => {
                pending.remove(transfer_id);
                Account::Open { balance: balance.saturating_add(*amount), pending }
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

    /// Decodes by manifest, as Akka's serializers choose the class by manifest: a
    /// deposit or withdrawal (most of an account's history) is read as its one
    /// field, which skips serde's buffering of every field of an internally tagged
    /// enum before it chooses the variant (recovery folds deposits 1.6x-1.8x
    /// faster for it, BENCHMARKS.md); every other event through the enum.
    fn upcast(manifest: &str, payload: &[u8]) -> Result<Event, String> {
        #[derive(Deserialize)]
        struct Amount {
            amount: u64,
        }
        let amount = || serde_json::from_slice::<Amount>(payload).map(|a| a.amount).map_err(|e| e.to_string());
        match manifest {
            "Deposited" => Ok(Event::Deposited { amount: amount()? }),
            "Withdrawn" => Ok(Event::Withdrawn { amount: amount()? }),
            _ => serde_json::from_slice(payload).map_err(|e| e.to_string()),
        }
    }
}

fn pending<'a>(state: &'a Account, transfer_id: &str) -> Option<&'a PendingTransfer> {
    match state {
        Account::Open { pending, .. } => pending.get(transfer_id),
        _ => None,
    }
}

/// Whether the command was sent by the account `id` (not by an HTTP caller).
fn sent_by(ctx: &Context, id: &str) -> bool {
    ctx.source() == Some(ctx.persistence_id_of(id).as_str())
}

fn not_from(ctx: &Context, id: &str) -> Effect<Event> {
    let sender = ctx.source().unwrap_or("outside");
    Effect::reply(Reply::error(format!("only account {id} may send this command, not {sender}")))
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

/// Withdraw here, and ask `to` to deposit: the transfer's id is this account's
/// id and the sequence number of its `TransferSent` event, unique.
fn transfer(balance: u64, to: String, amount: u64, ctx: &Context) -> Effect<Event> {
    if to == ctx.entity_id {
        return Effect::reply(Reply::error("An account can't transfer to itself"));
    }
    if amount == 0 {
        return Effect::reply(Reply::error("A transfer needs a positive amount"));
    }
    if amount > balance {
        return Effect::reply(Reply::error(format!("Insufficient balance {balance} to be able to transfer {amount}")));
    }
    let transfer_id = format!("{}#{}", ctx.entity_id, ctx.sequence_nr + 1);
    let receive = Command::ReceiveTransfer { transfer_id: transfer_id.clone(), from: ctx.entity_id.clone(), amount };
    let reply_id = transfer_id.clone();
    Effect::persist(Event::TransferSent { transfer_id, to: to.clone(), amount })
        .then_run(SideEffect::send(TYPE_NAME, to, &receive))
        .then_reply_with(move |after: &Account| {
            let balance = match after {
                Account::Open { balance, .. } => *balance,
                _ => 0,
            };
            Reply::ok(&serde_json::json!({ "balance": balance, "transferId": reply_id }))
        })
}

/// This account cannot take the transfer: persist nothing, tell the sender.
fn reject(transfer_id: &str, from: &str, reason: String) -> Effect<Event> {
    let back = Command::RejectTransfer { transfer_id: transfer_id.to_string(), reason: reason.clone() };
    Effect::reply(Reply::error(reason)).then_run(SideEffect::send(TYPE_NAME, from, &back))
}

/// The receiving account answered a pending transfer of `amount`: it is done, or
/// refunded.
fn end_transfer(command: Command, amount: u64) -> Effect<Event> {
    match command {
        Command::ConfirmTransfer { transfer_id } => {
            Effect::persist(Event::TransferCompleted { transfer_id }).then_reply(Reply::ack())
        }
        Command::RejectTransfer { transfer_id, reason } => {
            Effect::persist(Event::TransferRefunded { transfer_id, amount, reason }).then_reply_with(balance_of)
        }
        _ => Effect::none(),
    }
}

export_entity!(AccountEntity);

#[cfg(test)]
mod tests;
