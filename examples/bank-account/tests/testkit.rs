//! The bank account through `mneme-testkit`: the same scenarios natively and as
//! the built component in the real sandbox.

use bank_account::AccountEntity;
use mneme_testkit::{built_component, TestKit};
use serde_json::json;

fn kits() -> Vec<(&'static str, TestKit)> {
    vec![
        ("native", TestKit::native::<AccountEntity>()),
        ("wasm", TestKit::wasm(built_component("bank-account")).unwrap()),
    ]
}

#[test]
fn given_events_when_a_command_then_reply_events_and_state() {
    for (how, mut kit) in kits() {
        kit.given(&[json!({"type":"AccountCreated"}), json!({"type":"Deposited","amount":100})]);
        let r = kit.run(json!({"type":"Withdraw","amount":30}));
        assert_eq!(r.reply_json(), json!({"balance":70}), "{how}");
        assert_eq!(r.event_payloads(), vec![json!({"type":"Withdrawn","amount":30})], "{how}");
        assert_eq!(r.manifests(), vec!["Withdrawn"], "{how}");
        assert_eq!(r.events[0].tags, vec!["account"], "{how}");
        assert_eq!(r.events[0].seq_nr, 3, "{how}");
        assert_eq!(kit.state_json(), json!({"status":"open","balance":70}), "{how}");

        let r = kit.run(json!({"type":"Withdraw","amount":500}));
        assert_eq!(r.error(), "Insufficient balance 70 to be able to withdraw 500", "{how}");
        assert!(r.events.is_empty(), "{how}");
        kit.restart();
        assert_eq!(kit.state_json(), json!({"status":"open","balance":70}), "{how}: the same after a replay");
    }
}

#[test]
fn unknown_commands_are_malformed_and_known_ones_in_the_wrong_state_unhandled() {
    for (how, mut kit) in kits() {
        assert!(kit.run(json!({"type":"Frobnicate"})).is_malformed(), "{how}");
        assert!(kit.run(json!({"type":"Deposit","amount":1})).is_unhandled(), "{how}: no account yet");
        assert_eq!(kit.run(json!({"type":"CreateAccount"})).reply_json(), json!({"balance":0}), "{how}");
        assert!(kit.run(json!({"type":"Frobnicate"})).is_malformed(), "{how}");
        assert_eq!(kit.seq_nr(), 1, "{how}");
    }
}

#[test]
fn a_transfer_sends_the_deposit_to_the_other_account() {
    for (how, kit) in kits() {
        let mut kit = kit.with_id("alice");
        kit.given(&[json!({"type":"AccountCreated"}), json!({"type":"Deposited","amount":100})]);
        let r = kit.run(json!({"type":"Transfer","to":"bob","amount":25}));
        assert_eq!(r.reply_json(), json!({"balance":75,"transferId":"alice#3"}), "{how}");
        let sent = r.sent();
        assert_eq!(sent.len(), 1, "{how}");
        assert_eq!((sent[0].0.as_str(), sent[0].1.as_str()), ("bank-account", "bob"), "{how}");
        assert_eq!(sent[0].2, json!({"type":"ReceiveTransfer","transferId":"alice#3","from":"alice","amount":25}));
        kit.restart();
    }
}

#[test]
fn many_commands_replay_to_the_same_state() {
    for (how, mut kit) in kits() {
        kit.run(json!({"type":"CreateAccount"}));
        for i in 1..=150u64 {
            kit.run(json!({"type":"Deposit","amount":i}));
        }
        kit.run(json!({"type":"Withdraw","amount":75}));
        assert_eq!(kit.state_json(), json!({"status":"open","balance":150 * 151 / 2 - 75}), "{how}");
        kit.restart();
    }
}
