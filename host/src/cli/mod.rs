//! The `mneme` command line: `serve`, and client subcommands that call a running
//! server's HTTP API.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

mod config_file;
mod show;

pub use config_file::with_config_file;

use show::{show, Answer};

use crate::api::{ApiConfig, Token};
use crate::component::{limits, SandboxLimits};
use crate::config::EngineConfig;
use crate::net::{NetConfig, TlsFiles};
use crate::server::{ClusterSettings, ServeConfig};

#[derive(Parser)]
#[command(name = "mneme", version, about = "Event-sourced entities as WebAssembly components")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
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
    /// Make another stored version of an entity type active: an earlier one (a
    /// rollback) or a later one again (`mneme components` lists the versions).
    Rollback {
        /// The entity type.
        entity_type: String,
        /// The stored version to activate.
        version: u64,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List deployed components.
    Components {
        #[command(flatten)]
        server: ServerArg,
    },
    /// Deploy a projection component as a new version of a projection.
    DeployProjection {
        name: String,
        file: PathBuf,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Make a stored version of a projection active again.
    ActivateProjection {
        name: String,
        version: u64,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List projections: version, offset, journal head, lag, status.
    Projections {
        #[command(flatten)]
        server: ServerArg,
    },
    /// Print a projection's view: one key, or the keys from --from-key with --prefix.
    View {
        name: String,
        key: Option<String>,
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long)]
        from_key: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Follow events live (Server-Sent Events): every event, those with a tag, or
    /// one entity's; prints each as a JSON line, reconnecting where it left off.
    Tail {
        entity_type: Option<String>,
        entity_id: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        /// First offset (all events, tag) or sequence number (entity).
        #[arg(long)]
        from: Option<u64>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Write a new entity project: the entity, `build.sh` (making NAME.wasm for
    /// `mneme deploy`), a test through mneme-testkit, a README.
    New {
        /// The language: rust, python, js or c.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(crate::scaffold::LANGUAGES))]
        lang: String,
        /// The entity type (`[a-z][a-z0-9_-]*`); also the project directory's name.
        name: String,
        /// Where to write the project (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// mneme's source tree, for the SDK and the testkit (default: $MNEME_SRC, else
        /// the sources built into this binary, written out under
        /// ~/.local/share/mneme/src).
        #[arg(long, value_name = "PATH")]
        mneme_src: Option<PathBuf>,
    },
    /// Check or rebuild a data directory's journal (not while a server uses it).
    Journal {
        #[command(subcommand)]
        action: JournalAction,
    },
    /// Print a shell completion script: `mneme completions bash > /etc/bash_completion.d/mneme`
    /// (or zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
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
    /// Address of the mneme server (http:// or https://).
    #[arg(long, env = "MNEME_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Admin token, sent by `deploy` and `rollback` (and by the others when no client token is given).
    #[arg(long, env = "MNEME_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File holding the admin token (its first line); wins over --admin-token.
    #[arg(long, value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// Client token, sent by `send`, `state`, `events` and `components`.
    #[arg(long, env = "MNEME_CLIENT_TOKEN", hide_env_values = true)]
    pub client_token: Option<String>,
    /// File holding the client token (its first line); wins over --client-token.
    #[arg(long, value_name = "PATH")]
    pub client_token_file: Option<PathBuf>,
    /// PEM file of the CA certificate(s) to trust for an https:// server, instead of
    /// the built-in web roots (e.g. the server's self-signed certificate).
    #[arg(long, env = "MNEME_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
    /// Print the server's JSON answer as it is (for scripts); without it, lists are
    /// tables and documents indented JSON.
    #[arg(long)]
    pub json: bool,
}

/// A token from a file (first line, trimmed) or a flag / environment variable.
fn token(what: &str, value: Option<String>, file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let token = match file {
        Some(f) => {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading the {what} token file {}", f.display()))?;
            Some(text.lines().next().unwrap_or("").trim().to_string())
        }
        None => value.map(|v| v.trim().to_string()),
    };
    if let Some(t) = &token {
        anyhow::ensure!(
            t.len() >= MIN_TOKEN_LEN && t.bytes().all(|b| b.is_ascii_graphic()),
            "the {what} token must be at least {MIN_TOKEN_LEN} printable ASCII characters without spaces"
        );
    }
    Ok(token)
}

/// Shortest token accepted: a guessable token is no gate.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Args)]
pub struct ServeArgs {
    /// A TOML file of settings, one key per flag (`listen = "0.0.0.0:8443"`); a flag
    /// or its environment variable wins over the file.
    #[arg(long, env = "MNEME_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (journal, deployed components, compiled-code cache).
    #[arg(long, default_value = "mneme-data")]
    pub data: PathBuf,
    /// Directory of `*.wasm` components to deploy at start and watch for changes.
    #[arg(long)]
    pub components: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Journal backend: `log` (mneme's commit log with a fjall index), `sled`, or
    /// `postgres` (a PostgreSQL database: `--postgres-url`). A data directory keeps
    /// the one it was created with.
    #[arg(long, default_value = "log", value_parser = crate::journal::Backend::parse)]
    pub journal: crate::journal::Backend,
    /// The database of `--journal postgres`, e.g. `postgres://mneme:PASSWORD@127.0.0.1:5432/mneme`
    /// (prefer the variable: a flag shows in `ps`).
    #[arg(long, env = "MNEME_POSTGRES_URL", hide_env_values = true)]
    pub postgres_url: Option<String>,
    /// Run as one of several hosts on the `--journal postgres` database, reachable
    /// by the others at this URL (e.g. `http://10.0.0.5:8080`): each host owns a
    /// share of the entities, and any host answers any request by forwarding it to
    /// the owner. Without it, one mneme uses the database alone.
    #[arg(long, env = "MNEME_ADVERTISE", value_name = "URL")]
    pub advertise: Option<String>,
    /// This host's name among the hosts (default: one generated at the first start
    /// and kept in DATA/node-id).
    #[arg(long, env = "MNEME_NODE_ID", requires = "advertise")]
    pub node_id: Option<String>,
    /// With several hosts: seconds a host's partition leases last without renewal,
    /// which is how long the entities of a host that died wait for another owner.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub lease_secs: u64,
    /// With several hosts: answer a request for an entity owned by another host
    /// with `307 Temporary Redirect` to it, instead of forwarding it.
    #[arg(long, requires = "advertise")]
    pub redirect: bool,
    /// With several hosts: seconds a request for an entity whose partition is
    /// moving between hosts (its owner died, or it goes to a joining host) waits
    /// for the new owner before `503` (default: the lease and 2 s more, so a
    /// failover after a host died is waited out; 0: answer `503` at once).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub handoff_wait_secs: Option<u64>,
    /// Export a trace span per command (with its recovery and guest call) to this
    /// OpenTelemetry collector over OTLP/HTTP, e.g. `http://localhost:4318`
    /// (`/v1/traces` is added to a URL without a path). A request's `traceparent`
    /// header makes its command part of the caller's trace. The service name is
    /// `OTEL_SERVICE_NAME`, else `mneme`.
    #[arg(long, env = "MNEME_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
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
    /// Largest value a projection may store under one key of its view, in bytes
    /// (a larger one fails the projection).
    #[arg(long, default_value_t = crate::config::ProjectionConfig::default().max_value_bytes)]
    pub max_view_value_bytes: usize,
    /// Most events handed to a projection per batch (one call, one atomic write).
    #[arg(long, default_value_t = crate::config::ProjectionConfig::default().batch_events as u64,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub projection_batch_events: u64,
    /// Seconds a caller waits for a reply.
    #[arg(long, default_value_t = 30)]
    pub reply_timeout_secs: u64,
    /// Seconds between checks of the components directory (0 = don't watch).
    #[arg(long, default_value_t = 2)]
    pub watch_secs: u64,
    /// Seconds without news after which an event or topic stream sends a keep-alive comment.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub stream_keep_alive_secs: u64,
    /// Most entities kept in memory, over all shards (each shard keeps at most
    /// N / shards); beyond it the least recently used idle entities are passivated.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_active_entities: u64,
    /// Readers of a topic (GET /v1/topics/{topic}, .../stream) are served its newest
    /// N messages; older positions are skipped (0: all). The journal keeps them.
    #[arg(long, default_value_t = 100_000)]
    pub topic_retention: u64,
    /// Token that deploy and activate require as `Authorization: Bearer <token>`
    /// (at least 16 characters). Required to listen on a non-loopback address.
    #[arg(long, env = "MNEME_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File holding the admin token (its first line); wins over --admin-token.
    #[arg(long, value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// Token that commands and queries require (the admin token is accepted too);
    /// none: they are open. /health and /metrics are always open.
    #[arg(long, env = "MNEME_CLIENT_TOKEN", hide_env_values = true)]
    pub client_token: Option<String>,
    /// File holding the client token (its first line); wins over --client-token.
    #[arg(long, value_name = "PATH")]
    pub client_token_file: Option<PathBuf>,
    /// Listen on a non-loopback address without an admin token: anyone who can
    /// reach the port can deploy code.
    #[arg(long)]
    pub insecure: bool,
    /// Serve HTTPS: PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Seconds a request head may take from its first byte (slowloris).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_secs: u64,
    /// Seconds a request body may take to arrive whole after its head (then 408).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout_secs: u64,
    /// Seconds a connection may stay silent with no request in progress, fresh or
    /// between requests (also how long a client may stall reading a response).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_alive_timeout_secs: u64,
    /// Connections served at once; 32 more get only /health (others 503), the rest
    /// are closed on accept.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
}

impl ServeArgs {
    pub fn into_config(self) -> anyhow::Result<ServeConfig> {
        anyhow::ensure!(
            self.journal != crate::journal::Backend::Postgres || self.postgres_url.is_some(),
            "--journal postgres needs --postgres-url URL (or MNEME_POSTGRES_URL), e.g. \
             postgres://mneme@127.0.0.1:5432/mneme (scripts/start-postgres.sh starts one and prints its URL)"
        );
        if let Some(url) = &self.advertise {
            anyhow::ensure!(
                self.journal == crate::journal::Backend::Postgres,
                "--advertise (several hosts on one database) needs --journal postgres"
            );
            anyhow::ensure!(
                url.starts_with("http://") || url.starts_with("https://"),
                "--advertise must be the URL other hosts reach this one at, e.g. http://10.0.0.5:8080 (got `{url}`)"
            );
        }
        if let Some(id) = &self.node_id {
            crate::names::validate_node_id(id).map_err(anyhow::Error::msg)?;
        }
        let admin_token = token("admin", self.admin_token, self.admin_token_file.as_deref())?;
        let client_token = token("client", self.client_token, self.client_token_file.as_deref())?;
        let mut engine = EngineConfig {
            snapshot_every: self.snapshot_every,
            stash_capacity: self.stash_capacity,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            max_concurrent_recoveries: self.max_concurrent_recoveries,
            max_event_bytes: self.max_event_bytes,
            max_active_entities: self.max_active_entities as usize,
            projections: crate::config::ProjectionConfig {
                max_value_bytes: self.max_view_value_bytes,
                batch_events: self.projection_batch_events as usize,
                ..crate::config::ProjectionConfig::default()
            },
            topic_retention: self.topic_retention,
            ..EngineConfig::default()
        };
        if let Some(n) = self.shards {
            engine.shards = n;
        }
        Ok(ServeConfig {
            data: self.data,
            components: self.components,
            listen: self.listen,
            journal: crate::journal::JournalOptions {
                backend: self.journal,
                log_segment_bytes: self.log_segment_mb << 20,
                postgres_url: self.postgres_url,
                shared: self.advertise.is_some(),
            },
            cluster: self.advertise.map(|advertise| ClusterSettings {
                node_id: self.node_id,
                advertise: advertise.trim_end_matches('/').to_string(),
                lease: Duration::from_secs(self.lease_secs),
            }),
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
                body_timeout: Duration::from_secs(self.body_timeout_secs),
                admin_token: admin_token.as_deref().map(Token::new),
                client_token: client_token.as_deref().map(Token::new),
                stream_keep_alive: Duration::from_secs(self.stream_keep_alive_secs),
                redirect: self.redirect,
                handoff_wait: Duration::from_secs(self.handoff_wait_secs.unwrap_or(self.lease_secs + 2)),
                ..ApiConfig::default()
            },
            watch: (self.watch_secs > 0).then(|| Duration::from_secs(self.watch_secs)),
            net: NetConfig {
                header_timeout: Duration::from_secs(self.header_timeout_secs),
                keep_alive_timeout: Duration::from_secs(self.keep_alive_timeout_secs),
                max_connections: self.max_connections as usize,
            },
            tls: self.tls_cert.zip(self.tls_key).map(|(cert, key)| TlsFiles { cert, key }),
            insecure: self.insecure,
        })
    }
}

/// A small blocking HTTP client for the subcommands.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client of `server` that trusts the CA certificates in `ca_cert` (PEM) when
    /// given, else the built-in web roots, and sends `token` as a bearer token.
    pub fn new(server: &str, ca_cert: Option<&Path>, token: Option<String>) -> anyhow::Result<Self> {
        use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig};
        let mut config = ureq::Agent::config_builder().http_status_as_error(false);
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path).with_context(|| format!("reading the CA certificate {}", path.display()))?;
            let mut certs = Vec::new();
            for item in parse_pem(&pem) {
                if let PemItem::Certificate(c) = item.with_context(|| format!("parsing {}", path.display()))? {
                    certs.push(c);
                }
            }
            anyhow::ensure!(!certs.is_empty(), "no certificate in {} (PEM expected)", path.display());
            let roots = RootCerts::Specific(Arc::new(certs));
            config = config.tls_config(TlsConfig::builder().root_certs(roots).build());
        }
        let agent: ureq::Agent = config.build().into();
        Ok(Client { agent, base: server.trim_end_matches('/').to_string(), token })
    }

    /// Returns (status, body).
    pub fn request(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> anyhow::Result<(u16, String)> {
        let url = format!("{}{}", self.base, path);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let auth = auth.as_deref();
        let mut resp = match (method, body) {
            ("GET", _) => authorized(self.agent.get(&url), auth).call(),
            ("POST", b) => authorized(self.agent.post(&url), auth)
                .header("content-type", "application/json")
                .send(b.unwrap_or_default()),
            ("PUT", b) => authorized(self.agent.put(&url), auth)
                .header("content-type", "application/wasm")
                .send(b.unwrap_or_default()),
            (m, _) => anyhow::bail!("unsupported method {m}"),
        }
        .map_err(|e| anyhow::anyhow!("cannot reach mneme at {}: {e}", self.base))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().with_config().limit(1 << 30).read_to_string().unwrap_or_default();
        Ok((status, text))
    }
}

impl Client {
    /// Print the `data` of every event of an SSE stream as a line; reconnect with
    /// `Last-Event-ID` when the connection ends; stop at an `error` message.
    pub fn tail(&self, path: &str) -> anyhow::Result<i32> {
        use std::io::BufRead;
        let url = format!("{}{}", self.base, path);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut last_id: Option<String> = None;
        loop {
            let mut request = authorized(self.agent.get(&url), auth.as_deref()).header("accept", "text/event-stream");
            if let Some(id) = &last_id {
                request = request.header("last-event-id", id.as_str());
            }
            let mut resp = match request.call() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot reach mneme at {}: {e}; retrying", self.base);
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    continue;
                }
            };
            if resp.status() != 200 {
                let text = resp.body_mut().read_to_string().unwrap_or_default();
                eprintln!("error {}: {text}", resp.status().as_u16());
                return Ok(1);
            }
            let reader = std::io::BufReader::new(resp.body_mut().as_reader());
            let mut event = String::new();
            for line in reader.lines() {
                let Ok(line) = line else { break };
                if let Some(id) = line.strip_prefix("id:") {
                    last_id = Some(id.trim().to_string());
                } else if let Some(kind) = line.strip_prefix("event:") {
                    event = kind.trim().to_string();
                } else if let Some(data) = line.strip_prefix("data:") {
                    if event == "error" {
                        eprintln!("error: {}", data.trim());
                        return Ok(1);
                    }
                    println!("{}", data.trim());
                } else if line.is_empty() {
                    event.clear();
                }
            }
            // The server closed the stream (restart, idle timeout): resume after the last event.
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }
}

fn authorized<B>(request: ureq::RequestBuilder<B>, auth: Option<&str>) -> ureq::RequestBuilder<B> {
    match auth {
        Some(a) => request.header("authorization", a),
        None => request,
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
    let admin = matches!(
        command,
        Command::Deploy { .. }
            | Command::Rollback { .. }
            | Command::DeployProjection { .. }
            | Command::ActivateProjection { .. }
    );
    let mut deploying = None;
    let (server, method, path, body, answer) = match command {
        Command::Serve(_) => unreachable!("serve is handled by main"),
        Command::Journal { action } => return run_journal(action),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "mneme", &mut std::io::stdout());
            return Ok(0);
        }
        Command::New { lang, name, dir, mneme_src } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let src = crate::scaffold::mneme_src(mneme_src.as_deref())?;
            let written = crate::scaffold::create(&lang, &name, &dir, &src)?;
            println!("created {} ({} files, {lang}); next:", dir.display(), written.len());
            let test = if lang == "rust" { "cargo test" } else { "(cd test && cargo test)" };
            println!("  cd {} && ./build.sh && {test} && mneme deploy {name} {name}.wasm", dir.display());
            return Ok(0);
        }
        Command::Tail { entity_type, entity_id, tag, from, server } => {
            let mut q = Vec::new();
            if let Some(f) = from {
                q.push(format!("from={f}"));
            }
            let path = match (tag, entity_type, entity_id) {
                (tag, None, None) => {
                    if let Some(t) = tag {
                        q.push(format!("tag={}", encode(&t)));
                    }
                    "/v1/events/stream".to_string()
                }
                (None, Some(t), Some(i)) => format!("/v1/entities/{}/{}/events/stream", encode(&t), encode(&i)),
                _ => anyhow::bail!("give ENTITY_TYPE ENTITY_ID, or --tag TAG, or neither (all events)"),
            };
            let admin_token = token("admin", server.admin_token, server.admin_token_file.as_deref())?;
            let client_token = token("client", server.client_token, server.client_token_file.as_deref())?;
            let client = Client::new(&server.server, server.ca_cert.as_deref(), client_token.or(admin_token))?;
            return client.tail(&format!("{path}?{}", q.join("&")));
        }
        Command::Send { entity_type, entity_id, command, server } => {
            let body = match command.as_deref() {
                None | Some("-") => {
                    let mut s = Vec::new();
                    std::io::stdin().read_to_end(&mut s)?;
                    s
                }
                Some(c) => c.as_bytes().to_vec(),
            };
            let path = format!("/v1/entities/{}/{}", encode(&entity_type), encode(&entity_id));
            (server, "POST", path, Some(body), Answer::Document)
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
            (server, "GET", format!("{path}?{}", q.join("&")), None, Answer::Events)
        }
        Command::State { entity_type, entity_id, server } => {
            let path = format!("/v1/entities/{}/{}/state", encode(&entity_type), encode(&entity_id));
            (server, "GET", path, None, Answer::Document)
        }
        Command::Deploy { entity_type, file, server } => {
            let wasm = std::fs::read(&file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            deploying = Some((file, wasm.len()));
            (server, "PUT", format!("/v1/components/{}", encode(&entity_type)), Some(wasm), Answer::ComponentVersion)
        }
        Command::Rollback { entity_type, version, server } => {
            let path = format!("/v1/components/{}/versions/{version}/activate", encode(&entity_type));
            (server, "POST", path, None, Answer::ComponentVersion)
        }
        Command::Components { server } => (server, "GET", "/v1/components".to_string(), None, Answer::Components),
        Command::DeployProjection { name, file, server } => {
            let wasm = std::fs::read(&file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            deploying = Some((file, wasm.len()));
            (server, "PUT", format!("/v1/projections/{}", encode(&name)), Some(wasm), Answer::ProjectionVersion)
        }
        Command::ActivateProjection { name, version, server } => {
            let path = format!("/v1/projections/{}/versions/{version}/activate", encode(&name));
            (server, "POST", path, None, Answer::ProjectionVersion)
        }
        Command::Projections { server } => (server, "GET", "/v1/projections".to_string(), None, Answer::Projections),
        Command::View { name, key, prefix, from_key, limit, server } => {
            let (path, answer) = match key {
                Some(k) => (format!("/v1/views/{}/{}", encode(&name), encode(&k)), Answer::Document),
                None => {
                    let mut q = Vec::new();
                    if let Some(p) = prefix {
                        q.push(format!("prefix={}", encode(&p)));
                    }
                    if let Some(k) = from_key {
                        q.push(format!("from_key={}", encode(&k)));
                    }
                    if let Some(l) = limit {
                        q.push(format!("limit={l}"));
                    }
                    (format!("/v1/views/{}?{}", encode(&name), q.join("&")), Answer::ViewEntries)
                }
            };
            (server, "GET", path, None, answer)
        }
    };
    let admin_token = token("admin", server.admin_token, server.admin_token_file.as_deref())?;
    let client_token = token("client", server.client_token, server.client_token_file.as_deref())?;
    let token = if admin { admin_token } else { client_token.or(admin_token) };
    let client = Client::new(&server.server, server.ca_cert.as_deref(), token)?;
    let progress = deploying.map(|(file, bytes)| Progress::start(&file, bytes));
    let result = client.request(method, &path, body);
    if let Some(p) = progress {
        p.finish();
    }
    let (status, text) = result?;
    if (200..300).contains(&status) {
        if server.json {
            if !text.is_empty() {
                println!("{text}");
            }
        } else if !text.is_empty() {
            println!("{}", show(answer, &text));
        }
        Ok(0)
    } else {
        eprintln!("error {status}: {text}");
        Ok(1)
    }
}

/// A deploy's progress on standard error while the server compiles the component
/// (it answers when the version is active): a line that counts the seconds on a
/// terminal, one line before and one after otherwise.
struct Progress {
    done: Arc<std::sync::atomic::AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
    started: std::time::Instant,
}

impl Progress {
    fn start(file: &Path, bytes: usize) -> Progress {
        use std::io::{IsTerminal, Write};
        let what = format!("deploying {} ({} KiB): the server compiles it", file.display(), bytes.div_ceil(1024));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let started = std::time::Instant::now();
        let ticker = if std::io::stderr().is_terminal() {
            let done = done.clone();
            Some(std::thread::spawn(move || {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    eprint!("\r{what}... {} s", started.elapsed().as_secs());
                    let _ = std::io::stderr().flush();
                    std::thread::sleep(Duration::from_millis(250));
                }
            }))
        } else {
            eprintln!("{what}...");
            None
        };
        Progress { done, ticker, started }
    }

    fn finish(self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        let newline = if let Some(t) = self.ticker {
            let _ = t.join();
            "\n"
        } else {
            ""
        };
        eprintln!("{newline}answered after {:.1} s", self.started.elapsed().as_secs_f64());
    }
}

/// `mneme journal verify|reindex DATA`: work on the files directly.
fn run_journal(action: JournalAction) -> anyhow::Result<i32> {
    match action {
        JournalAction::Verify { data } => {
            let report = crate::journal::verify::verify(&data)?;
            println!(
                "{}: {} segments, {} frames, {} events, {} snapshots, {} stored timers, {} outbox entries ({} \
                 pending), {} applied idempotency keys, {} topic messages, {} projection records, {} view keys",
                data.display(),
                report.segments,
                report.frames,
                report.events,
                report.snapshots,
                report.timers,
                report.outbox_entries,
                report.outbox_pending,
                report.applied_keys,
                report.topic_messages,
                report.projection_records,
                report.view_keys
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
