//! Test-only entity that attacks the host on request, so every guest limit of the
//! sandbox is tested end to end (tests/tests/hostile.rs). Built for wasm32 only.
//!
//! Well-behaved commands: `{"type":"Record","value":"a"}` persists `Recorded` and
//! replies the values so far; `{"type":"Get"}` replies them.
//!
//! Attacks (none persists anything):
//! * `Loop` — spins forever (CPU deadline);
//! * `GrowMemory` — grows linear memory page by page with `memory.grow`, below the
//!   allocator, until the host refuses, then traps (memory cap);
//! * `Recurse` — recursion without a base case the host could reach (Wasm stack);
//! * `HugeReply {bytes}` — a reply body of that many bytes, a JSON string (reply size);
//! * `HugeError {bytes}` — an error reply of that many bytes (reply size);
//! * `ManyEvents {count}` — persists `count` events in one command (events per command);
//! * `HugeEvent {bytes}` — one event with a payload of that many bytes (the journal's
//!   `--max-event-bytes`);
//! * `BadUtf8Import` — calls `report-fault` through the raw canonical ABI with bytes
//!   that are not UTF-8 (a string into the host);
//! * `BadUtf8Reply` — returns an error reply whose string is not UTF-8 (a string
//!   out of a guest export);
//! * `Print` — `println!`, which needs WASI `stdout` (linked as a trap).

use std::hint::black_box;

use mneme_sdk::{export_entity, Context, Effect, Entity, Reply};
use serde::{Deserialize, Serialize};

pub struct Hostile;

#[derive(Deserialize)]
#[serde(tag = "type")]
pub enum Command {
    Record { value: String },
    Get,
    Loop,
    GrowMemory,
    Recurse,
    HugeReply { bytes: usize },
    HugeError { bytes: usize },
    ManyEvents { count: usize },
    HugeEvent { bytes: usize },
    BadUtf8Import,
    BadUtf8Reply,
    Print,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    Recorded { value: String },
}

#[derive(Serialize, Deserialize, Default, Clone)]
pub struct State {
    pub values: Vec<String>,
}

impl Entity for Hostile {
    type Command = Command;
    type Event = Event;
    type State = State;
    const TYPE_NAME: &'static str = "hostile";

    fn handle(state: &State, command: Command, _ctx: &Context) -> Effect<Event> {
        match command {
            Command::Record { value } => {
                let mut values = state.values.clone();
                values.push(value.clone());
                Effect::persist(Event::Recorded { value }).then_reply(Reply::ok(&values))
            }
            Command::Get => Effect::reply(Reply::ok(&state.values)),
            Command::Loop => spin_forever(),
            Command::GrowMemory => grow_memory_until_refused(),
            Command::Recurse => Effect::reply(Reply::ok(&recurse(black_box(u64::MAX), 1))),
            Command::HugeReply { bytes } => Effect::reply(Reply::ok_raw(json_string_of_len(bytes))),
            Command::HugeError { bytes } => Effect::reply(Reply::error("x".repeat(bytes))),
            Command::ManyEvents { count } => {
                let events = (0..count).map(|i| Event::Recorded { value: i.to_string() }).collect();
                Effect::persist_all(events).then_reply(Reply::ack())
            }
            Command::HugeEvent { bytes } => {
                Effect::persist(Event::Recorded { value: "x".repeat(bytes) }).then_reply(Reply::ack())
            }
            Command::BadUtf8Import => report_fault_raw(&[b'b', b'a', b'd', 0xff, 0xfe]),
            Command::BadUtf8Reply => Effect::reply(Reply::error(not_utf8())),
            Command::Print => {
                println!("a guest has no stdout");
                Effect::reply(Reply::ack())
            }
        }
    }

    fn apply(mut state: State, event: &Event) -> State {
        match event {
            Event::Recorded { value } => state.values.push(value.clone()),
        }
        state
    }
}

/// `"xx…x"`: `len` bytes (at least 2) of valid JSON.
fn json_string_of_len(len: usize) -> Vec<u8> {
    let mut body = vec![b'x'; len.max(2)];
    body[0] = b'"';
    body[len.max(2) - 1] = b'"';
    body
}

/// `black_box` keeps the optimizer from proving the loop side-effect free.
fn spin_forever() -> ! {
    let mut counter = 0u64;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

/// `memory.grow` directly, so no allocator stands between the guest and the
/// host's limit. When the host refuses a page the guest traps.
fn grow_memory_until_refused() -> ! {
    #[cfg(target_arch = "wasm32")]
    loop {
        if core::arch::wasm32::memory_grow(0, 16) == usize::MAX {
            core::arch::wasm32::unreachable();
        }
    }
    #[cfg(not(target_arch = "wasm32"))]
    unreachable!("wasm32 only")
}

/// Not a tail call (the result is mixed after the call returns), so every level
/// keeps a frame on the Wasm stack; `depth` is never reached in practice.
#[inline(never)]
fn recurse(depth: u64, seed: u64) -> u64 {
    if depth == 0 {
        return seed;
    }
    let below = recurse(black_box(depth - 1), seed.wrapping_mul(31).wrapping_add(depth));
    below ^ (below >> 7).wrapping_add(depth)
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "mneme:entity/host@0.2.0")]
unsafe extern "C" {
    /// `report-fault: func(message: string)` in the canonical ABI: (pointer, length)
    /// of the string's bytes, which the host lifts and must find to be UTF-8.
    #[link_name = "report-fault"]
    fn report_fault_abi(ptr: *const u8, len: usize);
}

/// Hands `bytes` to `report-fault` as they are. The host's lifting refuses them,
/// which traps this call.
fn report_fault_raw(bytes: &[u8]) -> ! {
    #[cfg(target_arch = "wasm32")]
    unsafe {
        report_fault_abi(bytes.as_ptr(), bytes.len());
    }
    let _ = bytes;
    panic!("the host accepted a string that is not UTF-8");
}

/// A `String` holding bytes that are not UTF-8. Only ever moved and handed to the
/// canonical ABI (which copies the bytes out as they are); no `str` method sees it.
/// Safe Rust bindings cannot return such a string any other way.
fn not_utf8() -> String {
    // SAFETY: see above; the bytes are never read as `str` in this component.
    unsafe { String::from_utf8_unchecked(vec![b'b', b'a', b'd', 0xc3, 0x28]) }
}

export_entity!(Hostile);
