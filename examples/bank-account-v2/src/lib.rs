//! Version 2 of the bank account (`examples/bank-account`): deposits carry a
//! currency. It is deployed over a journal written by version 1, so it shows
//! mneme's schema evolution, Akka's `EventAdapter` done in the guest:
//!
//! - The new shape gets a new manifest: a deposit is stored as `Deposited.v2`,
//!   `{"type":"Deposited","amount":N,"currency":"EUR"}` ([`AccountEntity::manifest`]).
//! - Events of version 1 are read through the upcaster, keyed by manifest:
//!   `Deposited` (no currency) becomes a deposit in [`DEFAULT_CURRENCY`]
//!   ([`AccountEntity::upcast`]); `apply` only knows the current shape.
//! - The state gained the totals deposited by currency, so its shape changed:
//!   `STATE_VERSION` is 2, and the host ignores snapshots of version 1 and
//!   rebuilds the state from the events (the totals could not come from a
//!   version 1 snapshot).
//!
//! Everything else is version 1's: commands, replies, transfers.
//! `{"type":"Deposit","amount":100}` deposits in the default currency,
//! `{"type":"Deposit","amount":100,"currency":"USD"}` in another.

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
        /// Three capital letters; version 1's callers send none.
        #[serde(default = "default_currency")]
        currency: String,
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
    /// Stored under the manifest `Deposited.v2`; version 1 stored `Deposited`
    /// without a currency (read by [`AccountEntity::upcast`]).
    Deposited {
        amount: u64,
        currency: String,
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
/// `"pending":{...}` while transfers are pending and `"deposited":{"EUR":N}` once
/// money was deposited) or `{"status":"closed"}`.
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
        /// New in state version 2: the amounts deposited, by currency.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        deposited: BTreeMap<String, u64>,
    },
    Closed,
}

impl Account {
    /// An open account with `balance` and no pending transfer.
    pub fn open(balance: u64) -> Account {
        Account::Open { balance, pending: BTreeMap::new(), deposited: BTreeMap::new() }
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

/// The currency of every deposit made before version 2.
pub const DEFAULT_CURRENCY: &str = "EUR";

fn default_currency() -> String {
    DEFAULT_CURRENCY.to_owned()
}

/// A deposit as version 1 stored it (manifest `Deposited`).
#[derive(Deserialize)]
struct DepositedV1 {
    amount: u64,
}

impl Entity for AccountEntity {
    type Command = Command;
    type Event = Event;
    type State = Account;
    const TYPE_NAME: &'static str = TYPE_NAME;
    const SNAPSHOT_EVERY: u64 = 100;
    /// Version 1's state had no `deposited`: its snapshots are not used.
    const STATE_VERSION: u32 = 2;

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
            Account::Open { balance, pending, .. } => match command {
                Command::Deposit { amount, currency } => deposit(*balance, amount, currency),
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
            (Account::Open { balance, pending, mut deposited }, Event::Deposited { amount, currency }) => {
                let total = deposited.entry(currency.clone()).or_default();
                *total = total.saturating_add(*amount);
                Account::Open { balance: balance.saturating_add(*amount), pending, deposited }
            }
            (Account::Open { balance, pending, deposited }, Event::TransferReceived { amount, .. }) => {
                Account::Open { balance: balance.saturating_add(*amount), pending, deposited }
            }
            (Account::Open { balance, pending, deposited }, Event::Withdrawn { amount }) => {
                Account::Open { balance: balance.saturating_sub(*amount), pending, deposited }
            }
            (Account::Open { balance, mut pending, deposited }, Event::TransferSent { transfer_id, to, amount }) => {
                pending.insert(transfer_id.clone(), PendingTransfer { to: to.clone(), amount: *amount });
                Account::Open { balance: balance.saturating_sub(*amount), pending, deposited }
            }
            (Account::Open { balance, mut pending, deposited }, Event::TransferCompleted { transfer_id }) => {
                pending.remove(transfer_id);
                Account::Open { balance, pending, deposited }
            }
            (
                Account::Open { balance, mut pending, deposited },
                Event::TransferRefunded { transfer_id, amount, .. },
            ) => {
                pending.remove(transfer_id);
                Account::Open { balance: balance.saturating_add(*amount), pending, deposited }
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

    /// The new shape of a deposit has a manifest of its own.
    fn manifest(event: &Event) -> String {
        match event {
            Event::Deposited { .. } => "Deposited.v2".to_owned(),
            other => mneme_sdk::default_manifest(other),
        }
    }

    /// The upcaster: every stored event, whichever version wrote it, into the
    /// current `Event`, keyed by its manifest.
    fn upcast(manifest: &str, payload: &[u8]) -> Result<Event, String> {
        let decode_error = |e: serde_json::Error| format!("`{manifest}` event: {e}");
        match manifest {
            // Version 1: no currency; every deposit was in the default one.
            "Deposited" => {
                let v1: DepositedV1 = serde_json::from_slice(payload).map_err(decode_error)?;
                Ok(Event::Deposited { amount: v1.amount, currency: default_currency() })
            }
            "Deposited.v2" | "AccountCreated" | "Withdrawn" | "AccountClosed" | "TransferSent" | "TransferReceived"
            | "TransferCompleted" | "TransferRefunded" => serde_json::from_slice(payload).map_err(decode_error),
            other => Err(format!("unknown event manifest `{other}`")),
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

fn deposit(balance: u64, amount: u64, currency: String) -> Effect<Event> {
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Effect::reply(Reply::error(format!("currency must be three capital letters, not `{currency}`")));
    }
    if balance.checked_add(amount).is_none() {
        return Effect::reply(Reply::error(format!("Deposit of {amount} would overflow the balance {balance}")));
    }
    Effect::persist(Event::Deposited { amount, currency }).then_reply_with(balance_of)
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
