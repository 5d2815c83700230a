//! The layers of `host/src`, checked against the code: every module imports only
//! from modules below it, so data flows one way (api → engine → shard → component
//! → journal → side effects) and there is no import circle. ARCHITECTURE.md states
//! the same list; this test is what keeps it true.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top-level modules of `host/src`, from the top layer down. A module may import
/// only from modules on a later line; modules on the same line do not import each
/// other.
const LAYERS: &[&[&str]] = &[
    &["main"],
    &["cli"],
    &["server", "scaffold"],
    &["net", "api"],
    &["forward"],
    &["subscribe"],
    &["deploys"],
    &["engine"],
    &["shard", "projection"],
    &["side_effects"],
    &["outbox"],
    &["writer", "topics"],
    &["router"],
    &["cluster"],
    &["component", "journal"],
    &["config", "metrics"],
    &["error"],
    &["names", "clock", "telemetry"],
];

/// Crates a module must never use (what it must not know).
const FORBIDDEN: &[(&str, &[&str], &str)] = &[
    ("api", &["wasmtime", "fjall", "sled"], "the API knows nothing of Wasm or the storage engine"),
    ("net", &["wasmtime", "fjall", "sled"], "the network edge knows nothing of Wasm or the storage engine"),
    ("subscribe", &["wasmtime", "fjall", "sled"], "subscriptions read the journal through its trait"),
    ("journal", &["wasmtime", "axum", "tokio"], "the journal knows nothing of Wasm or HTTP"),
    ("component", &["axum", "fjall", "sled"], "components know nothing of HTTP or storage"),
    ("shard", &["axum", "fjall", "sled"], "shards know nothing of HTTP or the storage engine"),
    (
        "projection",
        &["axum", "fjall", "sled", "wasmtime"],
        "projections reach Wasm and storage through component and journal",
    ),
    ("writer", &["wasmtime", "axum"], "the writer knows nothing of Wasm or HTTP"),
    ("router", &["wasmtime", "axum", "fjall", "sled"], "the router only carries messages"),
    ("cluster", &["wasmtime", "axum", "fjall", "sled"], "the cluster knows leases, not entities, Wasm or HTTP"),
    ("outbox", &["wasmtime", "axum", "fjall", "sled"], "the outbox delivers through the router and writer only"),
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&module))
        .unwrap_or_else(|| panic!("module `{module}` is in no layer: add it to LAYERS here and to ARCHITECTURE.md"))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, with the top-level module it belongs to.
fn files(dir: &Path, top: Option<&str>, out: &mut Vec<(String, PathBuf)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            files(&path, Some(top.unwrap_or(&stem)), out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let module = top.map_or(stem.clone(), str::to_string);
            if module != "lib" {
                out.push((module, path));
            }
        }
    }
}

/// Code without comments (doc comments mention modules freely).
fn code(text: &str) -> String {
    text.lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n")
}

/// The top-level modules named after `crate::` (also inside `use crate::{a, b::C}`).
fn crate_imports(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group: split at commas outside nested braces.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            out.insert(ident(item.trim()));
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

#[test]
fn every_module_imports_only_from_the_layers_below_it() {
    let mut all = Vec::new();
    files(&src(), None, &mut all);
    let mut wrong = Vec::new();
    for (module, path) in &all {
        let text = code(&std::fs::read_to_string(path).unwrap());
        for imported in crate_imports(&text) {
            if &imported == module {
                continue;
            }
            if layer_of(&imported) <= layer_of(module) {
                wrong.push(format!("{} imports `{imported}`, which is not below `{module}`", path.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "imports that run up or sideways:\n{}", wrong.join("\n"));
}

#[test]
fn modules_do_not_use_what_they_must_not_know() {
    let mut all = Vec::new();
    files(&src(), None, &mut all);
    let mut wrong = Vec::new();
    for (module, path) in &all {
        let text = code(&std::fs::read_to_string(path).unwrap());
        for (m, crates, why) in FORBIDDEN {
            if m != module {
                continue;
            }
            for c in *crates {
                if text.contains(&format!("{c}::")) {
                    wrong.push(format!("{} uses `{c}`: {why}", path.display()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_import_reader_sees_grouped_and_nested_imports() {
    let found = crate_imports("use crate::{a::X, b::{c::Y, Z}, d};\nfn f() { crate::e::g(); }");
    assert_eq!(found, ["a", "b", "d", "e"].into_iter().map(String::from).collect());
}

#[test]
fn the_sibling_reader_sees_use_statements_and_paths_in_the_code() {
    let siblings: BTreeSet<String> = ["a", "b", "c", "d"].into_iter().map(String::from).collect();
    let text =
        "use super::{a::X,\n    b};\nstruct S { loc: super::c::Loc } // super::d::Y\n#[cfg(test)]\nuse super::d::Z;\n";
    let found = sibling_imports(text, &siblings);
    assert_eq!(found, ["a", "b", "c"].into_iter().map(String::from).collect());
}

/// The sibling files a file imports with `use super::...` at its top level (not
/// `mod.rs`, whose items every file may use, and not inside test modules).
fn sibling_imports(text: &str, siblings: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut statement = String::new();
    for line in text.lines() {
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        if statement.is_empty() && !line.starts_with("use super::") && !line.starts_with("pub use super::") {
            // A path through a sibling in the code itself (`super::index::Loc`).
            let code = line.split("//").next().unwrap();
            for after in code.split("super::").skip(1) {
                let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if after[name.len()..].starts_with("::") && siblings.contains(&name) {
                    out.insert(name);
                }
            }
            continue;
        }
        statement.push_str(line);
        if !line.trim_end().ends_with(';') {
            continue;
        }
        let rest = statement.split("super::").nth(1).unwrap_or("").to_string();
        statement.clear();
        let names: Vec<String> = match rest.strip_prefix('{') {
            Some(group) => group.split([',', '}']).map(|s| s.trim().split("::").next().unwrap().to_string()).collect(),
            None => vec![rest.split("::").next().unwrap().trim_end_matches(';').to_string()],
        };
        out.extend(names.into_iter().filter(|n| siblings.contains(n)));
    }
    out
}

#[test]
fn no_import_circle_among_the_files_of_a_module() {
    fn dirs(dir: &Path, out: &mut Vec<PathBuf>) {
        out.push(dir.to_path_buf());
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() && p.file_name().is_some_and(|n| n != "tests") {
                dirs(&p, out);
            }
        }
    }
    let mut all = Vec::new();
    dirs(&src(), &mut all);
    for dir in all {
        let files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "rs") && p.file_stem().is_some_and(|s| s != "mod"))
            .collect();
        let names: BTreeSet<String> = files.iter().map(|p| p.file_stem().unwrap().to_string_lossy().into()).collect();
        let edges: Vec<(String, BTreeSet<String>)> = files
            .iter()
            .map(|p| {
                let name = p.file_stem().unwrap().to_string_lossy().into_owned();
                (name, sibling_imports(&std::fs::read_to_string(p).unwrap(), &names))
            })
            .collect();
        // Remove files that import no file left, or that no file left imports,
        // until nothing changes: what remains lies on (or between) circles.
        let mut left: Vec<(String, BTreeSet<String>)> = edges;
        loop {
            let names: BTreeSet<String> = left.iter().map(|(n, _)| n.clone()).collect();
            let imported: BTreeSet<String> =
                left.iter().flat_map(|(_, i)| i.iter().filter(|n| names.contains(*n)).cloned()).collect();
            let before = left.len();
            left.retain(|(n, imports)| imports.iter().any(|i| names.contains(i)) && imported.contains(n));
            if left.len() == before {
                break;
            }
        }
        let circle: Vec<String> = left.iter().map(|(n, i)| format!("{n} -> {i:?}")).collect();
        assert!(circle.is_empty(), "import circle among the files of {}: {}", dir.display(), circle.join("; "));
    }
}
