//! Test-only component whose optional `mneme:entity/replay` export does not match
//! `wit/entity.wit`: `wit/` here is a copy of it in which `apply-event-batch`
//! takes only the batch and returns bytes. Its `handler` is a trivial, working
//! entity of the current world; mneme must refuse it at deploy, naming `replay`,
//! rather than fail its first recovery. Raw wit-bindgen, because the SDK builds
//! the right `replay`.

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ path: "wit", world: "entity-with-replay" });

    use exports::mneme::entity::handler::{Command, Effect, EntityInfo, Event, Guest, SideEffect};
    use exports::mneme::entity::replay::Guest as Replay;
    use mneme::entity::types::{Action, Reply};

    struct WrongReplay;

    impl Guest for WrongReplay {
        fn describe() -> EntityInfo {
            EntityInfo { type_name: "wrong-replay".into(), state_version: 1, snapshot_every: 0 }
        }

        fn empty_state() -> Vec<u8> {
            Vec::new()
        }

        fn handle_command(_state: Vec<u8>, _command: Command) -> Result<Effect, String> {
            Ok(Effect {
                action: Action::None,
                reply: Some(Reply::Ok(b"{}".to_vec())),
                then: Vec::new(),
                unstash_all: false,
                stop: false,
            })
        }

        fn apply_events(state: Vec<u8>, _events: Vec<Event>) -> Result<Vec<u8>, String> {
            Ok(state)
        }

        fn on_recovery_completed(_state: Vec<u8>) -> Vec<SideEffect> {
            Vec::new()
        }
    }

    impl Replay for WrongReplay {
        fn apply_event_batch(batch: Vec<u8>) -> Vec<u8> {
            batch
        }
    }

    export!(WrongReplay);
}
