//! The state a handler computes with its decision is the state the server keeps
//! (`decide.handle-command-and-apply`); recovery folds the stored events. The
//! testkit's serialization check catches an entity whose events lose what its
//! event handler reads on the way to the journal.

use mneme_sdk::{Context, Effect, Entity, Reply};
use mneme_testkit::TestKit;
use serde::{Deserialize, Serialize};
use serde_json::json;

struct Lossy;

#[derive(Deserialize)]
struct Add {
    amount: u64,
}

#[derive(Serialize, Deserialize)]
struct Added {
    // Not stored: a replay sees 0.
    #[serde(skip)]
    amount: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct Total {
    total: u64,
}

impl Entity for Lossy {
    type Command = Add;
    type Event = Added;
    type State = Total;
    const TYPE_NAME: &'static str = "lossy";

    fn handle(_state: &Total, command: Add, _ctx: &Context) -> Effect<Added> {
        Effect::persist(Added { amount: command.amount }).then_reply(Reply::ack())
    }

    fn apply(state: Total, event: &Added) -> Total {
        Total { total: state.total + event.amount }
    }
}

#[test]
#[should_panic(expected = "the state handle-command-and-apply returned differs from apply-events of its events")]
fn a_decided_state_that_recovery_would_not_rebuild_fails_the_serialization_check() {
    let mut kit = TestKit::native::<Lossy>();
    kit.run(json!({"amount": 5}));
}
