//! A Rust entity run natively through the engine, for the Wasm-vs-native figure.
//! The same entity code, the same JSON codec (the SDK's `runtime`), no sandbox.

use std::marker::PhantomData;

use mneme::component::bindings::mneme::entity::types::{
    Action, Command, CommandTo, Effect, EntityInfo, Event, LogLevel, LogLine, Message, Reply, SideEffect, Timer,
};
use mneme::component::{EntityHandler, Fault};
use mneme_sdk::runtime;

pub struct Native<E>(PhantomData<fn() -> E>);

impl<E> Native<E> {
    pub fn new() -> Self {
        Native(PhantomData)
    }
}

fn side_effect(s: &mneme_sdk::SideEffect) -> SideEffect {
    use mneme_sdk::SideEffect as S;
    match s.clone() {
        S::Send { entity_type, entity_id, payload } => SideEffect::Send(CommandTo { entity_type, entity_id, payload }),
        S::Schedule { delay_ms, entity_type, entity_id, payload } => {
            SideEffect::Schedule(Timer { delay_ms, command: CommandTo { entity_type, entity_id, payload } })
        }
        S::Publish { topic, payload } => SideEffect::Publish(Message { topic, payload }),
        S::Log { level, message } => SideEffect::Log(LogLine {
            level: match level {
                mneme_sdk::Level::Trace => LogLevel::Trace,
                mneme_sdk::Level::Debug => LogLevel::Debug,
                mneme_sdk::Level::Info => LogLevel::Info,
                mneme_sdk::Level::Warn => LogLevel::Warn,
                mneme_sdk::Level::Error => LogLevel::Error,
            },
            message,
        }),
    }
}

impl<E: mneme_sdk::Entity> EntityHandler for Native<E> {
    fn describe(&mut self) -> Result<EntityInfo, Fault> {
        Ok(EntityInfo {
            type_name: E::TYPE_NAME.into(),
            state_version: E::STATE_VERSION,
            snapshot_every: E::SNAPSHOT_EVERY,
        })
    }

    fn empty_state(&mut self) -> Result<Vec<u8>, Fault> {
        Ok(runtime::empty_state::<E>())
    }

    fn handle_command(&mut self, state: &[u8], command: &Command) -> Result<Result<Effect, String>, Fault> {
        let m = &command.metadata;
        let mut ctx =
            mneme_sdk::Context::new(m.entity_type.clone(), m.entity_id.clone(), m.sequence_nr, m.timestamp_ms);
        if let Some(o) = &m.origin {
            ctx = ctx.sent_by(o.source.clone(), o.idempotency_key.clone());
        }
        let effect = match runtime::handle_command::<E>(state, &command.payload, &ctx) {
            Ok(e) => e,
            Err(msg) => return Ok(Err(msg)),
        };
        let action = if effect.is_persist() {
            Action::Persist(
                effect
                    .events()
                    .iter()
                    .map(|e| Event { manifest: e.manifest.clone(), payload: e.payload.clone(), tags: e.tags.clone() })
                    .collect(),
            )
        } else if effect.is_unhandled() {
            Action::Unhandled
        } else if effect.is_stashed() {
            Action::Stash
        } else {
            Action::None
        };
        Ok(Ok(Effect {
            action,
            reply: effect.reply_value().map(|r| match r {
                mneme_sdk::Reply::Ok(b) => Reply::Ok(b.clone()),
                mneme_sdk::Reply::Error(m) => Reply::Error(m.clone()),
            }),
            then: effect.side_effects().iter().map(side_effect).collect(),
            unstash_all: effect.unstashes_all(),
            stop: effect.stops(),
        }))
    }

    fn apply_events(&mut self, state: &[u8], events: &[Event]) -> Result<Result<Vec<u8>, String>, Fault> {
        Ok(runtime::apply_events::<E>(state, events.iter().map(|e| (e.manifest.as_str(), e.payload.as_slice()))))
    }

    fn on_recovery_completed(&mut self, state: &[u8]) -> Result<Vec<SideEffect>, Fault> {
        Ok(runtime::on_recovery_completed::<E>(state).iter().map(side_effect).collect())
    }
}
