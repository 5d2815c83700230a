//! Test-only component for a WIT contract mneme does not implement: `wit/` here is
//! a copy of the repository's `wit/v0.1/entity.wit` with the package version
//! changed to `mneme:entity@0.3.0`. It imports `mneme:entity/host@0.3.0` and
//! exports `mneme:entity/handler@0.3.0`; mneme implements 0.1.x and 0.2.x and
//! must refuse it at deploy, naming both. Raw wit-bindgen, because the SDK is
//! built on 0.2.0.
//! Its handler is a trivial, working entity: the only thing wrong is the version.

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ path: "wit", world: "entity" });

    use exports::mneme::entity::handler::{Command, Effect, EntityInfo, Event, Guest, SideEffect};
    use mneme::entity::host;
    use mneme::entity::types::{Action, Reply};

    struct WrongWorld;

    impl Guest for WrongWorld {
        fn describe() -> EntityInfo {
            EntityInfo { type_name: "wrong-world".into(), state_version: 1, snapshot_every: 0 }
        }

        fn empty_state() -> Vec<u8> {
            Vec::new()
        }

        fn handle_command(_state: Vec<u8>, command: Command) -> Result<Effect, String> {
            if command.payload.is_empty() {
                host::report_fault("empty command");
                return Err("empty command".into());
            }
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

    export!(WrongWorld);
}
