//! `mneme-testkit`: Akka's `EventSourcedBehaviorTestKit` for mneme entities.
//!
//! *Given* events, *when* a command, *then* the reply, the persisted events and
//! the state, without a journal or a server. The entity runs through the same
//! code the server uses: a `.wasm` component (any language) is validated,
//! compiled and called in the real sandbox (`mneme::component`), with the same
//! limits; a Rust entity can also run natively ([`TestKit::native`]).
//!
//! ```no_run
//! use mneme_testkit::TestKit;
//! use serde_json::json;
//!
//! let mut kit = TestKit::wasm("target/components/bank-account.wasm").unwrap();
//! kit.given(&[json!({"type":"AccountCreated"}), json!({"type":"Deposited","amount":100})]);
//! let result = kit.run(json!({"type":"Withdraw","amount":30}));
//! assert_eq!(result.reply_json(), json!({"balance":70}));
//! assert_eq!(result.event_payloads(), vec![json!({"type":"Withdrawn","amount":30})]);
//! assert_eq!(kit.state_json(), json!({"status":"open","balance":70}));
//! kit.restart(); // replay every event from the empty state: the same state
//! ```
//!
//! Every command is also checked the way the server would: the action's events
//! must pass the journal's manifest and tag rules, and (Akka's serialization
//! check) the state must survive a round trip through `apply-events` unchanged,
//! so a snapshot of it recovers to the same state, and the state a handler
//! computed with its decision (`decide.handle-command-and-apply`, which the
//! server keeps) must equal `apply-events` of the events it persisted (what
//! recovery rebuilds).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use mneme::component::bindings::mneme::entity::types::{Action, Command, CommandMetadata, Event, Reply, SideEffect};
use mneme::component::store::sha256_hex;
use mneme::component::{sandbox::Runtime, Decision, EntityHandler, LoadedComponent, Registry, SandboxLimits};
use serde_json::Value;

mod native;

pub use mneme::component::bindings::mneme::entity::types as wit;
pub use native::Native;

/// An event as the journal would store it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedEvent {
    pub seq_nr: u64,
    pub manifest: String,
    pub payload: Vec<u8>,
    pub tags: Vec<String>,
}

impl PersistedEvent {
    /// The payload as JSON (panics when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("event {} ({}) is not JSON: {e}", self.seq_nr, self.manifest))
    }
}

/// What one command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An `ok` reply (HTTP 200).
    Reply(Vec<u8>),
    /// An `error` reply: a domain rejection (HTTP 422).
    ErrorReply(String),
    /// No reply (HTTP 204).
    NoReply,
    /// The action `unhandled`: a known command the state does not accept (HTTP 409).
    Unhandled,
    /// `err` from `handle-command`: malformed or unknown command (HTTP 400).
    Malformed(String),
    /// Stashed: handed in again after a command whose effect unstashes all.
    Stashed,
    /// A trap, a panic, a guest limit hit, or events the journal would refuse
    /// (HTTP 500 or 422). Nothing was persisted.
    Fault(String),
}

/// The result of [`TestKit::run`]: the outcome, the events persisted, the state after.
#[derive(Debug, Clone)]
pub struct CommandResult {
    pub outcome: Outcome,
    pub events: Vec<PersistedEvent>,
    pub state: Vec<u8>,
    pub side_effects: Vec<SideEffect>,
    /// The entity asked to be stopped (passivated) after this command.
    pub stop: bool,
    /// Results of stashed commands handed in again by this command's `unstash-all`.
    pub unstashed: Vec<CommandResult>,
}

impl CommandResult {
    /// The `ok` reply as JSON; panics on any other outcome.
    pub fn reply_json(&self) -> Value {
        match &self.outcome {
            Outcome::Reply(b) => serde_json::from_slice(b).unwrap_or_else(|e| panic!("reply is not JSON: {e}")),
            other => panic!("expected an ok reply, got {other:?}"),
        }
    }

    /// The error reply's message; panics on any other outcome.
    pub fn error(&self) -> &str {
        match &self.outcome {
            Outcome::ErrorReply(m) => m,
            other => panic!("expected an error reply, got {other:?}"),
        }
    }

    pub fn is_unhandled(&self) -> bool {
        self.outcome == Outcome::Unhandled
    }

    pub fn is_malformed(&self) -> bool {
        matches!(self.outcome, Outcome::Malformed(_))
    }

    /// The payloads of the events persisted by this command, as JSON.
    pub fn event_payloads(&self) -> Vec<Value> {
        self.events.iter().map(PersistedEvent::json).collect()
    }

    /// The manifests of the events persisted by this command.
    pub fn manifests(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.manifest.as_str()).collect()
    }

    /// The state after the command, as JSON.
    pub fn state_json(&self) -> Value {
        serde_json::from_slice(&self.state).unwrap_or_else(|e| panic!("state is not JSON: {e}"))
    }

    /// Payloads (JSON) of the messages this command published to `topic`.
    pub fn published(&self, topic: &str) -> Vec<Value> {
        self.side_effects
            .iter()
            .filter_map(|s| match s {
                SideEffect::Publish(m) if m.topic == topic => serde_json::from_slice(&m.payload).ok(),
                _ => None,
            })
            .collect()
    }

    /// Commands this command sends (`send`), as (entity type, entity id, payload JSON).
    pub fn sent(&self) -> Vec<(String, String, Value)> {
        self.side_effects
            .iter()
            .filter_map(|s| match s {
                SideEffect::Send(c) => Some((
                    c.entity_type.clone(),
                    c.entity_id.clone(),
                    serde_json::from_slice(&c.payload).unwrap_or(Value::Null),
                )),
                _ => None,
            })
            .collect()
    }
}

/// How handlers are made: a component's version in a registry, or native code.
enum Maker {
    Wasm { component: Arc<LoadedComponent>, registry: Arc<Registry>, _dir: Arc<tempfile::TempDir> },
    Native(Box<dyn Fn() -> Box<dyn EntityHandler>>),
}

impl Maker {
    fn make(&self) -> Box<dyn EntityHandler> {
        match self {
            Maker::Wasm { component, registry, .. } => component
                .instantiate(registry.runtime())
                .unwrap_or_else(|e| panic!("cannot instantiate the component: {e}")),
            Maker::Native(f) => f(),
        }
    }
}

/// One entity under test: its state, sequence number and events, in memory.
pub struct TestKit {
    maker: Maker,
    handler: Box<dyn EntityHandler>,
    entity_type: String,
    entity_id: String,
    state: Vec<u8>,
    events: Vec<PersistedEvent>,
    stash: Vec<Vec<u8>>,
    unstash_pending: bool,
    /// `timestamp-ms` handed to the next command; moves 1 ms per command.
    pub clock_ms: u64,
    /// Check the state's round trip after every command (on by default).
    pub serialization_check: bool,
}

/// Make `data_dir/cache` (the registry's precompiled code) the cache kept
/// across test runs, which keeps the newest [`KEPT_PRECOMPILED`] entries (a
/// Python component's is about 36 MB); without a home directory, the run
/// compiles on its own.
fn share_precompiled(data_dir: &Path) {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")));
    let Some(cache) = base.map(|b| b.join("mneme/testkit")) else { return };
    #[cfg(unix)]
    if std::fs::create_dir_all(&cache).is_ok() {
        let _ = std::os::unix::fs::symlink(&cache, data_dir.join("cache"));
        let mut entries: Vec<_> = std::fs::read_dir(&cache)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.0));
        for (_, old) in entries.into_iter().skip(KEPT_PRECOMPILED) {
            let _ = std::fs::remove_file(old);
        }
    }
}

/// Precompiled components kept across test runs.
const KEPT_PRECOMPILED: usize = 16;

impl TestKit {
    /// A component file (any language), deployed under its file stem, with the
    /// server's default sandbox limits.
    pub fn wasm(path: impl AsRef<Path>) -> anyhow::Result<TestKit> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let name = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        TestKit::wasm_bytes(&name, &bytes, SandboxLimits::default())
    }

    /// A component's bytes deployed as `entity_type`, with the given limits.
    ///
    /// Compiling a Python or JavaScript component takes seconds, so the compiled
    /// component is kept for the rest of the process (the tests of one file
    /// compile it once, whichever runs first; the others wait for it), and its
    /// precompiled code across runs, in `$XDG_CACHE_HOME/mneme/testkit` (default
    /// `~/.cache/mneme/testkit`), keyed like the server's cache by the
    /// component's hash and the engine's settings.
    pub fn wasm_bytes(entity_type: &str, wasm: &[u8], limits: SandboxLimits) -> anyhow::Result<TestKit> {
        type Compiled = (Arc<LoadedComponent>, Arc<Registry>, Arc<tempfile::TempDir>);
        static COMPILED: Mutex<BTreeMap<String, Compiled>> = Mutex::new(BTreeMap::new());
        let key = format!("{entity_type} {} {limits:?}", sha256_hex(wasm));
        let mut compiled = COMPILED.lock().unwrap_or_else(|e| e.into_inner());
        let (component, registry, dir) = match compiled.get(&key) {
            Some(c) => c.clone(),
            None => {
                let dir = Arc::new(tempfile::tempdir()?);
                share_precompiled(dir.path());
                let registry = Arc::new(Registry::open(Runtime::new(limits)?, dir.path())?);
                let component = registry.deploy(entity_type, wasm).map_err(anyhow::Error::msg)?;
                let c = (component, registry, dir);
                compiled.insert(key, c.clone());
                c
            }
        };
        drop(compiled);
        let maker = Maker::Wasm { component, registry, _dir: dir };
        Ok(TestKit::with_maker(entity_type, maker))
    }

    /// A Rust entity, natively (no sandbox): fast, and the panics of its code are
    /// reported like traps.
    pub fn native<E: mneme_sdk::Entity + 'static>() -> TestKit {
        TestKit::with_maker(E::TYPE_NAME, Maker::Native(Box::new(|| Box::new(Native::<E>::default()))))
    }

    fn with_maker(entity_type: &str, maker: Maker) -> TestKit {
        let mut handler = maker.make();
        let state = handler.empty_state().unwrap_or_else(|f| panic!("empty-state failed: {}", f.0));
        TestKit {
            maker,
            handler,
            entity_type: entity_type.to_string(),
            entity_id: "test-1".to_string(),
            state,
            events: Vec::new(),
            stash: Vec::new(),
            unstash_pending: false,
            clock_ms: 1_700_000_000_000,
            serialization_check: true,
        }
    }

    /// The entity id commands are addressed to (default `test-1`).
    pub fn with_id(mut self, entity_id: &str) -> TestKit {
        self.entity_id = entity_id.to_string();
        self
    }

    /// What the component says about itself.
    pub fn describe(&mut self) -> wit::EntityInfo {
        self.handler.describe().unwrap_or_else(|f| panic!("describe failed: {}", f.0))
    }

    /// Events already in the journal, as JSON payloads whose `type` field is the
    /// manifest (the examples' convention); applied to the state.
    pub fn given(&mut self, events: &[Value]) -> &mut TestKit {
        let events: Vec<(String, Vec<u8>)> = events
            .iter()
            .map(|e| {
                let manifest = e["type"].as_str().unwrap_or_else(|| panic!("event without a \"type\": {e}"));
                (manifest.to_string(), serde_json::to_vec(e).unwrap())
            })
            .collect();
        self.given_raw(events)
    }

    /// Events already in the journal, as (manifest, payload bytes): e.g. events an
    /// older version wrote, under their old manifests.
    pub fn given_raw(&mut self, events: impl IntoIterator<Item = (String, Vec<u8>)>) -> &mut TestKit {
        let start = self.events.len() as u64;
        let new: Vec<PersistedEvent> = events
            .into_iter()
            .enumerate()
            .map(|(i, (manifest, payload))| PersistedEvent {
                seq_nr: start + i as u64 + 1,
                manifest,
                payload,
                tags: vec![],
            })
            .collect();
        self.state = self.apply(self.state.clone(), &new).unwrap_or_else(|e| panic!("given events: {e}"));
        self.events.extend(new);
        self
    }

    /// Replace the state, as a snapshot would (bytes of the current state version).
    pub fn given_state(&mut self, state: &Value, seq_nr: u64) -> &mut TestKit {
        self.state = serde_json::to_vec(state).unwrap();
        self.events.clear();
        self.events.extend((1..=seq_nr).map(|n| PersistedEvent {
            seq_nr: n,
            manifest: String::new(),
            payload: vec![],
            tags: vec![],
        }));
        self
    }

    /// Send a JSON command.
    pub fn run(&mut self, command: Value) -> CommandResult {
        self.run_raw(serde_json::to_vec(&command).unwrap())
    }

    /// Send a command as bytes (any encoding the entity reads).
    pub fn run_raw(&mut self, payload: Vec<u8>) -> CommandResult {
        let mut result = self.run_one(payload);
        if matches!(result.outcome, Outcome::Reply(_) | Outcome::ErrorReply(_) | Outcome::NoReply)
            && self.unstash_pending
        {
            self.unstash_pending = false;
            for stashed in std::mem::take(&mut self.stash) {
                let r = self.run_raw(stashed);
                result.unstashed.push(r);
            }
            result.state = self.state.clone();
        }
        result
    }

    fn metadata(&self) -> CommandMetadata {
        CommandMetadata {
            entity_type: self.entity_type.clone(),
            entity_id: self.entity_id.clone(),
            sequence_nr: self.seq_nr(),
            timestamp_ms: self.clock_ms,
            origin: None,
        }
    }

    fn run_one(&mut self, payload: Vec<u8>) -> CommandResult {
        self.clock_ms += 1;
        let command = Command { manifest: String::new(), payload: payload.clone(), metadata: self.metadata() };
        let done = |kit: &TestKit, outcome: Outcome| CommandResult {
            outcome,
            events: vec![],
            state: kit.state.clone(),
            side_effects: vec![],
            stop: false,
            unstashed: vec![],
        };
        let Decision { effect, state_after } = match self.handler.handle_command_and_apply(&self.state, &command) {
            Ok(Ok(decision)) => decision,
            Ok(Err(msg)) => return done(self, Outcome::Malformed(msg)),
            Err(fault) => {
                self.handler = self.maker.make();
                return done(self, Outcome::Fault(fault.0));
            }
        };
        let limits = SandboxLimits::default();
        if let Err(f) = mneme::component::limits::check_decision(Ok(&effect), &limits) {
            return done(self, Outcome::Fault(f.0));
        }
        let events = match effect.action {
            Action::Unhandled => return done(self, Outcome::Unhandled),
            Action::Stash => {
                self.stash.push(payload);
                return done(self, Outcome::Stashed);
            }
            Action::None => vec![],
            Action::Persist(events) => events,
        };
        for e in &events {
            let checked = mneme::names::validate_label("manifest", &e.manifest, true)
                .and_then(|_| e.tags.iter().try_for_each(|t| mneme::names::validate_label("tag", t, false)));
            if let Err(why) = checked {
                return done(self, Outcome::Fault(format!("the journal would reject the events: {why}")));
            }
        }
        let start = self.seq_nr();
        let persisted: Vec<PersistedEvent> = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| PersistedEvent {
                seq_nr: start + i as u64 + 1,
                manifest: e.manifest,
                payload: e.payload,
                tags: e.tags,
            })
            .collect();
        let state = match self.apply(self.state.clone(), &persisted) {
            Ok(s) => s,
            Err(e) => return done(self, Outcome::Fault(e)),
        };
        if self.serialization_check {
            self.check_round_trip(&state);
            if let Some(after) = state_after.filter(|_| !persisted.is_empty()) {
                self.check_state_after(&after, &state);
            }
        }
        self.state = state;
        self.events.extend(persisted.iter().cloned());
        self.unstash_pending = effect.unstash_all;
        let outcome = match effect.reply {
            Some(Reply::Ok(b)) => Outcome::Reply(b),
            Some(Reply::Error(m)) => Outcome::ErrorReply(m),
            None => Outcome::NoReply,
        };
        CommandResult {
            outcome,
            events: persisted,
            state: self.state.clone(),
            side_effects: effect.then,
            stop: effect.stop,
            unstashed: vec![],
        }
    }

    fn apply(&mut self, state: Vec<u8>, events: &[PersistedEvent]) -> Result<Vec<u8>, String> {
        if events.is_empty() {
            return Ok(state);
        }
        // As in recovery: the tags are not handed in.
        let wit_events: Vec<Event> = events
            .iter()
            .map(|e| Event { manifest: e.manifest.clone(), payload: e.payload.clone(), tags: vec![] })
            .collect();
        match self.handler.apply_events(&state, &wit_events) {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(msg)) => Err(format!("apply-events refused the events: {msg}")),
            Err(f) => {
                self.handler = self.maker.make();
                Err(format!("apply-events faulted: {}", f.0))
            }
        }
    }

    /// Akka's serialization check, for mneme's byte states: the state handed back
    /// into `apply-events` with no event must come out unchanged (it decodes and
    /// encodes to itself), or a snapshot of it would recover to another state.
    fn check_round_trip(&mut self, state: &[u8]) {
        match self.handler.apply_events(state, &[]) {
            Ok(Ok(again)) => assert!(
                again == state,
                "serialization check: the state does not survive a round trip through apply-events\n  before: {}\n  after:  {}",
                String::from_utf8_lossy(state),
                String::from_utf8_lossy(&again)
            ),
            Ok(Err(msg)) => panic!("serialization check: apply-events cannot read the state it wrote: {msg}"),
            Err(f) => panic!("serialization check: apply-events faulted on the state it wrote: {}", f.0),
        }
    }

    /// The server keeps the state a handler computed with its decision
    /// (`decide.handle-command-and-apply`); recovery folds the stored events
    /// through `apply-events`: both must give the same state.
    fn check_state_after(&self, decided: &[u8], folded: &[u8]) {
        assert!(
            decided == folded,
            "serialization check: the state handle-command-and-apply returned differs from apply-events of its \
             events, so recovery would rebuild another state than the live one\n  decided: {}\n  folded:  {}",
            String::from_utf8_lossy(decided),
            String::from_utf8_lossy(folded)
        );
    }

    /// Restart the entity as the server would after a crash: a fresh instance
    /// replays every event from the empty state (Akka's `restart()`). Panics when
    /// the replayed state differs from the state the commands left, or recovery
    /// fails; returns the side effects of `on-recovery-completed`.
    pub fn restart(&mut self) -> Vec<SideEffect> {
        self.handler = self.maker.make();
        if self.events.iter().any(|e| e.manifest.is_empty() && e.payload.is_empty()) {
            // Started from `given_state`: recover from that snapshot.
            return self
                .handler
                .on_recovery_completed(&self.state)
                .unwrap_or_else(|f| panic!("on-recovery-completed: {}", f.0));
        }
        let empty = self.handler.empty_state().unwrap_or_else(|f| panic!("empty-state failed: {}", f.0));
        let events = self.events.clone();
        let replayed = self.apply(empty.clone(), &events).unwrap_or_else(|e| panic!("replay failed: {e}"));
        assert!(
            replayed == self.state,
            "restart: replaying the {} events gives another state\n  after the commands: {}\n  after the replay:  {}",
            events.len(),
            String::from_utf8_lossy(&self.state),
            String::from_utf8_lossy(&replayed)
        );
        // One event per call too: recovery batches may be cut anywhere.
        let mut one_by_one = empty;
        for e in &events {
            one_by_one =
                self.apply(one_by_one, std::slice::from_ref(e)).unwrap_or_else(|e| panic!("replay failed: {e}"));
        }
        assert!(one_by_one == self.state, "restart: replaying one event at a time gives another state");
        self.stash.clear();
        self.handler.on_recovery_completed(&self.state).unwrap_or_else(|f| panic!("on-recovery-completed: {}", f.0))
    }

    /// The current state's bytes.
    pub fn state(&self) -> &[u8] {
        &self.state
    }

    /// The current state as JSON.
    pub fn state_json(&self) -> Value {
        serde_json::from_slice(&self.state).unwrap_or_else(|e| panic!("state is not JSON: {e}"))
    }

    /// Every event persisted so far (the given ones first).
    pub fn events(&self) -> &[PersistedEvent] {
        &self.events
    }

    /// The sequence number of the last event.
    pub fn seq_nr(&self) -> u64 {
        self.events.len() as u64
    }

    /// Forget everything: the empty state, no events.
    pub fn clear(&mut self) {
        self.handler = self.maker.make();
        self.state = self.handler.empty_state().unwrap_or_else(|f| panic!("empty-state failed: {}", f.0));
        self.events.clear();
        self.stash.clear();
    }
}

/// A component built by mneme's `scripts/build-components.sh`
/// (`{target}/components/{name}.wasm`), or by `scripts/build-polyglot.sh`
/// (`{target}/components-polyglot/{name}.wasm`), where `{target}` is
/// `$CARGO_TARGET_DIR` or the workspace's `target/`. Panics with the command to
/// run when it is missing.
pub fn built_component(name: &str) -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| {
        let mut dir = std::env::var_os("CARGO_MANIFEST_DIR").map(std::path::PathBuf::from).unwrap_or_default();
        while !dir.join("Cargo.lock").exists() && dir.pop() {}
        dir.join("target")
    });
    for sub in ["components", "components-polyglot"] {
        let p = target.join(sub).join(format!("{name}.wasm"));
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{name}.wasm is not in {}/components or components-polyglot: run scripts/build-components.sh (or scripts/build-polyglot.sh)",
        target.display()
    )
}
