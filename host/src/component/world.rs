//! Deploy-time check that a component fits the `entity` world of
//! `wit/entity.wit`, so a component mneme cannot run is refused with the reason
//! instead of failing every command later.
//!
//! Versions: mneme implements `mneme:entity@0.2.0` ([`WIT_VERSION`], the Rust
//! SDK's) and still runs components built against `0.1.x` (`wit/v0.1`, e.g. the
//! Python, JavaScript and C examples): [`WitVersion`] names the world a
//! component's `handler` export belongs to, and the sandbox binds that world.
//! Within a world the component model's semver rule applies (for 0.x, the same
//! minor: `0.2.7` is `0.2.x`).
//!
//! Imports: mneme provides `mneme:entity/host` (and the type-only
//! `mneme:entity/types`) at those versions, nothing else. Refused, each named in
//! the error:
//!
//! * WASI capabilities (`wasi:filesystem`, `wasi:clocks`, `wasi:random`,
//!   `wasi:sockets`, `wasi:http`, ...): mneme gives guests no WASI;
//! * `mneme:entity` interfaces of a version mneme does not implement (`@0.3.0`,
//!   `@0.0.9`), or functions this host does not provide;
//! * anything else (another world's imports).
//!
//! One exception, [`INERT_WASI`]: the stdio, environment, exit and stream
//! interfaces that Rust's `wasm32-wasip2` standard library links into every
//! component, used or not (its panic, print and `std::env` paths). Refusing them
//! would refuse every Rust component; they are linked as traps instead, so a guest
//! that does call one (`println!`, `std::env::var`) fails that command with a
//! message naming the function. Python (componentize-py `--stub-wasi`),
//! JavaScript (ComponentizeJS with its WASI features disabled) and C without I/O
//! import no WASI at all.
//!
//! Exports: `mneme:entity/handler@0.1.x` or `@0.2.x` with all five functions.
//! Their types are checked by wasmtime when the component is linked.

use anyhow::bail;
use wasmtime::component::types::{self, ComponentItem};
use wasmtime::component::{Component, Linker, ResourceType};
use wasmtime::Engine;

/// The version of `wit/entity.wit` this host implements.
pub const WIT_VERSION: (u64, u64, u64) = (0, 2, 0);

/// The worlds mneme runs: a component's `handler` export names its world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WitVersion {
    /// `mneme:entity@0.1.x` (`wit/v0.1/entity.wit`): no `command-metadata.origin`.
    V0_1,
    /// `mneme:entity@0.2.x` (`wit/entity.wit`).
    V0_2,
}

impl WitVersion {
    /// Every world, oldest first, with its (major, minor).
    const ALL: [(WitVersion, (u64, u64)); 2] = [(WitVersion::V0_1, (0, 1)), (WitVersion::V0_2, (0, 2))];
}
const PACKAGE: &str = "mneme:entity";
/// Functions of `mneme:entity/host` this host provides.
const HOST_FUNCS: &[&str] = &["report-fault"];
/// Functions of `mneme:entity/handler` a component must export.
const HANDLER_FUNCS: &[&str] = &["describe", "empty-state", "handle-command", "apply-events", "on-recovery-completed"];
/// WASI interfaces (`package/interface`, any version) linked as traps rather than
/// refused: Rust's `wasm32-wasip2` standard library imports them in every
/// component. None of them reaches a file, clock, random source or socket.
pub const INERT_WASI: &[&str] = &[
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
];

const WASI_FIX: &str = "mneme gives guests no WASI; build without it, e.g. componentize-py's `--stub-wasi`, \
    or wasi-virt (in Rust: no std::fs, std::net, SystemTime::now, Instant::now or HashMap::new, whose \
    RandomState is seeded from wasi:random; use BTreeMap, and the time in the command's metadata)";

/// How mneme treats one import of a component.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ImportKind {
    /// `mneme:entity/host`, compatible version.
    Host,
    /// `mneme:entity/types`, compatible version (types only).
    Types,
    /// One of [`INERT_WASI`]: linked as traps.
    InertWasi,
    /// Any other WASI interface: refused.
    Wasi,
    /// A `mneme:entity` interface of an incompatible (or no) version: refused.
    WrongVersion,
    /// Anything else: refused.
    Unknown,
}

/// `ns:pkg/iface@version` → (`ns:pkg/iface`, `version`).
fn split_version(name: &str) -> (&str, Option<&str>) {
    match name.split_once('@') {
        Some((base, version)) => (base, Some(version)),
        None => (name, None),
    }
}

/// The world a version belongs to, if mneme implements it: semver-compatible with
/// one of [`WitVersion::ALL`] the way wasmtime matches names (for 0.x, the same
/// minor; no pre-release; build metadata ignored).
fn compatible(version: Option<&str>) -> Option<WitVersion> {
    let v = version?;
    let v = v.split_once('+').map_or(v, |(v, _build)| v);
    let parts: Vec<Option<u64>> = v.split('.').map(|p| p.parse().ok()).collect();
    let [Some(major), Some(minor), Some(_patch)] = parts[..] else { return None };
    WitVersion::ALL.iter().find_map(|&(world, (want_major, want_minor))| {
        let fits = if want_major == 0 { major == 0 && minor == want_minor } else { major == want_major };
        fits.then_some(world)
    })
}

fn classify(name: &str) -> ImportKind {
    let (base, version) = split_version(name);
    if base.starts_with("wasi:") {
        return if INERT_WASI.contains(&base) { ImportKind::InertWasi } else { ImportKind::Wasi };
    }
    let interface = base.strip_prefix(PACKAGE).and_then(|rest| rest.strip_prefix('/'));
    match interface {
        Some(iface @ ("host" | "types")) if compatible(version).is_some() => {
            if iface == "host" {
                ImportKind::Host
            } else {
                ImportKind::Types
            }
        }
        Some(_) if compatible(version).is_none() => ImportKind::WrongVersion,
        _ => ImportKind::Unknown,
    }
}

fn wit_version() -> String {
    let (a, b, c) = WIT_VERSION;
    format!("{a}.{b}.{c}")
}

/// The versions accepted, for messages: `0.1.x or 0.2.x`.
fn compatible_range() -> String {
    let ranges: Vec<String> = WitVersion::ALL
        .iter()
        .map(|(_, (a, b))| if *a == 0 { format!("{a}.{b}.x") } else { format!("{a}.x") })
        .collect();
    ranges.join(" or ")
}

fn func_names<'a>(engine: &'a Engine, item: &'a ComponentItem) -> Vec<&'a str> {
    match item {
        ComponentItem::ComponentInstance(i) => {
            i.exports(engine).filter(|(_, e)| matches!(e.ty, ComponentItem::ComponentFunc(_))).map(|(n, _)| n).collect()
        }
        _ => Vec::new(),
    }
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// Every reason `component` does not fit the `entity` world (empty when it fits),
/// and the world its `handler` export belongs to.
pub fn problems(engine: &Engine, component: &Component) -> (Vec<String>, Option<WitVersion>) {
    let ty = component.component_type();
    let mut problems = Vec::new();
    let mut wasi = Vec::new();
    let mut wrong_version = Vec::new();
    for (name, import) in ty.imports(engine) {
        match classify(name) {
            ImportKind::Host => {
                let unknown: Vec<String> = func_names(engine, &import.ty)
                    .into_iter()
                    .filter(|f| !HOST_FUNCS.contains(f))
                    .map(|f| format!("{name}#{f}"))
                    .collect();
                if !unknown.is_empty() {
                    problems.push(format!(
                        "imports {}, which this mneme does not provide (its `{PACKAGE}/host` has {}): build against \
                         the wit/entity.wit of this mneme ({PACKAGE}@{})",
                        quoted(&unknown),
                        quoted(&HOST_FUNCS.iter().map(|f| f.to_string()).collect::<Vec<_>>()),
                        wit_version()
                    ));
                }
            }
            ImportKind::Types | ImportKind::InertWasi => {}
            ImportKind::Wasi => wasi.push(name.to_string()),
            ImportKind::WrongVersion => wrong_version.push(name.to_string()),
            ImportKind::Unknown => problems.push(format!(
                "imports `{name}`, which mneme does not provide: an entity (world `entity` of {PACKAGE}@{}) may \
                 import only `{PACKAGE}/host`",
                wit_version()
            )),
        }
    }
    if !wrong_version.is_empty() {
        problems.insert(
            0,
            format!(
                "imports {}, but this mneme implements {PACKAGE}@{} (it accepts {}): build against the \
                 wit/entity.wit of this mneme",
                quoted(&wrong_version),
                wit_version(),
                compatible_range()
            ),
        );
    }
    if !wasi.is_empty() {
        problems.insert(0, format!("imports WASI: {}; {WASI_FIX}", quoted(&wasi)));
    }

    let exports: Vec<(&str, ComponentItem)> = ty.exports(engine).map(|(n, e)| (n, e.ty)).collect();
    let handler = exports.iter().find_map(|(name, item)| {
        let (base, version) = split_version(name);
        let world = compatible(version).filter(|_| base == format!("{PACKAGE}/handler"))?;
        Some((name, item, world))
    });
    let world = handler.map(|(_, _, world)| world);
    match handler {
        None => {
            let found: Vec<String> = exports.iter().map(|(n, _)| n.to_string()).collect();
            problems.push(format!(
                "does not export `{PACKAGE}/handler@{}` (the `entity` world's export); it exports {}",
                compatible_range(),
                if found.is_empty() { "nothing".to_string() } else { quoted(&found) }
            ));
        }
        Some((name, item, _)) => {
            let have = func_names(engine, item);
            let missing: Vec<String> =
                HANDLER_FUNCS.iter().filter(|f| !have.contains(f)).map(|f| f.to_string()).collect();
            if !missing.is_empty() {
                problems.push(format!("`{name}` lacks {}", quoted(&missing)));
            }
        }
    }
    (problems, world)
}

/// Refuse a component that does not fit the `entity` world, naming every reason;
/// else the world it was built against.
pub fn check(engine: &Engine, component: &Component) -> anyhow::Result<WitVersion> {
    match problems(engine, component) {
        (problems, Some(world)) if problems.is_empty() => Ok(world),
        (problems, _) => bail!("the component does not fit mneme's `entity` world: {}", problems.join("; ")),
    }
}

/// Host data that remembers which WASI function a guest called, for the fault's
/// message (the sandbox's `HostState`).
pub trait NotesWasiCalls: 'static {
    fn wasi_called(&mut self, function: String);
}

/// Define the component's [`INERT_WASI`] imports as functions that trap, naming
/// themselves, and its `mneme:entity/types` import (types only) if it asks for
/// another patch version than the linker's.
pub fn link_inert_imports<T: NotesWasiCalls>(
    engine: &Engine,
    component: &Component,
    linker: &mut Linker<T>,
) -> anyhow::Result<()> {
    let ty = component.component_type();
    for (name, import) in ty.imports(engine) {
        match classify(name) {
            ImportKind::InertWasi => {
                let ComponentItem::ComponentInstance(instance) = &import.ty else { continue };
                link_as_traps(engine, name, instance, linker)?;
            }
            ImportKind::Types => {
                linker.instance(name)?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn link_as_traps<T: NotesWasiCalls>(
    engine: &Engine,
    name: &str,
    instance: &types::ComponentInstance,
    linker: &mut Linker<T>,
) -> anyhow::Result<()> {
    let mut linked = linker.instance(name)?;
    for (item, export) in instance.exports(engine) {
        match export.ty {
            ComponentItem::ComponentFunc(_) => {
                let function = format!("{name}#{item}");
                linked.func_new(item, move |mut store, _, _, _| {
                    store.data_mut().wasi_called(function.clone());
                    wasmtime::bail!("the guest called `{function}`, which mneme does not provide")
                })?;
            }
            ComponentItem::Resource(_) => linked.resource(item, ResourceType::host::<()>(), |_, _| Ok(()))?,
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wit_version_is_the_one_in_wit_entity_wit() {
        let wit = include_str!("../../../wit/entity.wit");
        assert!(
            wit.contains(&format!("package {PACKAGE}@{};", wit_version())),
            "wit/entity.wit declares another version"
        );
    }

    #[test]
    fn the_earlier_world_is_kept_as_it_was() {
        let wit = include_str!("../../../wit/v0.1/entity.wit");
        assert!(wit.contains("package mneme:entity@0.1.0;"));
        assert!(!wit.contains("origin"), "0.1.0 has no origin");
    }

    #[test]
    fn mneme_interfaces_of_a_compatible_version_are_provided() {
        assert_eq!(classify("mneme:entity/host@0.1.0"), ImportKind::Host);
        assert_eq!(classify("mneme:entity/host@0.1.7"), ImportKind::Host);
        assert_eq!(classify("mneme:entity/host@0.1.2+build.5"), ImportKind::Host);
        assert_eq!(classify("mneme:entity/types@0.1.0"), ImportKind::Types);
        assert_eq!(classify("mneme:entity/host@0.2.0"), ImportKind::Host);
        assert_eq!(classify("mneme:entity/types@0.2.3"), ImportKind::Types);
    }

    #[test]
    fn each_version_belongs_to_its_world() {
        assert_eq!(compatible(Some("0.1.0")), Some(WitVersion::V0_1));
        assert_eq!(compatible(Some("0.1.9+b")), Some(WitVersion::V0_1));
        assert_eq!(compatible(Some("0.2.0")), Some(WitVersion::V0_2));
        assert_eq!(compatible(Some("0.2.4")), Some(WitVersion::V0_2));
        for v in [None, Some("0.3.0"), Some("0.0.9"), Some("1.2.0"), Some("0.2"), Some("0.2.0-rc1")] {
            assert_eq!(compatible(v), None, "{v:?}");
        }
        assert_eq!(compatible_range(), "0.1.x or 0.2.x");
    }

    #[test]
    fn mneme_interfaces_of_another_version_are_refused() {
        for name in [
            "mneme:entity/host@0.3.0",
            "mneme:entity/host@0.0.9",
            "mneme:entity/host@1.1.0",
            "mneme:entity/host@0.1.0-rc1",
            "mneme:entity/host",
            "mneme:entity/types@0.3.0",
            "mneme:entity/logging@0.3.0",
        ] {
            assert_eq!(classify(name), ImportKind::WrongVersion, "{name}");
        }
        // A compatible version of an interface this host does not have.
        assert_eq!(classify("mneme:entity/logging@0.1.0"), ImportKind::Unknown);
    }

    #[test]
    fn wasi_is_refused_except_what_rust_std_always_links() {
        for name in [
            "wasi:filesystem/types@0.2.6",
            "wasi:clocks/wall-clock@0.2.0",
            "wasi:random/random@0.2.6",
            "wasi:sockets/tcp@0.2.0",
            "wasi:http/types@0.2.0",
            "wasi:cli/run@0.2.0",
        ] {
            assert_eq!(classify(name), ImportKind::Wasi, "{name}");
        }
        for name in
            ["wasi:cli/stderr@0.2.6", "wasi:io/streams@0.2.0", "wasi:cli/environment@0.2.6", "wasi:cli/exit@0.2.6"]
        {
            assert_eq!(classify(name), ImportKind::InertWasi, "{name}");
        }
    }

    #[test]
    fn other_imports_are_refused() {
        for name in ["foo:bar/baz@1.0.0", "report-fault", "mneme:entityx/host@0.1.0", "mneme:other/host@0.1.0"] {
            assert_eq!(classify(name), ImportKind::Unknown, "{name}");
        }
    }
}
