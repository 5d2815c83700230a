//! Components built against `mneme:entity@0.1.x` (`wit/v0.1/entity.wit`): their
//! types, converted to and from the current world's, so the engine sees one
//! [`EntityHandler`](super::EntityHandler) whatever world a component was built for.
//!
//! 0.2.0 differs from 0.1.0 only by `command-metadata.origin`, which a 0.1
//! component does not see. Everything else has the same shape; the conversions
//! move what they can and copy what the host keeps (the command, recovery's
//! events).

use super::bindings::mneme::entity::types as now;
use super::bindings_v01::mneme::entity::types as v01;

pub fn command(c: &now::Command) -> v01::Command {
    let m = &c.metadata;
    v01::Command {
        manifest: c.manifest.clone(),
        payload: c.payload.clone(),
        metadata: v01::CommandMetadata {
            entity_type: m.entity_type.clone(),
            entity_id: m.entity_id.clone(),
            sequence_nr: m.sequence_nr,
            timestamp_ms: m.timestamp_ms,
        },
    }
}

pub fn events(events: &[now::Event]) -> Vec<v01::Event> {
    events
        .iter()
        .map(|e| v01::Event { manifest: e.manifest.clone(), payload: e.payload.clone(), tags: e.tags.clone() })
        .collect()
}

pub fn info(i: v01::EntityInfo) -> now::EntityInfo {
    now::EntityInfo { type_name: i.type_name, state_version: i.state_version, snapshot_every: i.snapshot_every }
}

pub fn effect(e: v01::Effect) -> now::Effect {
    let action = match e.action {
        v01::Action::Persist(events) => now::Action::Persist(
            events.into_iter().map(|e| now::Event { manifest: e.manifest, payload: e.payload, tags: e.tags }).collect(),
        ),
        v01::Action::None => now::Action::None,
        v01::Action::Unhandled => now::Action::Unhandled,
        v01::Action::Stash => now::Action::Stash,
    };
    let reply = e.reply.map(|r| match r {
        v01::Reply::Ok(body) => now::Reply::Ok(body),
        v01::Reply::Error(message) => now::Reply::Error(message),
    });
    now::Effect { action, reply, then: side_effects(e.then), unstash_all: e.unstash_all, stop: e.stop }
}

fn command_to(c: v01::CommandTo) -> now::CommandTo {
    now::CommandTo { entity_type: c.entity_type, entity_id: c.entity_id, payload: c.payload }
}

pub fn side_effects(side_effects: Vec<v01::SideEffect>) -> Vec<now::SideEffect> {
    side_effects
        .into_iter()
        .map(|s| match s {
            v01::SideEffect::Send(c) => now::SideEffect::Send(command_to(c)),
            v01::SideEffect::Schedule(t) => {
                now::SideEffect::Schedule(now::Timer { delay_ms: t.delay_ms, command: command_to(t.command) })
            }
            v01::SideEffect::Publish(m) => {
                now::SideEffect::Publish(now::Message { topic: m.topic, payload: m.payload })
            }
            v01::SideEffect::Log(l) => now::SideEffect::Log(now::LogLine {
                level: match l.level {
                    v01::LogLevel::Trace => now::LogLevel::Trace,
                    v01::LogLevel::Debug => now::LogLevel::Debug,
                    v01::LogLevel::Info => now::LogLevel::Info,
                    v01::LogLevel::Warn => now::LogLevel::Warn,
                    v01::LogLevel::Error => now::LogLevel::Error,
                },
                message: l.message,
            }),
        })
        .collect()
}
