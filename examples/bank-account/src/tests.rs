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
    Account::open(balance)
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

// Transfers: the saga between two accounts.

fn at(id: &str, seq: u64) -> Context {
    Context::new("bank-account", id, seq, 0)
}

fn from(id: &str, seq: u64, sender: &str) -> Context {
    at(id, seq).sent_by(format!("bank-account|{sender}"), format!("bank-account|{sender}#1.0"))
}

fn sent(effect: &Effect<Event>) -> Vec<(String, serde_json::Value)> {
    effect
        .side_effects()
        .iter()
        .map(|s| match s {
            mneme_sdk::SideEffect::Send { entity_type, entity_id, payload } => {
                assert_eq!(entity_type, "bank-account");
                (entity_id.clone(), serde_json::from_slice(payload).unwrap())
            }
            other => panic!("unexpected side effect {other:?}"),
        })
        .collect()
}

fn with_pending(balance: u64, id: &str, to: &str, amount: u64) -> Account {
    let pending = [(id.to_string(), PendingTransfer { to: to.into(), amount })].into();
    Account::Open { balance, pending }
}

#[test]
fn a_transfer_withdraws_here_and_asks_the_other_account_to_deposit() {
    let effect = AccountEntity::handle(&open(100), Command::Transfer { to: "bob".into(), amount: 30 }, &at("alice", 4));
    let event = Event::TransferSent { transfer_id: "alice#5".into(), to: "bob".into(), amount: 30 };
    assert_eq!(effect.events(), &[event]);
    assert_eq!(
        sent(&effect),
        [("bob".into(), json!({"type": "ReceiveTransfer", "transferId": "alice#5", "from": "alice", "amount": 30}))]
    );
    let after = effect.events().iter().fold(open(100), AccountEntity::apply);
    assert_eq!(after, with_pending(70, "alice#5", "bob", 30));
    assert_eq!(
        effect.reply_after(&after).and_then(|r| r.json()),
        Some(json!({"balance": 70, "transferId": "alice#5"}))
    );
}

#[test]
fn transfers_that_cannot_be_paid_are_refused_without_events_or_sends() {
    for (command, message) in [
        (Command::Transfer { to: "bob".into(), amount: 101 }, "Insufficient balance 100 to be able to transfer 101"),
        (Command::Transfer { to: "alice".into(), amount: 1 }, "An account can't transfer to itself"),
        (Command::Transfer { to: "bob".into(), amount: 0 }, "A transfer needs a positive amount"),
    ] {
        let effect = AccountEntity::handle(&open(100), command, &at("alice", 4));
        assert!(effect.events().is_empty() && effect.side_effects().is_empty());
        assert_eq!(effect.reply_value().and_then(Reply::error_message), Some(message));
    }
}

#[test]
fn the_receiving_account_deposits_and_confirms_only_for_the_paying_account() {
    let receive = || Command::ReceiveTransfer { transfer_id: "alice#5".into(), from: "alice".into(), amount: 30 };
    let effect = AccountEntity::handle(&open(1), receive(), &from("bob", 2, "alice"));
    let event = Event::TransferReceived { transfer_id: "alice#5".into(), from: "alice".into(), amount: 30 };
    assert_eq!(effect.events(), &[event]);
    assert_eq!(sent(&effect), [("alice".into(), json!({"type": "ConfirmTransfer", "transferId": "alice#5"}))]);
    assert_eq!(effect.events().iter().fold(open(1), AccountEntity::apply), open(31));
    // Not from alice: from outside (HTTP), or from another account.
    for ctx in [at("bob", 2), from("bob", 2, "mallory")] {
        let effect = AccountEntity::handle(&open(1), receive(), &ctx);
        assert!(effect.events().is_empty() && effect.side_effects().is_empty());
        assert!(effect.reply_value().and_then(Reply::error_message).unwrap().starts_with("only account alice"));
    }
}

#[test]
fn an_account_that_cannot_take_the_money_rejects_without_events() {
    let receive = Command::ReceiveTransfer { transfer_id: "alice#5".into(), from: "alice".into(), amount: 30 };
    for (state, reason) in [(Account::Empty, "Account bob does not exist"), (Account::Closed, "Account bob is closed")]
    {
        let effect = AccountEntity::handle(&state, receive.clone(), &from("bob", 0, "alice"));
        assert!(effect.events().is_empty());
        let back = json!({"type": "RejectTransfer", "transferId": "alice#5", "reason": reason});
        assert_eq!(sent(&effect), [("alice".into(), back)]);
    }
}

#[test]
fn the_paying_account_completes_or_refunds_once() {
    let state = with_pending(70, "alice#5", "bob", 30);
    let confirm = Command::ConfirmTransfer { transfer_id: "alice#5".into() };
    let effect = AccountEntity::handle(&state, confirm.clone(), &from("alice", 5, "bob"));
    assert_eq!(effect.events(), &[Event::TransferCompleted { transfer_id: "alice#5".into() }]);
    assert_eq!(effect.events().iter().fold(state.clone(), AccountEntity::apply), open(70));
    // Only bob may confirm; a transfer no longer pending is left alone.
    let effect = AccountEntity::handle(&state, confirm.clone(), &from("alice", 5, "carol"));
    assert!(effect.events().is_empty());
    assert!(AccountEntity::handle(&open(70), confirm, &from("alice", 6, "bob")).events().is_empty());

    let reject = Command::RejectTransfer { transfer_id: "alice#5".into(), reason: "closed".into() };
    let effect = AccountEntity::handle(&state, reject.clone(), &from("alice", 5, "bob"));
    let refund = Event::TransferRefunded { transfer_id: "alice#5".into(), amount: 30, reason: "closed".into() };
    assert_eq!(effect.events(), &[refund]);
    assert_eq!(effect.events().iter().fold(state, AccountEntity::apply), open(100), "the money comes back");
    assert!(AccountEntity::handle(&open(100), reject, &from("alice", 6, "bob")).events().is_empty());
}

#[test]
fn an_account_with_pending_transfers_cannot_close() {
    let effect = handle(&with_pending(0, "acc-1#3", "bob", 5), Command::CloseAccount);
    assert!(effect.events().is_empty());
    assert_eq!(effect.reply_value(), Some(&Reply::error("Can't close account with pending transfers")));
}

#[test]
fn pending_transfers_are_in_the_state_json_only_while_there_are_some() {
    let state = runtime::apply_events::<AccountEntity>(
        br#"{"status":"open","balance":100}"#,
        [("TransferSent", &br#"{"type":"TransferSent","transferId":"acc-1#2","to":"b","amount":40}"#[..])],
    )
    .unwrap();
    assert_eq!(state, br#"{"status":"open","balance":60,"pending":{"acc-1#2":{"to":"b","amount":40}}}"#);
    let state = runtime::apply_events::<AccountEntity>(
        &state,
        [("TransferCompleted", &br#"{"type":"TransferCompleted","transferId":"acc-1#2"}"#[..])],
    )
    .unwrap();
    assert_eq!(state, br#"{"status":"open","balance":60}"#);
}

#[test]
fn every_event_reads_back_by_its_manifest_as_it_was_written() {
    let transfer_id = "alice#7".to_owned();
    let events = [
        Event::AccountCreated,
        Event::Deposited { amount: 100 },
        Event::Withdrawn { amount: 30 },
        Event::TransferSent { transfer_id: transfer_id.clone(), to: "bob".into(), amount: 5 },
        Event::TransferReceived { transfer_id: transfer_id.clone(), from: "bob".into(), amount: 5 },
        Event::TransferCompleted { transfer_id: transfer_id.clone() },
        Event::TransferRefunded { transfer_id, amount: 5, reason: "closed".into() },
        Event::AccountClosed,
    ];
    for event in events {
        let (manifest, payload) = (AccountEntity::manifest(&event), serde_json::to_vec(&event).unwrap());
        assert_eq!(AccountEntity::upcast(&manifest, &payload), Ok(event), "{manifest}");
    }
}

#[test]
fn a_deposit_that_does_not_decode_is_refused_naming_what_is_wrong() {
    for (payload, wrong) in [
        (r#"{"type":"Deposited"}"#, "missing field `amount`"),
        (r#"{"type":"Deposited","amount":-1}"#, "invalid value"),
        (r#"{"type":"Deposited","amount":1"#, "EOF"),
    ] {
        let err = AccountEntity::upcast("Deposited", payload.as_bytes()).unwrap_err();
        assert!(err.contains(wrong), "{payload}: {err}");
    }
}
