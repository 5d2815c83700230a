//! The testkit over components written in other languages: the Python and
//! JavaScript bank accounts (built by scripts/build-polyglot.sh) tested from Rust,
//! in the same sandbox the server runs them in. The README's example is cut
//! from this file.

use mneme_testkit::{built_component, TestKit};
use serde_json::json;

#[test]
fn a_python_or_javascript_entity_tested_from_rust() {
    for name in ["bank-account-python", "bank-account-js"] {
        let mut kit = TestKit::wasm(built_component(name)).unwrap();
        // Given: events already in the journal.
        kit.given(&[json!({"type":"AccountCreated"}), json!({"type":"Deposited","amount":100})]);
        // When: a command.
        let result = kit.run(json!({"type":"Withdraw","amount":30}));
        // Then: the reply, the events and the state.
        assert_eq!(result.reply_json(), json!({"balance":70}));
        assert_eq!(result.event_payloads(), vec![json!({"type":"Withdrawn","amount":30})]);
        assert_eq!(kit.state_json(), json!({"status":"open","balance":70}));
        // Unknown command types are malformed (400), whatever the language.
        assert!(kit.run(json!({"type":"Frobnicate"})).is_malformed());
        // A restart replays every event: the same state.
        kit.restart();
        assert_eq!(kit.state_json(), json!({"status":"open","balance":70}), "{name}");
    }
}
