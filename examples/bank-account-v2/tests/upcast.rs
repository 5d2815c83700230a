//! Version 2 reads what version 1 wrote: the events of a journal written by
//! `examples/bank-account`, under their old manifests, go through the upcaster;
//! new deposits are written as `Deposited.v2`. Natively and as the built component.

use bank_account_v2::AccountEntity;
use mneme_testkit::{built_component, TestKit};
use serde_json::json;

fn kits() -> Vec<(&'static str, TestKit)> {
    vec![
        ("native", TestKit::native::<AccountEntity>()),
        ("wasm", TestKit::wasm(built_component("bank-account-v2")).unwrap()),
    ]
}

/// Events as version 1 stored them: (manifest, payload).
fn written_by_v1() -> Vec<(String, Vec<u8>)> {
    [
        ("AccountCreated", r#"{"type":"AccountCreated"}"#),
        ("Deposited", r#"{"type":"Deposited","amount":100}"#),
        ("Withdrawn", r#"{"type":"Withdrawn","amount":30}"#),
        ("Deposited", r#"{"type":"Deposited","amount":5}"#),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_string(), p.as_bytes().to_vec()))
    .collect()
}

#[test]
fn version_1_events_are_upcast_and_new_deposits_carry_a_currency() {
    for (how, mut kit) in kits() {
        assert_eq!(kit.describe().state_version, 2, "{how}");
        kit.given_raw(written_by_v1());
        assert_eq!(kit.state_json(), json!({"status":"open","balance":75,"deposited":{"EUR":105}}), "{how}");

        let r = kit.run(json!({"type":"Deposit","amount":20,"currency":"USD"}));
        assert_eq!(r.reply_json(), json!({"balance":95}), "{how}");
        assert_eq!(r.manifests(), vec!["Deposited.v2"], "{how}");
        assert_eq!(r.event_payloads(), vec![json!({"type":"Deposited","amount":20,"currency":"USD"})], "{how}");
        // A version 1 caller sends no currency: the default one.
        let r = kit.run(json!({"type":"Deposit","amount":1}));
        assert_eq!(r.event_payloads(), vec![json!({"type":"Deposited","amount":1,"currency":"EUR"})], "{how}");
        assert_eq!(
            kit.run(json!({"type":"Deposit","amount":1,"currency":"euro"})).error(),
            "currency must be three capital letters, not `euro`"
        );
        assert_eq!(kit.state_json(), json!({"status":"open","balance":96,"deposited":{"EUR":106,"USD":20}}), "{how}");
        // Replaying the mixed journal (v1 and v2 manifests) gives the same state.
        kit.restart();
    }
}

#[test]
fn an_unknown_manifest_fails_recovery_loudly() {
    for (how, mut kit) in kits() {
        let given = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            kit.given_raw([("Deposited.v3".to_string(), br#"{"type":"Deposited","amount":1}"#.to_vec())]);
        }));
        let message = given.expect_err(how);
        let text = message.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(text.contains("unknown event manifest `Deposited.v3`"), "{how}: {text}");
    }
}
