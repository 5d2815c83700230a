//! `mneme new --lang rust|python|js|c NAME`: a buildable entity project.
//!
//! Every project holds the entity (a counter that can be closed, the same in
//! every language), `build.sh` (making `NAME.wasm`, which `mneme deploy` takes as
//! is), a test through `mneme-testkit`, a README and a copy of the WIT contract.
//! The templates live in `host/templates/`; the README's and the languages
//! guide's code snippets are cut from them (checked by `tests/tests/docs.rs`), and
//! `scripts/test-scaffolds.sh` builds and tests one project per language.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

const WIT: &str = include_str!("../../wit/entity.wit");
const LOCK: &str = include_str!("../../Cargo.lock");
const JSON_H: &str = include_str!("../../examples/bank-account-c/json.h");
const PROFILES: &str = include_str!("../templates/common/profiles.toml");
const TEST_CARGO: &str = include_str!("../templates/common/test-Cargo.toml");
const TEST: &str = include_str!("../templates/common/test.rs");
const README: &str = include_str!("../templates/common/README.md");

/// The languages `mneme new` writes.
pub const LANGUAGES: &[&str] = &["rust", "python", "js", "c"];

/// Names derived from the entity type `name`.
pub struct Names {
    /// The entity type (`shopping-cart`).
    pub name: String,
    /// A module or crate identifier (`shopping_cart`).
    pub module: String,
    /// A type name (`ShoppingCart`).
    pub camel: String,
}

impl Names {
    pub fn new(name: &str) -> anyhow::Result<Names> {
        crate::names::validate_entity_type(name).map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            name.starts_with(|c: char| c.is_ascii_lowercase()),
            "the name must start with a letter (it also names a module)"
        );
        let module = name.replace('-', "_");
        let camel = module
            .split('_')
            .filter(|p| !p.is_empty())
            .map(|p| p[..1].to_ascii_uppercase() + &p[1..])
            .collect::<String>();
        Ok(Names { name: name.to_string(), module, camel })
    }

    /// `template` with its placeholders filled.
    pub fn fill(&self, template: &str, mneme_src: &str) -> String {
        template
            .replace("{{name}}", &self.name)
            .replace("{{module}}", &self.module)
            .replace("{{crate}}", &self.module)
            .replace("{{Struct}}", &self.camel)
            .replace("{{mneme_src}}", mneme_src)
    }
}

/// The files of a new project, as (relative path, contents, executable).
pub fn files(lang: &str, names: &Names, mneme_src: &str) -> anyhow::Result<Vec<(String, String, bool)>> {
    let fill = |t: &str| names.fill(t, mneme_src);
    let n = &names.name;
    let m = &names.module;
    let test_project = |files: &mut Vec<(String, String, bool)>| {
        files.push(("test/Cargo.toml".into(), fill(&format!("{TEST_CARGO}{PROFILES}")), false));
        files.push(("test/Cargo.lock".into(), LOCK.to_string(), false));
        files.push(("test/tests/entity.rs".into(), fill(&TEST.replace("{{wasm_path}}", "/../{{name}}.wasm")), false));
    };
    let readme = |language: &str, test_command: &str, list: &str| {
        fill(
            &README
                .replace("{{language}}", language)
                .replace("{{test_command}}", test_command)
                .replace("{{files}}", list),
        )
    };
    let mut files = Vec::new();
    match lang {
        "rust" => {
            files.push((
                "Cargo.toml".into(),
                fill(&format!("{}{PROFILES}", include_str!("../templates/rust/Cargo.toml"))),
                false,
            ));
            files.push(("Cargo.lock".into(), LOCK.to_string(), false));
            files.push(("src/lib.rs".into(), fill(include_str!("../templates/rust/lib.rs")), false));
            let native = format!(
                "\n#[test]\nfn natively_too() {{\n    let mut kit = TestKit::native::<{m}::{}>();\n    \
                 assert_eq!(kit.run(json!({{\"type\":\"Increment\",\"by\":2}})).reply_json(), json!({{\"value\":2}}));\n    \
                 assert!(kit.run(json!({{\"type\":\"Frobnicate\"}})).is_malformed());\n    kit.restart();\n}}\n",
                names.camel
            );
            files.push((
                "tests/entity.rs".into(),
                fill(&TEST.replace("{{wasm_path}}", "/{{name}}.wasm")) + &native,
                false,
            ));
            files.push(("build.sh".into(), fill(include_str!("../templates/rust/build.sh")), true));
            files.push((".gitignore".into(), "/target\n/*.wasm\n".into(), false));
            files.push((
                "README.md".into(),
                readme("Rust", "cargo test", "`src/lib.rs` (the entity), `tests/entity.rs`"),
                false,
            ));
        }
        "python" => {
            anyhow::ensure!(m != "entity", "a Python entity may not be called `entity` (the WIT world's name)");
            files.push((format!("{m}.py"), fill(include_str!("../templates/python/entity.py")), false));
            files.push(("build.sh".into(), fill(include_str!("../templates/python/build.sh")), true));
            test_project(&mut files);
            files.push((".gitignore".into(), "/*.wasm\n/test/target\n__pycache__/\n".into(), false));
            let list = format!("`{m}.py` (the entity), `wit/entity.wit`, `test/tests/entity.rs`");
            files.push(("README.md".into(), readme("Python", "(cd test && cargo test)", &list), false));
        }
        "js" => {
            files.push((format!("{n}.js"), fill(include_str!("../templates/js/entity.js")), false));
            files.push(("build.mjs".into(), fill(include_str!("../templates/js/build.mjs")), false));
            files.push(("build.sh".into(), fill(include_str!("../templates/js/build.sh")), true));
            files.push(("package.json".into(), fill(include_str!("../templates/js/package.json")), false));
            test_project(&mut files);
            files.push((".gitignore".into(), "/*.wasm\n/node_modules\n/test/target\n".into(), false));
            let list = format!("`{n}.js` (the entity), `build.mjs`, `wit/entity.wit`, `test/tests/entity.rs`");
            files.push(("README.md".into(), readme("JavaScript", "(cd test && cargo test)", &list), false));
        }
        "c" => {
            files.push((format!("{m}.c"), fill(include_str!("../templates/c/entity.c")), false));
            files.push(("json.h".into(), JSON_H.to_string(), false));
            files.push(("build.sh".into(), fill(include_str!("../templates/c/build.sh")), true));
            test_project(&mut files);
            files.push((".gitignore".into(), "/*.wasm\n/build\n/test/target\n".into(), false));
            let list = format!("`{m}.c` (the entity), `json.h`, `wit/entity.wit`, `test/tests/entity.rs`");
            files.push(("README.md".into(), readme("C", "(cd test && cargo test)", &list), false));
        }
        other => anyhow::bail!("unknown language `{other}`: one of {}", LANGUAGES.join(", ")),
    }
    if lang != "rust" {
        files.push(("wit/entity.wit".into(), WIT.to_string(), false));
    }
    Ok(files)
}

/// The sources built into this binary (see `host/build.rs`): the SDK, the
/// testkit and the host crate, with the workspace files they need.
const SOURCES: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/sources.rs"));

/// Where mneme's sources are (for the SDK and the testkit): `explicit`, else
/// `$MNEME_SRC`, else the sources built into this binary, written out once under
/// `$XDG_DATA_HOME/mneme/src/VERSION-HASH` (default `~/.local/share`), so a
/// project builds against the very SDK and testkit of the `mneme` that made it.
pub fn mneme_src(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let given = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("MNEME_SRC").filter(|s| !s.is_empty()).map(PathBuf::from));
    let Some(candidate) = given else { return built_in_sources() };
    let src = candidate.canonicalize().unwrap_or(candidate);
    anyhow::ensure!(
        src.join("guest-sdk/Cargo.toml").exists() && src.join("testkit/Cargo.toml").exists(),
        "{} is not a mneme source tree (no guest-sdk/ and testkit/): pass --mneme-src PATH, or neither it nor MNEME_SRC to use the sources built into mneme",
        src.display()
    );
    Ok(src)
}

/// The built-in sources, written out (once: a complete copy is never written again).
fn built_in_sources() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").context("neither XDG_DATA_HOME nor HOME is set")?)
            .join(".local/share"),
    };
    write_sources(&base)
}

/// The built-in sources under `base/mneme/src/VERSION-HASH`.
fn write_sources(base: &Path) -> anyhow::Result<PathBuf> {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    for (path, bytes) in SOURCES {
        hash.update((path.len() as u64).to_le_bytes());
        hash.update(path.as_bytes());
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    }
    let id = hex::encode(&hash.finalize()[..6]);
    let dir = base.join("mneme/src").join(format!("{}-{id}", env!("CARGO_PKG_VERSION")));
    // Written last: its presence says the copy is complete.
    let complete = dir.join(".complete");
    if complete.exists() {
        return Ok(dir);
    }
    let parent = dir.parent().unwrap();
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    // Written beside, then renamed: a copy is never seen half written.
    let partial = tempfile::Builder::new().prefix(".partial-").tempdir_in(parent)?;
    for (path, bytes) in SOURCES {
        let dest = partial.path().join(path);
        std::fs::create_dir_all(dest.parent().unwrap())?;
        let bytes = if *path == "Cargo.toml" { workspace_manifest(bytes)?.into_bytes() } else { bytes.to_vec() };
        std::fs::write(&dest, bytes).with_context(|| format!("writing {}", dest.display()))?;
    }
    std::fs::write(partial.path().join(".complete"), b"")?;
    match std::fs::rename(partial.path(), &dir) {
        Ok(()) => Ok(dir),
        // Another `mneme new` wrote it meanwhile: theirs is the same (ours is removed).
        Err(_) if complete.exists() => Ok(dir),
        Err(e) => Err(e).with_context(|| format!("moving the sources to {}", dir.display())),
    }
}

/// The workspace's `Cargo.toml` with only the crates a project uses as members.
fn workspace_manifest(original: &[u8]) -> anyhow::Result<String> {
    let mut manifest: toml::Table = std::str::from_utf8(original)?.parse()?;
    let workspace = manifest.get_mut("workspace").and_then(|w| w.as_table_mut()).context("no [workspace]")?;
    let members = ["host", "guest-sdk", "testkit"].map(|m| toml::Value::String(m.into()));
    workspace.insert("members".into(), toml::Value::Array(members.to_vec()));
    workspace.remove("default-members");
    let header = "# mneme's workspace, as built into the `mneme` binary that wrote it out (`mneme new`).\n\n";
    Ok(header.to_string() + &toml::to_string(&manifest)?)
}

/// Write a new project for `name` in `lang` into `dir` (which must not exist).
pub fn create(lang: &str, name: &str, dir: &Path, mneme_src: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let names = Names::new(name)?;
    anyhow::ensure!(!dir.exists(), "{} exists already: choose another name, or --dir PATH", dir.display());
    let src = mneme_src.to_string_lossy().into_owned();
    let mut written = Vec::new();
    for (rel, text, executable) in files(lang, &names, &src)? {
        let path = dir.join(&rel);
        std::fs::create_dir_all(path.parent().unwrap())?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        #[cfg(unix)]
        if executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_files_for_every_language() {
        let n = Names::new("shopping-cart").unwrap();
        assert_eq!((n.module.as_str(), n.camel.as_str()), ("shopping_cart", "ShoppingCart"));
        assert!(Names::new("Cart").is_err() && Names::new("9cart").is_err());
        for lang in LANGUAGES {
            let files = files(lang, &n, "/src/mneme").unwrap();
            assert!(files.iter().any(|(p, _, x)| p == "build.sh" && *x), "{lang}");
            for (path, text, _) in &files {
                assert!(!text.contains("{{"), "{lang}: {path} keeps a placeholder");
            }
        }
        assert!(files("cobol", &n, "/x").is_err());
        assert!(mneme_src(Some(Path::new("/"))).unwrap_err().to_string().contains("is not a mneme source tree"));
        assert!(files("python", &Names::new("entity").unwrap(), "/x").is_err());
    }

    #[test]
    fn the_built_in_sources_are_the_workspace_s_and_are_written_once() {
        let base = tempfile::tempdir().unwrap();
        let dir = write_sources(base.path()).unwrap();
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for rel in ["guest-sdk/src/lib.rs", "testkit/src/lib.rs", "host/src/lib.rs", "wit/entity.wit", "Cargo.lock"] {
            let theirs = std::fs::read(workspace.join(rel)).unwrap();
            assert_eq!(std::fs::read(dir.join(rel)).unwrap(), theirs, "{rel} differs from the workspace's");
        }
        let manifest: toml::Table = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap().parse().unwrap();
        let members = manifest["workspace"]["members"].as_array().unwrap();
        assert_eq!(members.len(), 3);
        assert!(manifest["workspace"].get("default-members").is_none());
        assert!(manifest["workspace"]["dependencies"].get("mneme-sdk").is_some());
        // Once written, reused as it is.
        let marker = std::fs::metadata(dir.join(".complete")).unwrap().modified().unwrap();
        assert_eq!(write_sources(base.path()).unwrap(), dir);
        assert_eq!(std::fs::metadata(dir.join(".complete")).unwrap().modified().unwrap(), marker);
        // Nothing half written is left beside it.
        let beside: Vec<_> = std::fs::read_dir(dir.parent().unwrap()).unwrap().collect();
        assert_eq!(beside.len(), 1);
    }
}
