//! Deployed components on disk, and their precompiled form.
//!
//! ```text
//! DATA/components/{type}/{version:08}.wasm   every deployed version, as uploaded
//! DATA/components/{type}/{version:08}.meta   its SHA-256 and deploy time (text, `key=value` lines)
//! DATA/components/{type}/ACTIVE              the active version number (text)
//! DATA/projections/{name}/...                the same for projections
//! DATA/cache/{sha256}-{engine}.cwasm         precompiled code (Component::serialize)
//! ```
//! Files are written to a temporary name, synced, then renamed, so a crash never
//! leaves a half-written version or cache entry under its real name. A restart
//! loads exactly the versions that were active, and older versions stay for rollback.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub struct ComponentStore {
    root: PathBuf,
    cache: PathBuf,
}

/// One stored version.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub entity_type: String,
    pub version: u64,
    pub path: PathBuf,
}

/// What is recorded about a stored version beside its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionMeta {
    /// SHA-256 of the `.wasm`, hex.
    pub sha256: String,
    /// When the version was deployed (ms since the Unix epoch): stays the same across restarts.
    pub deployed_at_ms: u64,
}

impl StoredVersion {
    fn meta_path(&self) -> PathBuf {
        self.path.with_extension("meta")
    }

    /// The version's hash and deploy time. Versions stored before `.meta` files
    /// existed are hashed, and their file's modification time stands for the deploy
    /// time (the meta file is then written, so this happens once).
    pub fn meta(&self) -> std::io::Result<VersionMeta> {
        if let Ok(text) = fs::read_to_string(self.meta_path()) {
            let field = |key: &str| {
                text.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('='))).map(str::trim)
            };
            if let (Some(sha256), Some(Ok(deployed_at_ms))) =
                (field("sha256"), field("deployed_at_ms").map(str::parse::<u64>))
            {
                if sha256.len() == 64 {
                    return Ok(VersionMeta { sha256: sha256.to_string(), deployed_at_ms });
                }
            }
        }
        let sha256 = sha256_hex(&fs::read(&self.path)?);
        let modified = fs::metadata(&self.path)?.modified()?;
        let deployed_at_ms = modified.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let meta = VersionMeta { sha256, deployed_at_ms };
        // Best effort: without it, the next call hashes again.
        let _ = write_meta(&self.meta_path(), &meta);
        Ok(meta)
    }
}

fn write_meta(path: &Path, meta: &VersionMeta) -> std::io::Result<()> {
    write_atomically(path, format!("sha256={}\ndeployed_at_ms={}\n", meta.sha256, meta.deployed_at_ms).as_bytes())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Write `bytes` to `path` so that the file appears whole or not at all.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl ComponentStore {
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        Self::open_named(data_dir, "components")
    }

    /// The store under `DATA/{dir}` (entities: `components`, projections: `projections`).
    pub fn open_named(data_dir: &Path, dir: &str) -> std::io::Result<Self> {
        let root = data_dir.join(dir);
        let cache = data_dir.join("cache");
        fs::create_dir_all(&root)?;
        fs::create_dir_all(&cache)?;
        Ok(ComponentStore { root, cache })
    }

    /// Store `wasm` as the next version of `entity_type` and make it active.
    pub fn add_version(&self, entity_type: &str, wasm: &[u8], deployed_at_ms: u64) -> std::io::Result<u64> {
        let dir = self.root.join(entity_type);
        fs::create_dir_all(&dir)?;
        let version = self.versions(entity_type)?.last().map_or(1, |v| v.version + 1);
        // The meta first: a version whose meta is missing is hashed again, but a
        // meta whose version is missing is never read.
        let meta = VersionMeta { sha256: sha256_hex(wasm), deployed_at_ms };
        write_meta(&dir.join(format!("{version:08}.meta")), &meta)?;
        write_atomically(&dir.join(format!("{version:08}.wasm")), wasm)?;
        self.set_active(entity_type, version)?;
        Ok(version)
    }

    pub fn set_active(&self, entity_type: &str, version: u64) -> std::io::Result<()> {
        write_atomically(&self.root.join(entity_type).join("ACTIVE"), version.to_string().as_bytes())
    }

    /// The active version of every entity type (or projection).
    pub fn active(&self) -> std::io::Result<Vec<StoredVersion>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            let entity_type = entry.file_name().to_string_lossy().into_owned();
            let Ok(text) = fs::read_to_string(entry.path().join("ACTIVE")) else { continue };
            let Ok(version) = text.trim().parse::<u64>() else { continue };
            let path = entry.path().join(format!("{version:08}.wasm"));
            if path.exists() {
                out.push(StoredVersion { entity_type, version, path });
            }
        }
        out.sort_by(|a, b| a.entity_type.cmp(&b.entity_type));
        Ok(out)
    }

    /// Every stored version of `entity_type`, oldest first.
    pub fn versions(&self, entity_type: &str) -> std::io::Result<Vec<StoredVersion>> {
        let dir = self.root.join(entity_type);
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(&dir) else { return Ok(out) };
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(v) = name.strip_suffix(".wasm").and_then(|n| n.parse::<u64>().ok()) {
                out.push(StoredVersion { entity_type: entity_type.to_string(), version: v, path: dir.join(name) });
            }
        }
        out.sort_by_key(|v| v.version);
        Ok(out)
    }

    /// The stored version of `entity_type` whose bytes have SHA-256 `hash`, if any.
    pub fn version_with_hash(&self, entity_type: &str, hash: &str) -> std::io::Result<Option<u64>> {
        for v in self.versions(entity_type)? {
            if v.meta()?.sha256 == hash {
                return Ok(Some(v.version));
            }
        }
        Ok(None)
    }

    pub fn cache_path(&self, hash: &str, engine_fingerprint: &str) -> PathBuf {
        self.cache.join(format!("{hash}-{engine_fingerprint}.cwasm"))
    }
}
