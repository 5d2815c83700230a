//! Test-only component whose optional export does not match `wit/entity.wit`:
//! `mneme:entity/replay` by default (`wit-replay/`, a copy of the WIT in which
//! `apply-event-batch` takes only the batch and returns bytes), or, with the
//! feature `decide`, `mneme:entity/decide` (`wit-decide/`, in which
//! `handle-command-and-apply` takes only the state and returns bytes). Its
//! `handler` is a trivial, working entity of the current world; mneme must
//! refuse it at deploy, naming the export, rather than fail a later call. Raw
//! wit-bindgen, because the SDK builds the right exports.
//!
//! With the feature `feed`, a projection instead, whose `mneme:projection/feed`
//! export does not match `wit/projection.wit` (`wit-feed/`, in which
//! `handle-event-batch` returns bytes); its `handler` works.

#[cfg(all(target_arch = "wasm32", feature = "feed"))]
mod projection {
    wit_bindgen::generate!({ path: "wit-feed", world: "projection-with-fast-paths" });

    use exports::mneme::projection::handler::{Guest, ProjectionInfo, StoredEvent, ViewUpdate};

    struct WrongFeed;

    impl Guest for WrongFeed {
        fn describe() -> ProjectionInfo {
            ProjectionInfo { name: "wrong-feed".into(), tags: vec!["account".into()], view_version: 1 }
        }

        fn handle_events(_events: Vec<StoredEvent>) -> Result<Vec<ViewUpdate>, String> {
            Ok(Vec::new())
        }
    }

    impl exports::mneme::projection::feed::Guest for WrongFeed {
        fn handle_event_batch(batch: Vec<u8>) -> Vec<u8> {
            batch
        }
    }

    export!(WrongFeed);
}

#[cfg(all(target_arch = "wasm32", not(feature = "feed")))]
mod component {
    #[cfg(not(feature = "decide"))]
    wit_bindgen::generate!({ path: "wit-replay", world: "entity-with-replay" });
    #[cfg(feature = "decide")]
    wit_bindgen::generate!({ path: "wit-decide", world: "entity-with-fast-paths" });

    use exports::mneme::entity::handler::{Command, Effect, EntityInfo, Event, Guest, SideEffect};
    use exports::mneme::entity::replay::Guest as Replay;
    use mneme::entity::types::{Action, Reply};

    struct WrongFastPath;

    impl Guest for WrongFastPath {
        fn describe() -> EntityInfo {
            EntityInfo { type_name: "wrong-fast-path".into(), state_version: 1, snapshot_every: 0 }
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

    #[cfg(not(feature = "decide"))]
    impl Replay for WrongFastPath {
        fn apply_event_batch(batch: Vec<u8>) -> Vec<u8> {
            batch
        }
    }

    #[cfg(feature = "decide")]
    impl Replay for WrongFastPath {
        fn apply_event_batch(state: Vec<u8>, _batch: Vec<u8>) -> Result<Vec<u8>, String> {
            Ok(state)
        }
    }

    #[cfg(feature = "decide")]
    impl exports::mneme::entity::decide::Guest for WrongFastPath {
        fn handle_command_and_apply(state: Vec<u8>) -> Vec<u8> {
            state
        }
    }

    export!(WrongFastPath);
}
