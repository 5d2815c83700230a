//! `mneme serve`: listen at once, then open the journal, start the engine and load
//! the components while `/health` answers (`/ready` says when all is loaded).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;

use crate::api::{self, ApiConfig};
use crate::cluster::{Cluster, ClusterConfig};
use crate::component::registry::DirOutcome;
use crate::component::{sandbox::Runtime, Registry, SandboxLimits};
use crate::config::EngineConfig;
use crate::deploys;
use crate::engine::Engine;
use crate::journal::postgres::leases::Leases;
use crate::journal::{self, DataLock, JournalOptions};
use crate::net::{self, NetConfig, TlsFiles};

pub struct ServeConfig {
    pub data: PathBuf,
    pub components: Option<PathBuf>,
    pub listen: SocketAddr,
    pub journal: JournalOptions,
    pub engine: EngineConfig,
    pub sandbox: SandboxLimits,
    pub api: ApiConfig,
    /// Poll the components directory for changed files this often (None: don't watch).
    pub watch: Option<Duration>,
    /// Timeouts and the connection limit of the listener.
    pub net: NetConfig,
    /// Serve HTTPS with this certificate and key.
    pub tls: Option<TlsFiles>,
    /// Allow a non-loopback listen address without an admin token.
    pub insecure: bool,
    /// One of several hosts on a shared PostgreSQL journal (`--advertise`).
    pub cluster: Option<ClusterSettings>,
}

/// How this host joins the others (`--advertise`, `--node-id`, `--lease-secs`).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `None`: the id kept in DATA/node-id (made at the first start).
    pub node_id: Option<String>,
    pub advertise: String,
    pub lease: Duration,
}

/// This host's node id: the one given, else the one kept in the data directory,
/// else a new one, kept there.
fn node_id(data: &Path, given: Option<&str>) -> anyhow::Result<String> {
    if let Some(id) = given {
        return Ok(id.to_string());
    }
    let path = data.join("node-id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim().to_string();
        crate::names::validate_node_id(&id).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return Ok(id);
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&(std::process::id(), SystemTime::now(), data), &mut h);
    let id = format!("node-{:012x}", std::hash::Hasher::finish(&h) & 0xffff_ffff_ffff);
    let tmp = data.join("node-id.tmp");
    std::fs::write(&tmp, format!("{id}\n")).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// Refuse to expose the admin routes without a token, unless told to: anyone who
/// reaches them can run code of their choosing inside the server.
fn check_exposure(config: &ServeConfig) -> anyhow::Result<()> {
    let addr = config.listen;
    if addr.ip().to_canonical().is_loopback() {
        return Ok(());
    }
    if config.api.admin_token.is_none() {
        anyhow::ensure!(
            config.insecure,
            "refusing to listen on {addr} without an admin token: anyone who can reach that address could deploy \
             code into this server. Set one with --admin-token-file PATH, MNEME_ADMIN_TOKEN or --admin-token, \
             listen on a loopback address, or pass --insecure to accept the risk"
        );
        tracing::warn!(
            "listening on {addr} without an admin token (--insecure): anyone who can reach it can deploy code"
        );
    } else if config.tls.is_none() {
        tracing::warn!(
            "listening on {addr} without TLS: tokens and data cross the network in the clear \
             (--tls-cert and --tls-key, or a TLS-terminating proxy)"
        );
    }
    Ok(())
}

/// Connections need file descriptors: raise the soft limit toward the hard one so
/// `--max-connections` is not cut short by a default of 1024.
#[cfg(unix)]
fn raise_open_files_limit(wanted: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= wanted as libc::rlim_t {
            return;
        }
        let before = lim.rlim_cur;
        lim.rlim_cur = (wanted as libc::rlim_t).min(lim.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
            tracing::debug!(from = before, to = lim.rlim_cur, "raised the open files limit");
        }
    }
    if lim.rlim_cur < wanted as libc::rlim_t {
        tracing::warn!(limit = lim.rlim_cur, "open files limit is below what --max-connections needs");
    }
}

#[cfg(not(unix))]
fn raise_open_files_limit(_wanted: u64) {}

/// Open storage and components and start the engine (no HTTP).
pub fn start_engine(
    data: &Path,
    journal_options: &JournalOptions,
    components: Option<&Path>,
    engine: EngineConfig,
    sandbox: SandboxLimits,
) -> anyhow::Result<Engine> {
    let lock = DataLock::acquire(data).with_context(|| format!("locking data directory {}", data.display()))?;
    let engine = open_engine(data, lock, journal_options, components, engine, sandbox, None)?;
    load_components(&engine, components)?;
    Ok(engine)
}

/// Open the journal and the component store and start the engine, without
/// loading any component: every stored active version, and every file of the
/// components directory, is pending until [`load_components`].
pub fn open_engine(
    data: &Path,
    lock: DataLock,
    journal_options: &JournalOptions,
    components: Option<&Path>,
    engine: EngineConfig,
    sandbox: SandboxLimits,
    cluster: Option<&ClusterSettings>,
) -> anyhow::Result<Engine> {
    let backend = journal_options.backend;
    let journal = journal::open_locked(data, lock, journal_options)
        .with_context(|| format!("opening the {} journal of {}", backend.name(), data.display()))?;
    tracing::info!(journal = backend.name(), "journal open");
    let runtime = Runtime::new(sandbox)?;
    let registry = Arc::new(Registry::open_deferred(runtime, data)?);
    if let Some(dir) = components {
        for path in Registry::dir_files(dir)? {
            let name = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
            registry.mark_pending(&name, format!("deploying {} from the components directory", path.display()));
        }
    }
    let Some(settings) = cluster else { return Ok(Engine::start(engine, journal, registry)) };
    let node = node_id(data, settings.node_id.as_deref())?;
    let url = journal_options.postgres_url.as_deref().unwrap_or_default();
    let config = ClusterConfig { node: node.clone(), advertise: settings.advertise.clone(), lease: settings.lease };
    let cluster = Cluster::start(Leases::open(url)?, config).context("joining the hosts on the database")?;
    tracing::info!(
        node,
        advertise = %settings.advertise,
        partitions = cluster.ownership().held().len(),
        "one of several hosts on the database"
    );
    Ok(Engine::start_in_cluster(engine, journal, registry, cluster))
}

/// Load the stored active versions, then deploy the files of the components
/// directory whose bytes are new ([`deploy_dir_file`]): slow for Python and
/// JavaScript components that are not in the compiled-code cache yet.
pub fn load_components(engine: &Engine, components: Option<&Path>) -> anyhow::Result<()> {
    let registry = engine.registry();
    registry.load_stored()?;
    if let Some(dir) = components {
        for path in Registry::dir_files(dir)? {
            let (name, outcome) = deploy_dir_file(engine, &path, false);
            if let DirOutcome::Failed(err) = outcome {
                tracing::error!("component `{name}` not loaded: {err}");
            }
            registry.done(&name);
        }
    }
    for (name, _) in registry.pending_all() {
        registry.done(&name);
    }
    Ok(())
}

/// Deploy one file of the components directory, its stem naming what it holds: a
/// projection component as that projection (its workers follow the new version at
/// once), anything else as that entity type (`Registry::deploy_file`). Either way
/// bytes of a stored version are not deployed again, so a file left as it was
/// never undoes a deploy or rollback made over HTTP. With several hosts, a
/// projection hot-loaded while serving (`share`) goes to every host, as a
/// hot-loaded entity does; one deployed at start is shared by `deploys::seed` only
/// if the hosts have none.
fn deploy_dir_file(engine: &Engine, path: &Path, share: bool) -> (String, DirOutcome) {
    let registry = engine.registry();
    let wasm = match std::fs::read(path) {
        Ok(wasm) if registry.is_projection(&wasm) => wasm,
        _ => return registry.deploy_file(path),
    };
    let name = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
    let deploy = |wasm: &[u8]| match share {
        true => deploys::deploy_projection(engine, &name, wasm),
        false => engine.projections().deploy(&name, wasm),
    };
    let outcome = match registry.projection_version_of(&name, &wasm) {
        Ok(Some(version)) => DirOutcome::Known { version },
        Ok(None) => match deploy(&wasm) {
            Ok(status) => {
                let version = status.version;
                tracing::info!(projection = %name, version, file = %path.display(), "projection deployed from the components directory");
                DirOutcome::Projection
            }
            Err(e) => DirOutcome::Failed(e.to_string()),
        },
        Err(e) => DirOutcome::Failed(e),
    };
    (name, outcome)
}

pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    check_exposure(&config)?;
    let tls = config.tls.as_ref().map(net::tls_acceptor).transpose()?;
    // The data directory's lock first (it also creates the directory): a second
    // process on the same directory exits before it ever answers.
    let lock =
        DataLock::acquire(&config.data).with_context(|| format!("locking data directory {}", config.data.display()))?;
    // Then listen at once: /health answers while the journal opens and components
    // compile; /ready says when everything is loaded.
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("mneme listening on {scheme}://{}", listener.local_addr()?);
    // Every connection, the journal's files and some to spare.
    raise_open_files_limit((config.net.max_connections + net::OVERFLOW_SLOTS) as u64 + 1024);
    let startup = api::Startup::new("opening the journal");
    let started: Arc<OnceLock<Engine>> = Arc::default();
    // Topic streams never end on their own: end them when the shutdown starts.
    let shutdown = {
        let started = started.clone();
        async move {
            shutdown_signal().await;
            if let Some(engine) = started.get() {
                engine.topics().close();
            }
        }
    };
    let serving = net::serve(listener, api::starting_router(startup.clone()), config.net, tls, shutdown);
    let mut serving = std::pin::pin!(serving);

    let (data, components) = (config.data.clone(), config.components.clone());
    let (engine_config, sandbox, journal) = (config.engine.clone(), config.sandbox, config.journal.clone());
    let cluster = config.cluster.clone();
    let mut opening = tokio::task::spawn_blocking(move || {
        open_engine(&data, lock, &journal, components.as_deref(), engine_config, sandbox, cluster.as_ref())
    });
    let engine = tokio::select! {
        served = &mut serving => {
            // Shut down before the engine was up: let it finish starting, then stop it.
            if let Ok(Ok(engine)) = opening.await {
                tokio::task::spawn_blocking(move || engine.shutdown()).await?;
            }
            return served.map_err(Into::into);
        }
        opened = &mut opening => opened??,
    };
    let _ = started.set(engine.clone());
    // Hand over to the full API first: its `/ready` names each component still
    // loading, which the starting router cannot; set the other way round, a look in
    // between would be told "loading components" without the names.
    startup.started(api::router_with(engine.clone(), config.api, Some(startup.clone())));
    startup.stage("loading components");
    {
        let (engine, components, startup) = (engine.clone(), config.components.clone(), startup.clone());
        let loader = engine.clone();
        let loading = tokio::task::spawn_blocking(move || load_components(&loader, components.as_deref()));
        tokio::spawn(async move {
            match loading.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("loading components: {e:#}"),
                Err(e) => tracing::error!("loading components: {e}"),
            }
            for c in engine.registry().list() {
                tracing::info!(entity_type = %c.entity_type, version = c.version, "serving component");
            }
            if engine.ownership().is_some() {
                // Several hosts: seed what the others lack, then serve what they serve.
                let follower = engine.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    deploys::seed(&follower);
                    deploys::follow(&follower);
                })
                .await;
                tokio::spawn(follow_deploys(engine.clone()));
            }
            startup.loaded();
            tracing::info!("ready");
            if let (Some(dir), Some(every)) = (config.components, config.watch) {
                watch_components(engine, dir, every).await;
            }
        });
    }
    serving.await?;
    tracing::info!("shutting down: finishing in-flight writes");
    tokio::task::spawn_blocking(move || engine.shutdown()).await?;
    Ok(())
}

/// Several hosts: serve the hosts' active versions (`deploys::follow`), for good.
async fn follow_deploys(engine: Engine) {
    loop {
        tokio::time::sleep(deploys::FOLLOW_EVERY).await;
        let follower = engine.clone();
        let _ = tokio::task::spawn_blocking(move || deploys::follow(&follower)).await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Hot-load: deploy `*.wasm` files of the components directory when they change,
/// by the directory's rule (bytes of a stored version are not deployed again, so
/// a file left as it was never undoes an HTTP deploy or rollback).
async fn watch_components(engine: Engine, dir: PathBuf, every: Duration) {
    let mut seen: HashMap<PathBuf, (SystemTime, u64)> = HashMap::new();
    let mut first = true;
    loop {
        let mut changed = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_none_or(|x| x != "wasm") {
                    continue;
                }
                let Ok(meta) = e.metadata() else { continue };
                let stamp = (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len());
                if seen.insert(p.clone(), stamp) != Some(stamp) && !first {
                    changed.push(p);
                }
            }
        }
        first = false;
        for p in changed {
            let engine2 = engine.clone();
            match tokio::task::spawn_blocking(move || deploy_dir_file(&engine2, &p, true)).await {
                Ok((_, DirOutcome::Deployed(c))) => {
                    tracing::info!(entity_type = %c.entity_type, version = c.version, "hot-loaded from components directory");
                    let (engine, c) = (engine.clone(), c.clone());
                    match tokio::task::spawn_blocking(move || deploys::hot_loaded(&engine, &c)).await {
                        Ok(Err(e)) => tracing::error!("{e}"),
                        Err(e) => tracing::error!("sharing a hot-loaded component: {e}"),
                        Ok(Ok(())) => {}
                    }
                }
                Ok((_, DirOutcome::Known { .. } | DirOutcome::Projection)) => {}
                Ok((name, DirOutcome::Failed(e))) => tracing::error!("hot-load of `{name}` failed: {e}"),
                Err(e) => tracing::error!("hot-load failed: {e}"),
            }
        }
        tokio::time::sleep(every).await;
    }
}
