//! Model-based property test: random sequences of commands to a few bank accounts
//! and task managers, interleaved with engine restarts and crashes, run against the
//! real engine (in process, real journal, the example components) and against a
//! plain in-memory model of the semantics. Every reply (or error kind), the stored
//! events (manifest, payload, tags, seq nrs, offsets, writer id) and every state
//! must match the model.
//!
//! * Bank accounts (`examples/bank-account`): create, deposit, withdraw (rejected
//!   when the balance is short, or when a deposit would overflow), get balance, close.
//! * Task managers (`examples/task-manager`): one task runs at a time; a command for
//!   another task is stashed until `EndTask`, whose `unstash_all` hands the stash back
//!   in arrival order. Task commands are submitted without waiting: the model says
//!   which ones complete now (their replies are awaited and checked), which stay
//!   stashed (they must have no reply yet whenever a later command of the same
//!   entity has been answered) and which are refused because the stash is full
//!   (capacity 3 here). A stashed command's reply arrives only after the `EndTask`.
//! * `Burst`: several bank commands in flight at once (group commit), awaited after.
//! * `FailWrites`: journal writes fail (a full disk) while a burst runs, as in Akka's
//!   `onPersistFailure`: each command fails with `WriteFailed`, or, if it persists
//!   nothing, gets the model's answer on the durable state; afterwards nothing is
//!   stored and every entity carries on from its durable state.
//! * Each case draws the number of shards (1 to 3) and whether idle entities are
//!   passivated every tick (idle timeout 20 ms), so batches mix entities and
//!   entities are recovered between commands.
//! * `Restart`: `Engine::shutdown`, then a new engine on the same data directory.
//!   Stashed commands are lost with the process (they must fail, never succeed, and
//!   nothing of them is stored); everything else must have been recovered.
//! * `Crash`: the abrupt variant. A burst of bank commands is submitted without
//!   waiting, then, after a random delay, the journal is cut off under the running
//!   engine: a journal write in progress completes, every later read and write fails,
//!   as when the process dies at that instant. (Dropping an `Engine` without
//!   `shutdown` does not stop its threads, which keep the journal open, so the cut
//!   is how an in-process test gets an abrupt stop; kill -9 of the real process is
//!   `tests/crash.rs`.) The old engine is then shut down and a new one started. The
//!   stored events of each account must be the model's events plus the events of a
//!   prefix of that account's burst; a command answered with its model reply must
//!   lie inside that prefix (durable before visible); a command answered
//!   `WriteFailed` must not.
//!
//! CI form: `cargo test -p mneme-tests --test model` (24 cases). Long form:
//! `PROPTEST_CASES=1000 cargo test -p mneme-tests --release --test model -- --nocapture`.
//! A failure prints the shrunk sequence of operations.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use mneme::component::{sandbox::Runtime, Registry, SandboxLimits};
use mneme::journal::{Backend, Journal, JournalError, JournalResult, Snapshot, StoredEvent, Timer, WriteBatch};
use mneme::{CommandError, Engine, EngineConfig, Outcome};
use mneme_tests::example;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};
use tokio::sync::oneshot;

const ACCOUNTS: u8 = 3;
const MANAGERS: u8 = 2;
const STASH_CAPACITY: usize = 3;
/// A reply the model expects must arrive within this (they take milliseconds;
/// a longer wait only slows down shrinking a failure).
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

type Answer = Result<Outcome, CommandError>;

/// What the runs exercised (printed at the end, so a run shows it tested something).
#[derive(Default)]
struct Stats {
    commands: AtomicU64,
    stashed: AtomicU64,
    unstashed_replies: AtomicU64,
    stash_full: AtomicU64,
    restarts: AtomicU64,
    crashes: AtomicU64,
    crash_commands: AtomicU64,
    crash_stored: AtomicU64,
    crash_answered: AtomicU64,
    crash_failed: AtomicU64,
    write_failed: AtomicU64,
}

static STATS: OnceLock<Stats> = OnceLock::new();

fn stats() -> &'static Stats {
    STATS.get_or_init(Stats::default)
}

fn count(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}
type Rx = oneshot::Receiver<Answer>;

// ---------------------------------------------------------------------------
// Operations

#[derive(Clone)]
enum BankCmd {
    Create,
    Deposit(u64),
    Withdraw(u64),
    Balance,
    Close,
}

/// Task `t{n}`; steps carry instruction `s{m}`.
#[derive(Clone)]
enum TaskCmd {
    Start(u8),
    Step(u8, u8),
    End(u8),
}

#[derive(Clone)]
enum Op {
    /// Send to account `a{n}` and wait for the reply.
    Bank(u8, BankCmd),
    /// Several bank commands in flight at once; replies awaited afterwards.
    Burst(Vec<(u8, BankCmd)>),
    /// Submit to manager `m{n}` without waiting (it may be stashed).
    Task(u8, TaskCmd),
    /// Graceful: `Engine::shutdown`, then start again.
    Restart,
    /// Abrupt: submit the burst, cut the journal off after `delay_us`, start again.
    Crash { burst: Vec<(u8, BankCmd)>, delay_us: u16 },
    /// Wait longer than the passivation tick (entities idle 20 ms are passivated
    /// when the case enables it).
    Pause,
    /// Journal writes fail (a full disk) while the burst runs, then work again.
    FailWrites(Vec<(u8, BankCmd)>),
}

#[derive(Clone)]
struct Case {
    /// Shards of the engine (1: every entity shares one shard and its write batches).
    shards: usize,
    /// Idle timeout of 20 ms instead of 120 s: entities are passivated on every tick.
    passivate: bool,
    ops: Vec<Op>,
}

// Compact output, so a shrunk failing sequence reads as a script.

impl std::fmt::Debug for BankCmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BankCmd::Create => write!(f, "CreateAccount"),
            BankCmd::Deposit(a) => write!(f, "Deposit {a}"),
            BankCmd::Withdraw(a) => write!(f, "Withdraw {a}"),
            BankCmd::Balance => write!(f, "GetBalance"),
            BankCmd::Close => write!(f, "CloseAccount"),
        }
    }
}

impl std::fmt::Debug for TaskCmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskCmd::Start(t) => write!(f, "StartTask t{t}"),
            TaskCmd::Step(t, s) => write!(f, "NextStep t{t} s{s}"),
            TaskCmd::End(t) => write!(f, "EndTask t{t}"),
        }
    }
}

fn fmt_burst(burst: &[(u8, BankCmd)]) -> String {
    burst.iter().map(|(a, c)| format!("a{a} <- {c:?}")).collect::<Vec<_>>().join(", ")
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Bank(a, c) => write!(f, "a{a} <- {c:?}"),
            Op::Burst(b) => write!(f, "burst [{}]", fmt_burst(b)),
            Op::Task(m, c) => write!(f, "m{m} <- {c:?} (no wait)"),
            Op::Restart => write!(f, "restart (shutdown, start)"),
            Op::Crash { burst, delay_us } => {
                write!(f, "crash: submit [{}], cut the journal after {delay_us} us, start", fmt_burst(burst))
            }
            Op::Pause => write!(f, "pause 600 ms"),
            Op::FailWrites(b) => write!(f, "journal writes fail during burst [{}]", fmt_burst(b)),
        }
    }
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "shards: {}, idle passivation: {}", self.shards, if self.passivate { "20 ms" } else { "off" })?;
        for (i, op) in self.ops.iter().enumerate() {
            writeln!(f, "  #{i} {op:?}")?;
        }
        Ok(())
    }
}

fn amount() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0..300u64, 1 => Just(u64::MAX), 1 => (u64::MAX - 300)..=u64::MAX]
}

fn bank_cmd() -> impl Strategy<Value = BankCmd> {
    prop_oneof![
        3 => Just(BankCmd::Create),
        5 => amount().prop_map(BankCmd::Deposit),
        4 => amount().prop_map(BankCmd::Withdraw),
        2 => Just(BankCmd::Balance),
        1 => Just(BankCmd::Close),
    ]
}

fn task_cmd() -> impl Strategy<Value = TaskCmd> {
    prop_oneof![
        4 => (0..2u8).prop_map(TaskCmd::Start),
        2 => (0..2u8, 0..3u8).prop_map(|(t, s)| TaskCmd::Step(t, s)),
        4 => (0..2u8).prop_map(TaskCmd::End),
    ]
}

fn burst() -> impl Strategy<Value = Vec<(u8, BankCmd)>> {
    prop::collection::vec((0..ACCOUNTS, bank_cmd()), 1..8)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..ACCOUNTS, bank_cmd()).prop_map(|(a, c)| Op::Bank(a, c)),
        2 => burst().prop_map(Op::Burst),
        10 => (prop_oneof![3 => Just(0u8), 1 => Just(1u8)], task_cmd()).prop_map(|(m, c)| Op::Task(m, c)),
        1 => Just(Op::Restart),
        1 => (burst(), prop_oneof![Just(0u16), 0..300u16, 0..2000u16]).prop_map(|(burst, delay_us)| Op::Crash { burst, delay_us }),
        1 => Just(Op::Pause),
        1 => burst().prop_map(Op::FailWrites),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (1..=3usize, any::<bool>(), prop::collection::vec(op(), 1..40)).prop_map(|(shards, passivate, ops)| Case {
        shards,
        passivate,
        ops,
    })
}

// ---------------------------------------------------------------------------
// The model

#[derive(Clone, Debug, PartialEq)]
enum Account {
    Empty,
    Open(u64),
    Closed,
}

#[derive(Clone, Debug, PartialEq)]
enum Expect {
    Reply(Value),
    ReplyError(String),
    Unhandled,
    StashFull,
}

#[derive(Clone, Debug)]
struct ModelEvent {
    manifest: &'static str,
    payload: Value,
    tags: Vec<&'static str>,
    /// Index of the engine run that wrote it (its writer id).
    run: usize,
}

struct BankModel {
    id: String,
    state: Account,
    events: Vec<ModelEvent>,
}

struct Pending {
    cmd: TaskCmd,
    rx: Rx,
    /// The operation that submitted it (for messages).
    op: usize,
}

struct TaskModel {
    id: String,
    running: Option<String>,
    events: Vec<ModelEvent>,
    stash: VecDeque<Pending>,
}

fn balance(b: u64) -> Value {
    json!({ "balance": b })
}

/// The bank account's command handler and event handler, as a plain function:
/// the reply, the event it persists (if any) and the state after.
fn bank_decide(state: &Account, id: &str, cmd: &BankCmd) -> (Expect, Option<(&'static str, Value)>, Account) {
    use BankCmd::*;
    match (state, cmd) {
        (Account::Empty, Create) => {
            (Expect::Reply(balance(0)), Some(("AccountCreated", json!({"type":"AccountCreated"}))), Account::Open(0))
        }
        (Account::Empty, _) => (Expect::Unhandled, None, Account::Empty),
        (Account::Open(b), Deposit(a)) => match b.checked_add(*a) {
            Some(n) => (
                Expect::Reply(balance(n)),
                Some(("Deposited", json!({"type":"Deposited","amount":a}))),
                Account::Open(n),
            ),
            None => (Expect::ReplyError(format!("Deposit of {a} would overflow the balance {b}")), None, state.clone()),
        },
        (Account::Open(b), Withdraw(a)) if a <= b => (
            Expect::Reply(balance(b - a)),
            Some(("Withdrawn", json!({"type":"Withdrawn","amount":a}))),
            Account::Open(b - a),
        ),
        (Account::Open(b), Withdraw(a)) => {
            (Expect::ReplyError(format!("Insufficient balance {b} to be able to withdraw {a}")), None, state.clone())
        }
        (Account::Open(b), Balance) => (Expect::Reply(balance(*b)), None, state.clone()),
        (Account::Open(0), Close) => {
            (Expect::Reply(balance(0)), Some(("AccountClosed", json!({"type":"AccountClosed"}))), Account::Closed)
        }
        (Account::Open(_), Close) => {
            (Expect::ReplyError("Can't close account with non-zero balance".into()), None, state.clone())
        }
        (Account::Open(_), Create) => {
            (Expect::ReplyError(format!("Account {id} is already created")), None, state.clone())
        }
        (Account::Closed, Balance) => (Expect::Reply(balance(0)), None, Account::Closed),
        (Account::Closed, _) => (Expect::ReplyError(format!("Account {id} is closed")), None, Account::Closed),
    }
}

fn bank_state_json(a: &Account) -> Value {
    match a {
        Account::Empty => json!({"status":"empty"}),
        Account::Open(b) => json!({"status":"open","balance":b}),
        Account::Closed => json!({"status":"closed"}),
    }
}

fn task(t: u8) -> String {
    format!("t{t}")
}

enum TaskDecision {
    Persist { manifest: &'static str, event: Value, reply: Value, running: Option<String>, unstash: bool },
    Reply(Value),
    Unhandled,
    Stash,
}

/// The task manager's command handler.
fn task_decide(running: &Option<String>, cmd: &TaskCmd) -> TaskDecision {
    match (running, cmd) {
        (None, TaskCmd::Start(t)) => TaskDecision::Persist {
            manifest: "TaskStarted",
            event: json!({"type":"TaskStarted","taskId":task(*t)}),
            reply: json!({"started":task(*t)}),
            running: Some(task(*t)),
            unstash: false,
        },
        (None, _) => TaskDecision::Unhandled,
        (Some(r), TaskCmd::Start(t)) if *r == task(*t) => {
            TaskDecision::Reply(json!({"started":task(*t),"duplicate":true}))
        }
        (Some(r), TaskCmd::Step(t, s)) if *r == task(*t) => TaskDecision::Persist {
            manifest: "TaskStep",
            event: json!({"type":"TaskStep","taskId":task(*t),"instruction":format!("s{s}")}),
            reply: json!({"taskId":task(*t),"step":format!("s{s}")}),
            running: running.clone(),
            unstash: false,
        },
        (Some(r), TaskCmd::End(t)) if *r == task(*t) => TaskDecision::Persist {
            manifest: "TaskCompleted",
            event: json!({"type":"TaskCompleted","taskId":task(*t)}),
            reply: json!({"ended":task(*t)}),
            running: None,
            unstash: true,
        },
        (Some(_), _) => TaskDecision::Stash,
    }
}

/// Deliver a command to the model task manager: returns the commands handled now
/// (this one and any it unstashed, in order) with their expected replies. Stashing
/// and `unstash_all` follow Akka: the stash is handed back in arrival order, ahead
/// of anything else, and a command stashed again goes to the back of the stash.
fn task_deliver(m: &mut TaskModel, new: Pending, run: usize) -> Vec<(Pending, Expect)> {
    let mut queue = VecDeque::from([new]);
    let mut done = Vec::new();
    while let Some(p) = queue.pop_front() {
        match task_decide(&m.running, &p.cmd) {
            TaskDecision::Persist { manifest, event, reply, running, unstash } => {
                m.events.push(ModelEvent { manifest, payload: event, tags: vec![], run });
                m.running = running;
                done.push((p, Expect::Reply(reply)));
                if unstash {
                    for s in m.stash.drain(..).rev() {
                        queue.push_front(s);
                    }
                }
            }
            TaskDecision::Reply(v) => done.push((p, Expect::Reply(v))),
            TaskDecision::Unhandled => done.push((p, Expect::Unhandled)),
            TaskDecision::Stash if m.stash.len() >= STASH_CAPACITY => done.push((p, Expect::StashFull)),
            TaskDecision::Stash => m.stash.push_back(p),
        }
    }
    done
}

fn task_cmd_json(c: &TaskCmd) -> String {
    match c {
        TaskCmd::Start(t) => json!({"type":"StartTask","taskId":task(*t)}),
        TaskCmd::Step(t, s) => json!({"type":"NextStep","taskId":task(*t),"instruction":format!("s{s}")}),
        TaskCmd::End(t) => json!({"type":"EndTask","taskId":task(*t)}),
    }
    .to_string()
}

fn bank_cmd_json(c: &BankCmd) -> String {
    match c {
        BankCmd::Create => json!({"type":"CreateAccount"}),
        BankCmd::Deposit(a) => json!({"type":"Deposit","amount":a}),
        BankCmd::Withdraw(a) => json!({"type":"Withdraw","amount":a}),
        BankCmd::Balance => json!({"type":"GetBalance"}),
        BankCmd::Close => json!({"type":"CloseAccount"}),
    }
    .to_string()
}

fn matches(expect: &Expect, got: &Answer) -> bool {
    match (expect, got) {
        (Expect::Reply(v), Ok(Outcome::Reply(bytes))) => {
            serde_json::from_slice::<Value>(bytes).ok().as_ref() == Some(v)
        }
        (Expect::ReplyError(m), Ok(Outcome::ReplyError(g))) => m == g,
        (Expect::Unhandled, Err(CommandError::Unhandled { reason: None, .. })) => true,
        (Expect::StashFull, Err(CommandError::StashFull(_, cap))) => *cap == STASH_CAPACITY,
        _ => false,
    }
}

/// An error a command may get when the process dies under it.
fn crash_error(e: &CommandError) -> bool {
    matches!(
        e,
        CommandError::WriteFailed(_)
            | CommandError::RecoveryFailed { .. }
            | CommandError::Dropped(_)
            | CommandError::ShuttingDown
            | CommandError::JournalUnavailable(_)
    )
}

// ---------------------------------------------------------------------------
// The system under test

/// The real journal, which the test can cut off (a write in progress completes,
/// every later call fails, as if the process had died at that instant) or make
/// refuse writes for a while (as a full disk does: the write fails, nothing is stored).
struct CutJournal {
    inner: RwLock<Option<Arc<dyn Journal>>>,
    failing: std::sync::atomic::AtomicBool,
}

impl CutJournal {
    fn with<T>(&self, f: impl FnOnce(&dyn Journal) -> JournalResult<T>) -> JournalResult<T> {
        match &*self.inner.read().unwrap() {
            Some(j) => f(&**j),
            None => Err(JournalError::Storage("the process is gone (journal cut off by the test)".into())),
        }
    }
    fn cut(&self) {
        let inner = self.inner.write().unwrap().take();
        drop(inner);
    }
}

impl Journal for CutJournal {
    fn write(&self, batch: &WriteBatch) -> JournalResult<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(JournalError::Storage("No space left on device (os error 28)".into()));
        }
        self.with(|j| j.write(batch))
    }
    fn highest_seq_nr(&self, pid: &str) -> JournalResult<u64> {
        self.with(|j| j.highest_seq_nr(pid))
    }
    fn events(&self, pid: &str, from: u64, limit: usize) -> JournalResult<Vec<StoredEvent>> {
        self.with(|j| j.events(pid, from, limit))
    }
    fn events_by_tag(&self, tag: &str, from: u64, limit: usize) -> JournalResult<Vec<StoredEvent>> {
        self.with(|j| j.events_by_tag(tag, from, limit))
    }
    fn load_snapshot(&self, pid: &str) -> JournalResult<Option<Snapshot>> {
        self.with(|j| j.load_snapshot(pid))
    }
    fn put_timer(&self, timer: &Timer) -> JournalResult<()> {
        self.with(|j| j.put_timer(timer))
    }
    fn remove_timer(&self, id: u64) -> JournalResult<()> {
        self.with(|j| j.remove_timer(id))
    }
    fn timers(&self) -> JournalResult<Vec<Timer>> {
        self.with(|j| j.timers())
    }
    fn next_timer_id(&self) -> JournalResult<u64> {
        self.with(|j| j.next_timer_id())
    }
    fn head(&self) -> u64 {
        self.with(|j| Ok(j.head())).unwrap_or(0)
    }
    fn events_from(&self, from: u64, limit: usize) -> JournalResult<Vec<StoredEvent>> {
        self.with(|j| j.events_from(from, limit))
    }
    fn outbox_pending(&self) -> JournalResult<Vec<mneme::journal::OutboxEntry>> {
        self.with(|j| j.outbox_pending())
    }
    fn is_applied(&self, pid: &str, key: &str) -> JournalResult<bool> {
        self.with(|j| j.is_applied(pid, key))
    }
    fn topic_messages(
        &self,
        topic: &str,
        from: u64,
        limit: usize,
    ) -> JournalResult<Vec<mneme::journal::StoredTopicMessage>> {
        self.with(|j| j.topic_messages(topic, from, limit))
    }
    fn topic_head(&self, topic: &str) -> JournalResult<u64> {
        self.with(|j| j.topic_head(topic))
    }
}

fn open_journal(dir: &Path) -> Arc<dyn Journal> {
    // The previous engine's journal is closed when its last reference goes; allow
    // a moment for a lock held until then.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match mneme::journal::open(dir, Backend::default()) {
            Ok(j) => return j,
            Err(e)
                if Instant::now() < deadline
                    && (e.to_string().contains("lock") || e.to_string().contains("in use")) =>
            {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("opening the journal: {e}"),
        }
    }
}

struct Node {
    engine: Engine,
    journal: Arc<CutJournal>,
}

struct Harness {
    dir: PathBuf,
    config: EngineConfig,
    node: Option<Node>,
    /// Writer id of each engine run, in order.
    writer_ids: Vec<String>,
}

impl Harness {
    fn start(&mut self) {
        let journal =
            Arc::new(CutJournal { inner: RwLock::new(Some(open_journal(&self.dir))), failing: Default::default() });
        let registry = Arc::new(Registry::open(Runtime::new(SandboxLimits::default()).unwrap(), &self.dir).unwrap());
        for (name, wasm) in components() {
            registry.deploy(name, wasm).unwrap();
        }
        let engine = Engine::start(self.config.clone(), journal.clone(), registry);
        self.writer_ids.push(engine.writer_id().to_string());
        self.node = Some(Node { engine, journal });
    }

    fn engine(&self) -> &Engine {
        &self.node.as_ref().unwrap().engine
    }

    /// Index of the current run.
    fn run(&self) -> usize {
        self.writer_ids.len() - 1
    }

    fn shutdown(&mut self) {
        let node = self.node.take().unwrap();
        node.engine.shutdown();
    }

    fn crash(&mut self) {
        let node = self.node.take().unwrap();
        node.journal.cut();
        node.engine.shutdown();
    }

    fn submit(&self, entity_type: &str, id: &str, command: String) -> Rx {
        self.engine().submit(entity_type, id, String::new(), command.into_bytes()).unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if self.node.is_some() {
            self.crash();
        }
    }
}

fn components() -> &'static [(&'static str, Vec<u8>)] {
    static C: OnceLock<Vec<(&'static str, Vec<u8>)>> = OnceLock::new();
    C.get_or_init(|| {
        vec![
            ("bank-account", std::fs::read(example("bank-account")).unwrap()),
            ("task-manager", std::fs::read(example("task-manager")).unwrap()),
        ]
    })
}

enum Got {
    Answer(Answer),
    /// The reply channel was dropped without an answer.
    Closed,
    /// Nothing yet.
    Pending,
}

fn wait(rx: &mut Rx, timeout: Duration) -> Got {
    let deadline = Instant::now() + timeout;
    loop {
        match rx.try_recv() {
            Ok(a) => return Got::Answer(a),
            Err(oneshot::error::TryRecvError::Closed) => return Got::Closed,
            Err(oneshot::error::TryRecvError::Empty) if Instant::now() >= deadline => return Got::Pending,
            Err(oneshot::error::TryRecvError::Empty) => std::thread::sleep(Duration::from_micros(200)),
        }
    }
}

/// An answer with its reply bytes shown as text.
fn show(a: &Answer) -> String {
    match a {
        Ok(Outcome::Reply(b)) => format!("reply {}", String::from_utf8_lossy(b)),
        Ok(Outcome::ReplyError(m)) => format!("error reply {m:?}"),
        Ok(Outcome::NoReply) => "no reply".into(),
        Err(e) => format!("{e:?}"),
    }
}

fn expect_reply(rx: &mut Rx, expect: &Expect, what: &str) -> Result<(), String> {
    match wait(rx, REPLY_TIMEOUT) {
        Got::Answer(a) if matches(expect, &a) => Ok(()),
        Got::Answer(a) => Err(format!("{what}: expected {expect:?}, got {}", show(&a))),
        Got::Closed => Err(format!("{what}: expected {expect:?}, the reply channel was dropped")),
        Got::Pending => Err(format!("{what}: expected {expect:?}, no reply within {REPLY_TIMEOUT:?}")),
    }
}

// ---------------------------------------------------------------------------
// Running a case

struct Model {
    accounts: Vec<BankModel>,
    managers: Vec<TaskModel>,
}

impl Model {
    fn new(case_no: u64) -> Model {
        Model {
            accounts: (0..ACCOUNTS)
                .map(|i| BankModel { id: format!("c{case_no}-a{i}"), state: Account::Empty, events: vec![] })
                .collect(),
            managers: (0..MANAGERS)
                .map(|i| TaskModel {
                    id: format!("c{case_no}-m{i}"),
                    running: None,
                    events: vec![],
                    stash: VecDeque::new(),
                })
                .collect(),
        }
    }
}

fn compare_events(h: &Harness, pid: &str, expected: &[ModelEvent]) -> Result<(), String> {
    let stored = h.engine().journal().events(pid, 1, usize::MAX).map_err(|e| format!("{pid}: reading events: {e}"))?;
    let mut last_offset = 0;
    for (i, e) in stored.iter().enumerate() {
        let payload: Value =
            serde_json::from_slice(&e.payload).map_err(|err| format!("{pid}: event {} payload: {err}", e.seq_nr))?;
        let Some(m) = expected.get(i) else {
            return Err(format!(
                "{pid}: {} events stored, the model has {}; extra: {} {payload}",
                stored.len(),
                expected.len(),
                e.manifest
            ));
        };
        if e.seq_nr != i as u64 + 1 {
            return Err(format!("{pid}: event #{i} has seq_nr {}", e.seq_nr));
        }
        if e.persistence_id != pid {
            return Err(format!("{pid}: event {} has persistence id {}", e.seq_nr, e.persistence_id));
        }
        if e.manifest != m.manifest || payload != m.payload || e.tags != m.tags {
            return Err(format!(
                "{pid}: event {} is {} {payload} tags {:?}, the model has {} {} tags {:?}",
                e.seq_nr, e.manifest, e.tags, m.manifest, m.payload, m.tags
            ));
        }
        if e.writer_id != h.writer_ids[m.run] {
            return Err(format!(
                "{pid}: event {} has writer id {}, written by run {} ({})",
                e.seq_nr, e.writer_id, m.run, h.writer_ids[m.run]
            ));
        }
        if i > 0 && e.offset <= last_offset {
            return Err(format!("{pid}: offset {} of event {} is not above {last_offset}", e.offset, e.seq_nr));
        }
        last_offset = e.offset;
    }
    if stored.len() != expected.len() {
        let missing: Vec<String> =
            expected[stored.len()..].iter().map(|m| format!("{} {}", m.manifest, m.payload)).collect();
        return Err(format!(
            "{pid}: {} events stored, the model has {}; missing: {missing:?}",
            stored.len(),
            expected.len()
        ));
    }
    Ok(())
}

fn compare_state(h: &Harness, entity_type: &str, id: &str, seq: usize, expected: Value) -> Result<(), String> {
    let s = h.engine().state_blocking(entity_type, id).map_err(|e| format!("{entity_type}|{id}: state: {e}"))?;
    let state: Value =
        serde_json::from_slice(&s.state).map_err(|e| format!("{entity_type}|{id}: state is not JSON: {e}"))?;
    if s.seq_nr != seq as u64 || state != expected {
        return Err(format!(
            "{entity_type}|{id}: state {state} at seq_nr {}, the model has {expected} at {seq}",
            s.seq_nr
        ));
    }
    Ok(())
}

fn check_all(h: &Harness, m: &Model) -> Result<(), String> {
    for a in &m.accounts {
        compare_events(h, &format!("bank-account|{}", a.id), &a.events)?;
        compare_state(h, "bank-account", &a.id, a.events.len(), bank_state_json(&a.state))?;
    }
    for t in &m.managers {
        compare_events(h, &format!("task-manager|{}", t.id), &t.events)?;
        compare_state(h, "task-manager", &t.id, t.events.len(), json!({ "taskIdInProgress": t.running }))?;
    }
    Ok(())
}

/// Stashed commands have no reply yet.
fn check_still_stashed(t: &mut TaskModel) -> Result<(), String> {
    for p in t.stash.iter_mut() {
        match p.rx.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => {}
            Ok(a) => {
                return Err(format!("{}: {:?} (op #{}) should still be stashed, got {}", t.id, p.cmd, p.op, show(&a)))
            }
            Err(oneshot::error::TryRecvError::Closed) => {
                return Err(format!(
                    "{}: {:?} (op #{}) should still be stashed, its reply channel was dropped",
                    t.id, p.cmd, p.op
                ))
            }
        }
    }
    Ok(())
}

/// After the engine stopped: every stashed command failed (or its channel was
/// dropped) and none succeeded.
fn stash_lost(m: &mut Model) -> Result<(), String> {
    for t in &mut m.managers {
        for mut p in t.stash.drain(..) {
            match wait(&mut p.rx, Duration::from_secs(5)) {
                Got::Closed | Got::Answer(Err(_)) => {}
                Got::Answer(ok) => {
                    return Err(format!(
                        "{}: stashed {:?} (op #{}) succeeded while the engine stopped: {}",
                        t.id,
                        p.cmd,
                        p.op,
                        show(&ok)
                    ))
                }
                Got::Pending => {
                    return Err(format!(
                        "{}: stashed {:?} (op #{}) has no outcome after the engine stopped",
                        t.id, p.cmd, p.op
                    ))
                }
            }
        }
    }
    Ok(())
}

fn task_op(h: &mut Harness, m: &mut Model, i: usize, mgr: u8, cmd: &TaskCmd) -> Result<(), String> {
    let run = h.run();
    let t = &mut m.managers[mgr as usize];
    let rx = h.submit("task-manager", &t.id, task_cmd_json(cmd));
    let stashed_before = t.stash.len();
    let done = task_deliver(t, Pending { cmd: cmd.clone(), rx, op: i }, run);
    let waited = !done.is_empty();
    count(&stats().commands, 1);
    if t.stash.len() > stashed_before {
        count(&stats().stashed, 1);
    }
    for (mut p, expect) in done {
        if p.op != i {
            count(&stats().unstashed_replies, 1);
        }
        if expect == Expect::StashFull {
            count(&stats().stash_full, 1);
        }
        expect_reply(&mut p.rx, &expect, &format!("{}: {:?} (op #{})", t.id, p.cmd, p.op))?;
    }
    // Everything submitted before the command just answered has been handled.
    if waited {
        check_still_stashed(t)?;
    }
    Ok(())
}

fn bank_burst(h: &mut Harness, m: &mut Model, burst: &[(u8, BankCmd)]) -> Result<(), String> {
    let run = h.run();
    count(&stats().commands, burst.len() as u64);
    let mut rxs: Vec<Rx> =
        burst.iter().map(|(a, c)| h.submit("bank-account", &m.accounts[*a as usize].id, bank_cmd_json(c))).collect();
    for ((a, cmd), rx) in burst.iter().zip(rxs.iter_mut()) {
        let acct = &mut m.accounts[*a as usize];
        let (expect, event, next) = bank_decide(&acct.state, &acct.id, cmd);
        expect_reply(rx, &expect, &format!("{}: {cmd:?}", acct.id))?;
        if let Some((manifest, payload)) = event {
            acct.events.push(ModelEvent { manifest, payload, tags: vec!["account"], run });
        }
        acct.state = next;
    }
    Ok(())
}

fn crash(h: &mut Harness, m: &mut Model, burst: &[(u8, BankCmd)], delay_us: u16) -> Result<(), String> {
    let run = h.run();
    count(&stats().crashes, 1);
    count(&stats().commands, burst.len() as u64);
    count(&stats().crash_commands, burst.len() as u64);
    let rxs: Vec<Rx> =
        burst.iter().map(|(a, c)| h.submit("bank-account", &m.accounts[*a as usize].id, bank_cmd_json(c))).collect();
    std::thread::sleep(Duration::from_micros(delay_us as u64));
    h.crash();
    let mut answers: Vec<Option<Answer>> = Vec::new();
    for mut rx in rxs {
        answers.push(match wait(&mut rx, Duration::from_secs(5)) {
            Got::Answer(a) => Some(a),
            Got::Closed | Got::Pending => None,
        });
    }
    stash_lost(m)?;
    h.start();
    for a in 0..ACCOUNTS {
        let acct = &mut m.accounts[a as usize];
        // This account's commands, in submission order, through the model.
        let mut state = acct.state.clone();
        let mut steps = Vec::new(); // (position in burst, expect, event, state after, persisting commands up to here)
        let mut persisting = 0;
        for (pos, (_, cmd)) in burst.iter().enumerate().filter(|(_, (x, _))| *x == a) {
            let (expect, event, next) = bank_decide(&state, &acct.id, cmd);
            if event.is_some() {
                persisting += 1;
            }
            state = next.clone();
            steps.push((pos, cmd.clone(), expect, event, next, persisting));
        }
        let pid = format!("bank-account|{}", acct.id);
        let stored = h.engine().journal().events(&pid, 1, usize::MAX).map_err(|e| format!("{pid}: {e}"))?;
        let base = acct.events.len();
        if stored.len() < base || stored.len() - base > persisting {
            return Err(format!(
                "{pid}: {} events after the crash; before it {base}, and the burst could add at most {persisting}",
                stored.len()
            ));
        }
        let k = stored.len() - base;
        count(&stats().crash_stored, k as u64);
        for (pos, cmd, expect, event, _, need) in &steps {
            let persists = event.is_some();
            match &answers[*pos] {
                Some(got) if matches(expect, got) => {
                    count(&stats().crash_answered, 1);
                    if *need > k {
                        return Err(format!(
                            "{pid}: {cmd:?} was answered {} but only {k} of the burst's events were stored (it needs {need}): visible before durable",
                            show(got)
                        ));
                    }
                }
                Some(Err(CommandError::WriteFailed(msg))) if persists && *need <= k => {
                    return Err(format!("{pid}: {cmd:?} failed ({msg}) but its event is stored"));
                }
                Some(Err(e)) if crash_error(e) => count(&stats().crash_failed, 1),
                Some(other) => {
                    return Err(format!("{pid}: {cmd:?} expected {expect:?} (or a crash error), got {}", show(other)))
                }
                None => {}
            }
        }
        // The first k persisting commands took effect.
        let mut taken = 0;
        for (_, _, _, event, next, _) in steps {
            if taken == k {
                break;
            }
            if let Some((manifest, payload)) = event {
                acct.events.push(ModelEvent { manifest, payload, tags: vec!["account"], run });
                acct.state = next;
                taken += 1;
            }
        }
    }
    Ok(())
}

/// onPersistFailure: while writes fail, a command fails with `WriteFailed`, or
/// (when it persists nothing) gets the answer the model gives on the durable
/// state; afterwards nothing has changed.
fn fail_writes(h: &mut Harness, m: &mut Model, burst: &[(u8, BankCmd)]) -> Result<(), String> {
    count(&stats().commands, burst.len() as u64);
    let journal = h.node.as_ref().unwrap().journal.clone();
    journal.failing.store(true, Ordering::SeqCst);
    let mut rxs: Vec<Rx> =
        burst.iter().map(|(a, c)| h.submit("bank-account", &m.accounts[*a as usize].id, bank_cmd_json(c))).collect();
    let answers: Vec<Got> = rxs.iter_mut().map(|rx| wait(rx, REPLY_TIMEOUT)).collect();
    journal.failing.store(false, Ordering::SeqCst);
    for ((a, cmd), got) in burst.iter().zip(answers) {
        let acct = &m.accounts[*a as usize];
        let (expect, event, _) = bank_decide(&acct.state, &acct.id, cmd);
        match got {
            Got::Answer(Err(CommandError::WriteFailed(_))) => count(&stats().write_failed, 1),
            Got::Answer(a) if event.is_none() && matches(&expect, &a) => {}
            Got::Answer(a) => {
                return Err(format!(
                    "{}: {cmd:?} while writes fail: expected WriteFailed{}, got {}",
                    acct.id,
                    if event.is_none() { format!(" or {expect:?}") } else { String::new() },
                    show(&a)
                ))
            }
            Got::Closed => return Err(format!("{}: {cmd:?} while writes fail: reply channel dropped", acct.id)),
            Got::Pending => {
                return Err(format!("{}: {cmd:?} while writes fail: no answer within {REPLY_TIMEOUT:?}", acct.id))
            }
        }
    }
    Ok(())
}

fn exec(h: &mut Harness, m: &mut Model, i: usize, op: &Op) -> Result<(), String> {
    match op {
        Op::Bank(a, cmd) => bank_burst(h, m, &[(*a, cmd.clone())]),
        Op::Burst(burst) => bank_burst(h, m, burst),
        Op::Task(mgr, cmd) => task_op(h, m, i, *mgr, cmd),
        Op::Restart => {
            count(&stats().restarts, 1);
            h.shutdown();
            stash_lost(m)?;
            h.start();
            Ok(())
        }
        Op::Crash { burst, delay_us } => crash(h, m, burst, *delay_us),
        Op::Pause => {
            std::thread::sleep(Duration::from_millis(600));
            Ok(())
        }
        Op::FailWrites(burst) => fail_writes(h, m, burst),
    }
}

fn run_case(dir: &Path, case_no: u64, case: &Case) -> Result<(), String> {
    let config = EngineConfig {
        shards: case.shards,
        stash_capacity: STASH_CAPACITY,
        snapshot_every: 4,
        idle_timeout: if case.passivate { Duration::from_millis(20) } else { Duration::from_secs(120) },
        ..EngineConfig::default()
    };
    let mut h = Harness { dir: dir.to_path_buf(), config, node: None, writer_ids: vec![] };
    h.start();
    let mut m = Model::new(case_no);
    for (i, op) in case.ops.iter().enumerate() {
        exec(&mut h, &mut m, i, op).map_err(|e| format!("op #{i} {op:?}: {e}"))?;
        check_all(&h, &m).map_err(|e| format!("after op #{i} {op:?}: {e}"))?;
    }
    // Commands still stashed have no reply: make sure each manager has handled
    // everything sent to it, with a command that changes nothing.
    for mgr in 0..MANAGERS {
        let t = &m.managers[mgr as usize];
        if t.stash.is_empty() {
            continue;
        }
        let probe = match &t.running {
            Some(r) => TaskCmd::Start(r[1..].parse().unwrap()),
            None => TaskCmd::End(0),
        };
        task_op(&mut h, &mut m, case.ops.len(), mgr, &probe).map_err(|e| format!("at the end: {e}"))?;
    }
    // Everything is recovered from the journal by a fresh engine.
    h.shutdown();
    stash_lost(&mut m).map_err(|e| format!("final restart: {e}"))?;
    h.start();
    check_all(&h, &m).map_err(|e| format!("after the final restart: {e}"))?;
    h.shutdown();
    Ok(())
}

#[test]
fn engine_matches_the_model_across_restarts_and_crashes() {
    // Shrinking re-runs sequences, some of which wait out REPLY_TIMEOUT: bound it.
    let mut config =
        Config { failure_persistence: None, max_shrink_iters: 2000, max_shrink_time: 240_000, ..Config::default() };
    if std::env::var("PROPTEST_CASES").is_err() {
        config.cases = 24;
    }
    let cases = config.cases;
    // One data directory for all cases (each case uses its own entity ids), so the
    // components are compiled once and the journal also holds other entities' events.
    let dir = tempfile::tempdir().unwrap();
    let counter = AtomicU64::new(0);
    let ops = AtomicU64::new(0);
    let started = Instant::now();
    let mut runner = TestRunner::new(config);
    let result = runner.run(&case(), |c| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        ops.fetch_add(c.ops.len() as u64, Ordering::SeqCst);
        run_case(dir.path(), n, &c).map_err(TestCaseError::fail)
    });
    let st = stats();
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "model tally: {cases} cases, {} sequences run (with any shrinking), {} operations, {} commands; \
         stashed {}, replies after unstash {}, stash full {}; restarts {}; crashes {} with {} commands in flight: \
         {} answered as the model says, {} failed with a crash error, {} events stored; \
         {} commands failed by a failing disk; {:.1}s",
        counter.load(Ordering::SeqCst),
        ops.load(Ordering::SeqCst),
        n(&st.commands),
        n(&st.stashed),
        n(&st.unstashed_replies),
        n(&st.stash_full),
        n(&st.restarts),
        n(&st.crashes),
        n(&st.crash_commands),
        n(&st.crash_answered),
        n(&st.crash_failed),
        n(&st.crash_stored),
        n(&st.write_failed),
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
