//! Write mneme entities in Rust, with Akka Persistence's
//! vocabulary.
//!
//! An entity is an event-sourced aggregate compiled to a WebAssembly component.
//! You write two pure functions: [`Entity::handle`] decides what a command means
//! (returning an [`Effect`]: persist events, reply, run side effects, stash...),
//! and [`Entity::apply`] folds an event into the state. The mneme host does all
//! the I/O: it persists the events, and only once they are durable does it
//! release the reply and run the side effects. Recovery replays the journal
//! through `apply`, so the state can always be rebuilt.
//!
//! Commands, events, state and replies are JSON (serde). [`export_entity!`] turns
//! the type into the component's `mneme:entity/handler` export when compiled for
//! `wasm32-wasip2`, and expands to nothing else natively, so `cargo test` runs your
//! handlers as plain Rust.
//!
//! ```
//! use mneme_sdk::{export_entity, Context, Effect, Entity, Reply};
//! use serde::{Deserialize, Serialize};
//!
//! pub struct Counter;
//!
//! #[derive(Deserialize)]
//! #[serde(tag = "type")]
//! pub enum Command {
//!     Add { amount: u64 },
//!     Get,
//! }
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! #[serde(tag = "type")]
//! pub enum Event {
//!     Added { amount: u64 },
//! }
//!
//! #[derive(Serialize, Deserialize, Default)]
//! pub struct State {
//!     total: u64,
//! }
//!
//! impl Entity for Counter {
//!     type Command = Command;
//!     type Event = Event;
//!     type State = State;
//!     const TYPE_NAME: &'static str = "counter";
//!
//!     fn handle(state: &State, command: Command, _ctx: &Context) -> Effect<Event> {
//!         match command {
//!             Command::Add { amount: 0 } => Effect::reply(Reply::error("amount must be positive")),
//!             // The reply is computed from the state after the event.
//!             Command::Add { amount } => Effect::persist(Event::Added { amount })
//!                 .then_reply_with(|after: &State| Reply::ok(&serde_json::json!({ "total": after.total }))),
//!             Command::Get => Effect::reply(Reply::ok(&serde_json::json!({ "total": state.total }))),
//!         }
//!     }
//!
//!     fn apply(state: State, event: &Event) -> State {
//!         match event {
//!             Event::Added { amount } => State { total: state.total + amount },
//!         }
//!     }
//! }
//!
//! export_entity!(Counter);
//!
//! // Natively, the handlers are plain functions:
//! let ctx = Context::new("counter", "c-1", 0, 0);
//! let effect = Counter::handle(&State::default(), Command::Add { amount: 2 }, &ctx);
//! assert_eq!(effect.events(), &[Event::Added { amount: 2 }]);
//! let after = effect.events().iter().fold(State::default(), Counter::apply);
//! assert_eq!(effect.reply_after(&after).as_ref().and_then(Reply::json), Some(serde_json::json!({ "total": 2 })));
//! ```
//!
//! Build the component with
//! `cargo build --target wasm32-wasip2 --profile wasm` and a `cdylib` crate type.
//!
//! Guests get no WASI from the host: never print (there is no stdout). Use
//! [`SideEffect::log`] for logging. Panics are reported to the host through the
//! `report-fault` import, so their message reaches the caller's error.
//!
//! Read models: [`projection`] has the [`Projection`] trait and
//! [`export_projection!`], for components of the `projection` world
//! (`wit/projection.wit`), natively testable the same way.

mod codec;
mod context;
mod effect;
mod entity;
mod reply;
mod side_effect;

pub mod projection;

/// The handler protocol in plain Rust (decode, call the entity, encode); public so
/// it can be exercised in native tests, e.g. to check that a JSON command decodes.
pub mod runtime;

pub use codec::default_manifest;
pub use context::{Context, Origin};
pub use effect::Effect;
pub use entity::Entity;
pub use projection::{EventEnvelope, Projection, View};
pub use reply::Reply;
pub use side_effect::{Level, SideEffect};

// wit-bindgen's `runtime_path`/`default_bindings_module` must be paths that work
// both here and in the entity crate where `export_entity!` expands.
#[cfg(target_arch = "wasm32")]
extern crate self as mneme_sdk;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit/entity.wit",
        world: "entity-with-fast-paths",
        pub_export_macro: true,
        export_macro_name: "__mneme_export_handler",
        default_bindings_module: "::mneme_sdk::__private::bindings",
        runtime_path: "::mneme_sdk::__private::wit_bindgen::rt",
    });
}

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod projection_bindings {
    wit_bindgen::generate!({
        path: "../wit/projection.wit",
        world: "projection-with-fast-paths",
        pub_export_macro: true,
        export_macro_name: "__mneme_export_projection",
        default_bindings_module: "::mneme_sdk::__private::projection_bindings",
        runtime_path: "::mneme_sdk::__private::wit_bindgen::rt",
    });
}

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod glue;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod projection_glue;

/// Used by [`export_entity!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    #[cfg(target_arch = "wasm32")]
    pub use crate::bindings;
    #[cfg(target_arch = "wasm32")]
    pub use crate::bindings::exports::mneme::entity::decide::{Decision, Guest as DecideGuest};
    #[cfg(target_arch = "wasm32")]
    pub use crate::bindings::exports::mneme::entity::handler::Guest;
    #[cfg(target_arch = "wasm32")]
    pub use crate::bindings::exports::mneme::entity::replay::Guest as ReplayGuest;
    #[cfg(target_arch = "wasm32")]
    pub use crate::bindings::mneme::entity::types as wit;
    #[cfg(target_arch = "wasm32")]
    pub use crate::glue;
    #[cfg(target_arch = "wasm32")]
    pub use crate::projection_bindings;
    #[cfg(target_arch = "wasm32")]
    pub use crate::projection_bindings::exports::mneme::projection::feed::Guest as FeedGuest;
    #[cfg(target_arch = "wasm32")]
    pub use crate::projection_bindings::exports::mneme::projection::handler::Guest as ProjectionGuest;
    #[cfg(target_arch = "wasm32")]
    pub use crate::projection_bindings::mneme::projection::types as projection_wit;
    #[cfg(target_arch = "wasm32")]
    pub use crate::projection_glue;
    #[cfg(target_arch = "wasm32")]
    pub use wit_bindgen;
}

/// Exports an [`Entity`] as the component's `mneme:entity/handler`, with `replay`
/// (recovery calls it with packed batches) and `decide` (each command: decide and
/// apply the events in one call).
///
/// Use it once per component crate, at the top level. On `wasm32` it generates the
/// wit-bindgen glue; on any other target it only checks that the type implements
/// [`Entity`], so native `cargo test` needs no Wasm toolchain.
#[cfg(target_arch = "wasm32")]
#[macro_export]
macro_rules! export_entity {
    ($ty:ty) => {
        const _: () = {
            struct __MnemeEntity;

            impl $crate::__private::Guest for __MnemeEntity {
                fn describe() -> $crate::__private::wit::EntityInfo {
                    $crate::__private::glue::describe::<$ty>()
                }
                fn empty_state() -> ::std::vec::Vec<u8> {
                    $crate::__private::glue::empty_state::<$ty>()
                }
                fn handle_command(
                    state: ::std::vec::Vec<u8>,
                    command: $crate::__private::wit::Command,
                ) -> ::std::result::Result<$crate::__private::wit::Effect, ::std::string::String> {
                    $crate::__private::glue::handle_command::<$ty>(state, command)
                }
                fn apply_events(
                    state: ::std::vec::Vec<u8>,
                    events: ::std::vec::Vec<$crate::__private::wit::Event>,
                ) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                    $crate::__private::glue::apply_events::<$ty>(state, events)
                }
                fn on_recovery_completed(
                    state: ::std::vec::Vec<u8>,
                ) -> ::std::vec::Vec<$crate::__private::wit::SideEffect> {
                    $crate::__private::glue::on_recovery_completed::<$ty>(state)
                }
            }

            impl $crate::__private::ReplayGuest for __MnemeEntity {
                fn apply_event_batch(
                    state: ::std::vec::Vec<u8>,
                    batch: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                    $crate::__private::glue::apply_event_batch::<$ty>(state, batch)
                }
            }

            impl $crate::__private::DecideGuest for __MnemeEntity {
                fn handle_command_and_apply(
                    state: ::std::vec::Vec<u8>,
                    command: $crate::__private::wit::Command,
                ) -> ::std::result::Result<$crate::__private::Decision, ::std::string::String> {
                    $crate::__private::glue::handle_command_and_apply::<$ty>(state, command)
                }
            }

            $crate::__private::bindings::__mneme_export_handler!(__MnemeEntity with_types_in $crate::__private::bindings);
        };
    };
}

/// Exports an [`Entity`] as the component's `mneme:entity/handler`, with `replay`
/// (recovery calls it with packed batches) and `decide` (each command: decide and
/// apply the events in one call).
///
/// Use it once per component crate, at the top level. On `wasm32` it generates the
/// wit-bindgen glue; on any other target it only checks that the type implements
/// [`Entity`], so native `cargo test` needs no Wasm toolchain.
#[cfg(not(target_arch = "wasm32"))]
#[macro_export]
macro_rules! export_entity {
    ($ty:ty) => {
        const _: fn() = || {
            fn assert_entity<E: $crate::Entity>() {}
            assert_entity::<$ty>();
        };
    };
}

/// Exports a [`Projection`] as the component's `mneme:projection/handler`, with
/// `feed` (mneme hands it each batch packed into one buffer).
///
/// Use it once per component crate, at the top level (a crate is an entity or a
/// projection, not both). On `wasm32` it generates the wit-bindgen glue; on any
/// other target it only checks that the type implements [`Projection`].
#[cfg(target_arch = "wasm32")]
#[macro_export]
macro_rules! export_projection {
    ($ty:ty) => {
        const _: () = {
            struct __MnemeProjection;

            impl $crate::__private::ProjectionGuest for __MnemeProjection {
                fn describe() -> $crate::__private::projection_wit::ProjectionInfo {
                    $crate::__private::projection_glue::describe::<$ty>()
                }
                fn handle_events(
                    events: ::std::vec::Vec<$crate::__private::projection_wit::StoredEvent>,
                ) -> ::std::result::Result<
                    ::std::vec::Vec<$crate::__private::projection_wit::ViewUpdate>,
                    ::std::string::String,
                > {
                    $crate::__private::projection_glue::handle_events::<$ty>(events)
                }
            }

            impl $crate::__private::FeedGuest for __MnemeProjection {
                fn handle_event_batch(
                    batch: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<
                    ::std::vec::Vec<$crate::__private::projection_wit::ViewUpdate>,
                    ::std::string::String,
                > {
                    $crate::__private::projection_glue::handle_event_batch::<$ty>(batch)
                }
            }

            $crate::__private::projection_bindings::__mneme_export_projection!(
                __MnemeProjection with_types_in $crate::__private::projection_bindings
            );
        };
    };
}

/// Exports a [`Projection`] as the component's `mneme:projection/handler`, with
/// `feed` (mneme hands it each batch packed into one buffer).
///
/// Use it once per component crate, at the top level (a crate is an entity or a
/// projection, not both). On `wasm32` it generates the wit-bindgen glue; on any
/// other target it only checks that the type implements [`Projection`].
#[cfg(not(target_arch = "wasm32"))]
#[macro_export]
macro_rules! export_projection {
    ($ty:ty) => {
        const _: fn() = || {
            fn assert_projection<P: $crate::Projection>() {}
            assert_projection::<$ty>();
        };
    };
}

#[cfg(test)]
mod tests;
