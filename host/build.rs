//! Builds into the binary the sources `mneme new` projects depend on (the guest
//! SDK, the testkit and the host crate the testkit runs entities in), so a binary
//! installed anywhere can scaffold a project without a checkout of mneme:
//! `scaffold::mneme_src` writes them out once per build (see `SOURCES` there).
//!
//! Writes `$OUT_DIR/sources.rs`: `&[(relative path, bytes)]`, every file under the
//! roots below (tests and build output left out), paths relative to the workspace.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What a project needs, relative to the workspace root (the root `Cargo.toml`
/// is written out with only these crates as members).
const ROOTS: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    "host/Cargo.toml",
    "host/build.rs",
    "host/src",
    "host/templates",
    "guest-sdk/Cargo.toml",
    "guest-sdk/src",
    "testkit/Cargo.toml",
    "testkit/src",
    "wit",
    "examples/bank-account-c/json.h",
    "examples/config/mneme.toml",
    "examples/README-languages.md",
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest.parent().unwrap().to_path_buf();
    let mut files = Vec::new();
    for root in ROOTS {
        let path = workspace.join(root);
        println!("cargo:rerun-if-changed={}", path.display());
        collect(&workspace, &path, &mut files);
    }
    files.sort();
    let mut out = String::from("&[\n");
    for (rel, abs) in &files {
        let _ = writeln!(out, "    ({rel:?}, include_bytes!({:?}) as &[u8]),", abs.display().to_string());
    }
    out.push(']');
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("sources.rs");
    std::fs::write(dest, out).unwrap();
}

/// Every file under `path` (or `path` itself), as (path relative to `workspace`, absolute path).
fn collect(workspace: &Path, path: &Path, files: &mut Vec<(String, PathBuf)>) {
    let Ok(meta) = std::fs::metadata(path) else {
        panic!("{} is missing: it is built into mneme for `mneme new`", path.display())
    };
    if meta.is_file() {
        let rel = path.strip_prefix(workspace).unwrap().to_string_lossy().replace('\\', "/");
        files.push((rel, path.to_path_buf()));
        return;
    }
    for entry in std::fs::read_dir(path).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        collect(workspace, &entry.path(), files);
    }
}
