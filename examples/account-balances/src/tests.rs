use mneme_sdk::projection::{StoredEvent, TestView};
use serde_json::json;

use super::*;

fn event(account: &str, seq_nr: u64, offset: u64, e: serde_json::Value) -> StoredEvent {
    StoredEvent::json(&format!("bank-account|{account}"), seq_nr, offset, &e)
}

fn history() -> Vec<StoredEvent> {
    vec![
        event("alice", 1, 1, json!({"type": "AccountCreated"})),
        event("alice", 2, 2, json!({"type": "Deposited", "amount": 100})),
        event("bob", 1, 3, json!({"type": "AccountCreated"})),
        event("alice", 3, 4, json!({"type": "Withdrawn", "amount": 30})),
        event("bob", 2, 5, json!({"type": "Deposited", "amount": 5})),
        event("bob", 3, 6, json!({"type": "Withdrawn", "amount": 5})),
        event("bob", 4, 7, json!({"type": "AccountClosed"})),
    ]
}

#[test]
fn balances_and_the_total_follow_the_accounts() {
    let mut view = TestView::default();
    view.apply::<AccountBalances>(&history()).unwrap();
    assert_eq!(view.json("alice"), Some(json!({"balance": 70, "events": 3})));
    assert_eq!(view.json("bob"), Some(json!({"balance": 0, "events": 4})));
    assert_eq!(view.json(TOTAL), Some(json!({"balance": 70, "events": 7})));
    assert_eq!(view.entries["alice"], br#"{"balance":70,"events":3}"#, "the byte format the Python version shares");
}

#[test]
fn any_split_into_batches_gives_the_same_view() {
    let mut whole = TestView::default();
    whole.apply::<AccountBalances>(&history()).unwrap();
    for size in 1..=history().len() {
        let mut view = TestView::default();
        for batch in history().chunks(size) {
            view.apply::<AccountBalances>(batch).unwrap();
        }
        assert_eq!(view, whole, "batches of {size}");
    }
}

#[test]
fn an_event_it_cannot_read_fails_the_batch_naming_it() {
    let mut view = TestView::default();
    let err = view.apply::<AccountBalances>(&[event("alice", 1, 9, json!({"type": "Renamed"}))]).unwrap_err();
    assert!(err.contains("offset 9") && err.contains("bank-account|alice#1"), "{err}");
    assert!(view.entries.is_empty());
}
