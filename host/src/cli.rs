//! The `mneme` command line: `serve`, and client subcommands that call a running
//! server's HTTP API.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::api::ApiConfig;
use crate::component::{limits, SandboxLimits};
use crate::config::EngineConfig;
use crate::server::ServeConfig;

#[derive(Parser)]
#[command(name = "mneme", version, about = "Event-sourced entities as WebAssembly components")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Send a command (JSON) to an entity and print the reply.
    Send {
        entity_type: String,
        entity_id: String,
        /// The command as JSON; `-` or absent reads standard input.
        command: Option<String>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Print an entity's events, or with --tag, the events carrying a tag.
    Events {
        entity_type: Option<String>,
        entity_id: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        /// First sequence number (entity) or offset (tag).
        #[arg(long)]
        from: Option<u64>,
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Print an entity's current state.
    State {
        entity_type: String,
        entity_id: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Deploy (hot-load) a component as a new version of an entity type.
    Deploy {
        entity_type: String,
        file: PathBuf,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Make an earlier version of an entity type active again.
    Rollback {
        entity_type: String,
        version: u64,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List deployed components.
    Components {
        #[command(flatten)]
        server: ServerArg,
    },
    /// Check or rebuild a data directory's journal (not while a server uses it).
    Journal {
        #[command(subcommand)]
        action: JournalAction,
    },
}

#[derive(Subcommand)]
pub enum JournalAction {
    /// Read every frame and record of the commit log and every index entry; report
    /// what is wrong. Exit status 1 if anything is damaged.
    Verify { data: PathBuf },
    /// Rebuild the index from the commit log (the log is the source of truth).
    Reindex { data: PathBuf },
}

#[derive(Args)]
pub struct ServerArg {
    /// Address of the mneme server.
    #[arg(long, env = "MNEME_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Data directory (journal, deployed components, compiled-code cache).
    #[arg(long, default_value = "mneme-data")]
    pub data: PathBuf,
    /// Directory of `*.wasm` components to deploy at start and watch for changes.
    #[arg(long)]
    pub components: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Journal backend: `log` (mneme's commit log with a fjall index) or `sled`. A
    /// data directory keeps the one it was created with.
    #[arg(long, default_value = "log", value_parser = crate::journal::Backend::parse)]
    pub journal: crate::journal::Backend,
    /// Size of a new commit-log segment, in MiB (preallocated; a full disk shows
    /// when a segment is created).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub log_segment_mb: u64,
    /// Shards (threads running entities); default: number of cores.
    #[arg(long)]
    pub shards: Option<usize>,
    /// Snapshot every N events when a component leaves it to the host (0 = never).
    #[arg(long, default_value_t = 1000)]
    pub snapshot_every: u64,
    /// Capacity of each entity's stash.
    #[arg(long, default_value_t = 1000)]
    pub stash_capacity: usize,
    /// Passivate entities idle for this many seconds.
    #[arg(long, default_value_t = 120)]
    pub idle_timeout_secs: u64,
    #[arg(long, default_value_t = 64)]
    pub max_concurrent_recoveries: usize,
    /// Deadline of one call into a component, in milliseconds.
    #[arg(long, default_value_t = limits::DEFAULT_CALL_TIMEOUT.as_millis() as u64)]
    pub call_timeout_ms: u64,
    /// Memory cap of one component instance, in MiB.
    #[arg(long, default_value_t = limits::DEFAULT_MEMORY_BYTES >> 20)]
    pub memory_limit_mb: usize,
    /// Wasm stack of one call into a component, in KiB (bounds recursion depth; at most 1024).
    #[arg(long, default_value_t = (limits::DEFAULT_WASM_STACK_BYTES >> 10) as u64,
          value_parser = clap::value_parser!(u64).range(1..=(limits::MAX_WASM_STACK_BYTES >> 10) as u64))]
    pub wasm_stack_kb: u64,
    /// Largest reply body (or error message) one command may return, in bytes.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_REPLY_BYTES)]
    pub max_reply_bytes: usize,
    /// Most events one command may persist.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_EVENTS_PER_COMMAND)]
    pub max_events_per_command: usize,
    /// Largest command body, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_command_bytes: usize,
    /// Largest event payload the journal accepts, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_event_bytes: usize,
    /// Seconds a caller waits for a reply.
    #[arg(long, default_value_t = 30)]
    pub reply_timeout_secs: u64,
    /// Seconds between checks of the components directory (0 = don't watch).
    #[arg(long, default_value_t = 2)]
    pub watch_secs: u64,
}

impl ServeArgs {
    pub fn into_config(self) -> ServeConfig {
        let mut engine = EngineConfig {
            snapshot_every: self.snapshot_every,
            stash_capacity: self.stash_capacity,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            max_concurrent_recoveries: self.max_concurrent_recoveries,
            max_event_bytes: self.max_event_bytes,
            ..EngineConfig::default()
        };
        if let Some(n) = self.shards {
            engine.shards = n;
        }
        ServeConfig {
            data: self.data,
            components: self.components,
            listen: self.listen,
            journal: crate::journal::JournalOptions {
                backend: self.journal,
                log_segment_bytes: self.log_segment_mb << 20,
            },
            engine,
            sandbox: SandboxLimits {
                memory_bytes: self.memory_limit_mb << 20,
                call_timeout: Duration::from_millis(self.call_timeout_ms),
                wasm_stack_bytes: (self.wasm_stack_kb as usize) << 10,
                max_reply_bytes: self.max_reply_bytes,
                max_events_per_command: self.max_events_per_command,
                ..SandboxLimits::default()
            },
            api: ApiConfig {
                max_command_bytes: self.max_command_bytes,
                reply_timeout: Duration::from_secs(self.reply_timeout_secs),
                ..ApiConfig::default()
            },
            watch: (self.watch_secs > 0).then(|| Duration::from_secs(self.watch_secs)),
        }
    }
}

/// A small blocking HTTP client for the subcommands.
pub struct Client {
    agent: ureq::Agent,
    base: String,
}

impl Client {
    pub fn new(server: &str) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        Client { agent, base: server.trim_end_matches('/').to_string() }
    }

    /// Returns (status, body).
    pub fn request(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> anyhow::Result<(u16, String)> {
        let url = format!("{}{}", self.base, path);
        let mut resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("POST", b) => self.agent.post(&url).header("content-type", "application/json").send(b.unwrap_or_default()),
            ("PUT", b) => self.agent.put(&url).header("content-type", "application/wasm").send(b.unwrap_or_default()),
            (m, _) => anyhow::bail!("unsupported method {m}"),
        }
        .map_err(|e| anyhow::anyhow!("cannot reach mneme at {}: {e}", self.base))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().with_config().limit(1 << 30).read_to_string().unwrap_or_default();
        Ok((status, text))
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Run a client subcommand; returns the process exit code.
pub fn run_client(command: Command) -> anyhow::Result<i32> {
    let (server, method, path, body) = match command {
        Command::Serve(_) => unreachable!("serve is handled by main"),
        Command::Journal { action } => return run_journal(action),
        Command::Send { entity_type, entity_id, command, server } => {
            let body = match command.as_deref() {
                None | Some("-") => {
                    let mut s = Vec::new();
                    std::io::stdin().read_to_end(&mut s)?;
                    s
                }
                Some(c) => c.as_bytes().to_vec(),
            };
            (server, "POST", format!("/v1/entities/{}/{}", encode(&entity_type), encode(&entity_id)), Some(body))
        }
        Command::Events { entity_type, entity_id, tag, from, limit, server } => {
            let mut q = Vec::new();
            if let Some(f) = from {
                q.push(format!("from={f}"));
            }
            if let Some(l) = limit {
                q.push(format!("limit={l}"));
            }
            let path = match (tag, entity_type, entity_id) {
                (Some(t), None, None) => {
                    q.push(format!("tag={}", encode(&t)));
                    "/v1/events".to_string()
                }
                (None, Some(t), Some(i)) => format!("/v1/entities/{}/{}/events", encode(&t), encode(&i)),
                _ => anyhow::bail!("give either ENTITY_TYPE ENTITY_ID or --tag TAG"),
            };
            (server, "GET", format!("{path}?{}", q.join("&")), None)
        }
        Command::State { entity_type, entity_id, server } => {
            (server, "GET", format!("/v1/entities/{}/{}/state", encode(&entity_type), encode(&entity_id)), None)
        }
        Command::Deploy { entity_type, file, server } => {
            let wasm = std::fs::read(&file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            (server, "PUT", format!("/v1/components/{}", encode(&entity_type)), Some(wasm))
        }
        Command::Rollback { entity_type, version, server } => {
            (server, "POST", format!("/v1/components/{}/versions/{version}/activate", encode(&entity_type)), None)
        }
        Command::Components { server } => (server, "GET", "/v1/components".to_string(), None),
    };
    let (status, text) = Client::new(&server.server).request(method, &path, body)?;
    if (200..300).contains(&status) {
        if !text.is_empty() {
            println!("{text}");
        }
        Ok(0)
    } else {
        eprintln!("error {status}: {text}");
        Ok(1)
    }
}

/// `mneme journal verify|reindex DATA`: work on the files directly.
fn run_journal(action: JournalAction) -> anyhow::Result<i32> {
    match action {
        JournalAction::Verify { data } => {
            let report = crate::journal::verify::verify(&data)?;
            println!(
                "{}: {} segments, {} frames, {} events, {} snapshots, {} stored timers",
                data.display(),
                report.segments,
                report.frames,
                report.events,
                report.snapshots,
                report.timers
            );
            for note in &report.notes {
                println!("note: {note}");
            }
            for problem in &report.problems {
                println!("DAMAGED: {problem}");
            }
            if report.problems.is_empty() {
                println!("ok: no damage found");
                Ok(0)
            } else {
                println!(
                    "{} problem(s). The commit log is the source of truth: if only the index is damaged, \
                     `mneme journal reindex {}` rebuilds it; damage in the log itself means acknowledged data is \
                     affected: restore the data directory from a backup",
                    report.problems.len(),
                    data.display()
                );
                Ok(1)
            }
        }
        JournalAction::Reindex { data } => {
            let started = std::time::Instant::now();
            let frames = crate::journal::log_journal::reindex(&data)?;
            let secs = started.elapsed().as_secs_f64();
            println!("{}: indexed {frames} frames in {secs:.2} s", data.display());
            Ok(0)
        }
    }
}
