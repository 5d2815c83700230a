//! Test-only projection: the view of `examples/account-balances` (same keys, same
//! values), except on three deposit amounts:
//!
//! * `13`: panics (`unlucky deposit of 13`): the call traps;
//! * `14`: puts a 2 MiB value under the account's key, over the host's default
//!   limit of 1 MiB per value;
//! * `15`: returns an error (`refused deposit of 15`).
//!
//! Its `view-version` is 1, like `account-balances`, which is therefore a fixed
//! version of it: deployed over it, it resumes from the stored offset. Built with
//! the feature `view-version-2` (`faulty-projection-v2.wasm`) its `view-version`
//! is 2: deployed over `account-balances`, it rebuilds the view from offset 0
//! beside the old one.

use mneme_sdk::{export_projection, EventEnvelope, Projection, View};
use serde::{Deserialize, Serialize};

pub struct FaultyProjection;

#[derive(Deserialize)]
#[serde(tag = "type")]
pub enum AccountEvent {
    AccountCreated,
    Deposited { amount: u64 },
    Withdrawn { amount: u64 },
    AccountClosed,
}

#[derive(Clone, Copy, Default, Serialize, Deserialize)]
struct Balance {
    balance: u64,
    events: u64,
}

impl Projection for FaultyProjection {
    type Event = AccountEvent;
    const NAME: &'static str = "faulty-projection";
    const TAGS: &'static [&'static str] = &["account"];
    const VIEW_VERSION: u32 = if cfg!(feature = "view-version-2") { 2 } else { 1 };

    fn handle(view: &mut View, e: &EventEnvelope<AccountEvent>) -> Result<(), String> {
        let account = e.entity_id();
        let before: Balance = view.get(account)?.unwrap_or_default();
        let balance = match e.event {
            AccountEvent::Deposited { amount: 13 } => panic!("unlucky deposit of 13"),
            AccountEvent::Deposited { amount: 14 } => {
                view.put_bytes(account, vec![b'x'; 2 << 20]);
                return Ok(());
            }
            AccountEvent::Deposited { amount: 15 } => return Err("refused deposit of 15".into()),
            AccountEvent::Deposited { amount } => before.balance.saturating_add(amount),
            AccountEvent::Withdrawn { amount } => before.balance.saturating_sub(amount),
            AccountEvent::AccountCreated | AccountEvent::AccountClosed => before.balance,
        };
        let after = Balance { balance, events: before.events + 1 };
        view.put(account, &after);
        view.update("_total", |t: &mut Balance| {
            t.balance = t.balance.saturating_sub(before.balance).saturating_add(after.balance);
            t.events += 1;
        })
    }
}

export_projection!(FaultyProjection);
