//! `mneme serve`: open the journal, load components, start the engine, serve HTTP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use axum::serve::ListenerExt;

use crate::api::{self, ApiConfig};
use crate::component::{sandbox::Runtime, Registry, SandboxLimits};
use crate::config::EngineConfig;
use crate::engine::Engine;
use crate::journal::{self, JournalOptions};

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
}

/// Open storage and components and start the engine (no HTTP).
pub fn start_engine(
    data: &Path,
    journal_options: &JournalOptions,
    components: Option<&Path>,
    engine: EngineConfig,
    sandbox: SandboxLimits,
) -> anyhow::Result<Engine> {
    std::fs::create_dir_all(data).with_context(|| format!("creating data directory {}", data.display()))?;
    let backend = journal_options.backend;
    let journal = journal::open_with(data, journal_options)
        .with_context(|| format!("opening the {} journal of {}", backend.name(), data.display()))?;
    let runtime = Runtime::new(sandbox)?;
    let registry = Arc::new(Registry::open(runtime, data)?);
    if let Some(dir) = components {
        for (name, err) in registry.deploy_dir(dir)? {
            tracing::error!("component `{name}` not loaded: {err}");
        }
    }
    tracing::info!(journal = backend.name(), "journal open");
    Ok(Engine::start(engine, journal, registry))
}

pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let (data, components) = (config.data.clone(), config.components.clone());
    let (engine_config, sandbox, journal) = (config.engine.clone(), config.sandbox, config.journal.clone());
    let engine = tokio::task::spawn_blocking(move || {
        start_engine(&data, &journal, components.as_deref(), engine_config, sandbox)
    })
    .await??;
    for c in engine.registry().list() {
        tracing::info!(entity_type = %c.entity_type, version = c.version, "serving component");
    }
    if let (Some(dir), Some(every)) = (config.components.clone(), config.watch) {
        tokio::spawn(watch_components(engine.clone(), dir, every));
    }
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    tracing::info!("mneme listening on http://{}", listener.local_addr()?);
    // Replies are small: without TCP_NODELAY they can wait on Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, api::router(engine.clone(), config.api)).with_graceful_shutdown(shutdown_signal()).await?;
    tracing::info!("shutting down: finishing in-flight writes");
    tokio::task::spawn_blocking(move || engine.shutdown()).await?;
    Ok(())
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

/// Hot-load: deploy `*.wasm` files of the components directory when they change.
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
            let registry = engine.registry().clone();
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            let result = tokio::task::spawn_blocking(move || {
                std::fs::read(&p).map_err(|e| e.to_string()).and_then(|w| registry.deploy(&name, &w))
            })
            .await;
            match result {
                Ok(Ok(c)) => {
                    tracing::info!(entity_type = %c.entity_type, version = c.version, "hot-loaded from components directory")
                }
                Ok(Err(e)) => tracing::error!("hot-load failed: {e}"),
                Err(e) => tracing::error!("hot-load failed: {e}"),
            }
        }
        tokio::time::sleep(every).await;
    }
}
