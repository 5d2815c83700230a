//! Deployed components on disk, and their precompiled form.
//!
//! ```text
//! DATA/components/{type}/{version:08}.wasm   every deployed version, as uploaded
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
    pub fn add_version(&self, entity_type: &str, wasm: &[u8]) -> std::io::Result<u64> {
        let dir = self.root.join(entity_type);
        fs::create_dir_all(&dir)?;
        let version = self.versions(entity_type)?.last().map_or(1, |v| v.version + 1);
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

    pub fn cache_path(&self, hash: &str, engine_fingerprint: &str) -> PathBuf {
        self.cache.join(format!("{hash}-{engine_fingerprint}.cwasm"))
    }
}
