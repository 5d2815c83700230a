use mneme_sdk::{runtime, Context, Effect, Entity, Reply};
use serde_json::json;

use super::*;

fn ctx() -> Context {
    Context::new("bank-account", "acc-1", 0, 0)
}

fn handle(state: &Account, command: Command) -> Effect<Event> {
    AccountEntity::handle(state, command, &ctx())
}

/// The reply the caller gets: computed from the state after the effect's events.
fn reply(state: &Account, effect: &Effect<Event>) -> Option<Reply> {
    let after = effect.events().iter().fold(state.clone(), AccountEntity::apply);
    effect.reply_after(&after)
}

fn replay(events: &[Event]) -> Account {
    events.iter().fold(Account::default(), AccountEntity::apply)
}

fn open(balance: u64) -> Account {
    Account::Open { balance }
}

#[test]
fn create_account_opens_it_with_zero_balance() {
    let effect = handle(&Account::Empty, Command::CreateAccount);
    assert_eq!(effect.events(), &[Event::AccountCreated]);
    assert_eq!(reply(&Account::Empty, &effect), Some(Reply::ok_raw(br#"{"balance":0}"#.to_vec())));
    assert_eq!(replay(effect.events()), open(0));
}

#[test]
fn empty_account_handles_nothing_but_create() {
    for command in [Command::Deposit { amount: 1 }, Command::GetBalance, Command::CloseAccount] {
        let effect = handle(&Account::Empty, command);
        assert!(effect.is_unhandled());
        assert!(effect.reply_value().is_none());
    }
}

#[test]
fn deposit_and_withdraw_change_the_balance() {
    let effect = handle(&open(10), Command::Deposit { amount: 5 });
    assert_eq!(effect.events(), &[Event::Deposited { amount: 5 }]);
    assert_eq!(reply(&open(10), &effect), Some(Reply::ok_raw(br#"{"balance":15}"#.to_vec())));
    let effect = handle(&open(10), Command::Withdraw { amount: 10 });
    assert_eq!(effect.events(), &[Event::Withdrawn { amount: 10 }]);
    let state = replay(&[Event::AccountCreated, Event::Deposited { amount: 100 }, Event::Withdrawn { amount: 30 }]);
    assert_eq!(state, open(70));
}

#[test]
fn withdrawing_more_than_the_balance_is_rejected_without_events() {
    let effect = handle(&open(70), Command::Withdraw { amount: 71 });
    assert!(effect.is_none());
    assert!(effect.events().is_empty());
    assert_eq!(effect.reply_value(), Some(&Reply::error("Insufficient balance 70 to be able to withdraw 71")));
}

#[test]
fn get_balance_replies_json() {
    let effect = handle(&open(42), Command::GetBalance);
    assert!(effect.is_none());
    assert_eq!(effect.reply_value().and_then(Reply::json), Some(json!({"balance": 42})));
    let effect = handle(&Account::Closed, Command::GetBalance);
    assert_eq!(effect.reply_value().and_then(Reply::json), Some(json!({"balance": 0})));
}

#[test]
fn close_requires_zero_balance() {
    let effect = handle(&open(1), Command::CloseAccount);
    assert!(effect.events().is_empty());
    assert_eq!(effect.reply_value(), Some(&Reply::error("Can't close account with non-zero balance")));
    let effect = handle(&open(0), Command::CloseAccount);
    assert_eq!(effect.events(), &[Event::AccountClosed]);
    assert_eq!(AccountEntity::apply(open(0), &Event::AccountClosed), Account::Closed);
}

#[test]
fn create_twice_and_commands_on_a_closed_account_are_errors() {
    let effect = handle(&open(0), Command::CreateAccount);
    assert_eq!(effect.reply_value(), Some(&Reply::error("Account acc-1 is already created")));
    for command in
        [Command::Deposit { amount: 1 }, Command::Withdraw { amount: 1 }, Command::CloseAccount, Command::CreateAccount]
    {
        let effect = handle(&Account::Closed, command);
        assert!(effect.events().is_empty());
        assert_eq!(effect.reply_value(), Some(&Reply::error("Account acc-1 is closed")));
    }
}

#[test]
fn deposit_overflow_is_rejected() {
    let effect = handle(&open(u64::MAX), Command::Deposit { amount: 1 });
    assert!(effect.events().is_empty());
    assert!(effect.reply_value().and_then(Reply::error_message).is_some());
}

#[test]
fn json_shapes_are_the_documented_ones() {
    let effect = runtime::handle_command::<AccountEntity>(
        br#"{"status":"open","balance":5}"#,
        br#"{"type":"Deposit","amount":100}"#,
        &ctx(),
    )
    .unwrap();
    let event = &effect.events()[0];
    assert_eq!(event.manifest, "Deposited");
    assert_eq!(event.payload, br#"{"type":"Deposited","amount":100}"#);
    assert_eq!(event.tags, ["account"]);
    let state = runtime::apply_events::<AccountEntity>(
        &runtime::empty_state::<AccountEntity>(),
        [("AccountCreated", &br#"{"type":"AccountCreated"}"#[..]), ("Deposited", &event.payload[..])],
    )
    .unwrap();
    assert_eq!(state, br#"{"status":"open","balance":100}"#);
    let err = runtime::handle_command::<AccountEntity>(
        b"{\"status\":\"empty\"}",
        br#"{"type":"Deposit","amount":-1}"#,
        &ctx(),
    );
    assert!(err.unwrap_err().starts_with("malformed command"));
}
