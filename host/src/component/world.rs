//! Deploy-time check that a component fits the world mneme runs it in — the
//! `entity` world of `wit/entity.wit`, or the `projection` world of
//! `wit/projection.wit` ([`WorldSpec`]) — so a component mneme cannot run is
//! refused with the reason instead of failing every call later.
//!
//! Versions: mneme implements `mneme:entity@0.2.0` ([`WIT_VERSION`], the Rust
//! SDK's and the Python and JavaScript examples') and still runs entities built
//! against `0.1.x` (`wit/v0.1`, e.g. the C example): [`WitVersion`] names the world a
//! component's `handler` export belongs to, and the sandbox binds that world.
//! Projections: `mneme:projection@0.1.x`. Within a world the component model's
//! semver rule applies (for 0.x, the same minor: `0.2.7` is `0.2.x`).
//!
//! Imports: mneme provides the world's host interfaces (`mneme:entity/host`;
//! `mneme:projection/view` and `mneme:projection/host`) and its type-only
//! `types` interface at those versions, nothing else. Refused, each named in the
//! error:
//!
//! * WASI capabilities (`wasi:filesystem`, `wasi:clocks`, `wasi:random`,
//!   `wasi:sockets`, `wasi:http`, ...): mneme gives guests no WASI;
//! * interfaces of the world's package of a version mneme does not implement
//!   (`@0.3.0`, `@0.0.9`), or functions this host does not provide;
//! * anything else (another world's imports, e.g. an entity deployed as a projection).
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
//! Exports: the world's `handler` interface (`mneme:entity/handler@0.1.x` or
//! `@0.2.x` with all five functions, `mneme:projection/handler@0.1.x` with both).
//! Their types are checked by wasmtime when the component is linked. The optional
//! fast paths ([`optional_export`]) are found by name and type-checked when an
//! instance is made.

use anyhow::bail;
use wasmtime::component::types::{self, ComponentItem};
use wasmtime::component::{Component, ComponentExportIndex, Linker, ResourceType};
use wasmtime::Engine;

/// The version of `wit/entity.wit` this host implements.
pub const WIT_VERSION: (u64, u64, u64) = (0, 2, 0);

/// The entity worlds mneme runs: a component's `handler` export names its world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WitVersion {
    /// `mneme:entity@0.1.x` (`wit/v0.1/entity.wit`): no `command-metadata.origin`.
    V0_1,
    /// `mneme:entity@0.2.x` (`wit/entity.wit`).
    V0_2,
}

impl WitVersion {
    /// The entity world of a (major, minor) that [`ENTITY`] accepts.
    fn of(version: (u64, u64)) -> WitVersion {
        if version == (0, 1) {
            WitVersion::V0_1
        } else {
            WitVersion::V0_2
        }
    }
}

/// What one world of mneme's WIT asks of a component.
#[derive(Debug)]
pub struct WorldSpec {
    /// The world's name, e.g. `entity`.
    pub world: &'static str,
    /// An article and a noun for messages: "an entity", "a projection".
    pub what: &'static str,
    /// The WIT package, e.g. `mneme:entity`.
    pub package: &'static str,
    /// The package version this host implements (the newest).
    pub version: (u64, u64, u64),
    /// Every (major, minor) this host runs, oldest first.
    pub accepted: &'static [(u64, u64)],
    /// The WIT file, for messages.
    pub wit_file: &'static str,
    /// Interfaces the host provides, with their functions.
    pub imports: &'static [(&'static str, &'static [&'static str])],
    /// Functions of the `handler` interface a component must export.
    pub handler_funcs: &'static [&'static str],
}

/// The `entity` world of `wit/entity.wit` (and of `wit/v0.1/entity.wit`).
pub const ENTITY: WorldSpec = WorldSpec {
    world: "entity",
    what: "an entity",
    package: "mneme:entity",
    version: WIT_VERSION,
    accepted: &[(0, 1), (0, 2)],
    wit_file: "wit/entity.wit",
    imports: &[("host", HOST_FUNCS)],
    handler_funcs: HANDLER_FUNCS,
};

/// The `projection` world of `wit/projection.wit`.
pub const PROJECTION: WorldSpec = WorldSpec {
    world: "projection",
    what: "a projection",
    package: "mneme:projection",
    version: (0, 1, 1),
    accepted: &[(0, 1)],
    wit_file: "wit/projection.wit",
    imports: &[("view", &["get"]), ("host", &["report-fault"])],
    handler_funcs: &["describe", "handle-events"],
};

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
    /// One of the world's host interfaces (`mneme:entity/host`), compatible version.
    Host(&'static [&'static str]),
    /// The world's `types` interface, compatible version (types only).
    Types,
    /// One of [`INERT_WASI`]: linked as traps.
    InertWasi,
    /// Any other WASI interface: refused.
    Wasi,
    /// An interface of the world's package of an incompatible (or no) version: refused.
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

/// The (major, minor) of the world's versions that `version` belongs to, if
/// mneme implements it: semver-compatible with one of [`WorldSpec::accepted`]
/// the way wasmtime matches names (for 0.x, the same minor; no pre-release;
/// build metadata ignored).
fn compatible(spec: &WorldSpec, version: Option<&str>) -> Option<(u64, u64)> {
    let v = version?;
    let v = v.split_once('+').map_or(v, |(v, _build)| v);
    let parts: Vec<Option<u64>> = v.split('.').map(|p| p.parse().ok()).collect();
    let [Some(major), Some(minor), Some(_patch)] = parts[..] else { return None };
    spec.accepted.iter().copied().find(|&(want_major, want_minor)| {
        if want_major == 0 {
            major == 0 && minor == want_minor
        } else {
            major == want_major
        }
    })
}

fn classify(spec: &WorldSpec, name: &str) -> ImportKind {
    let (base, version) = split_version(name);
    if base.starts_with("wasi:") {
        return if INERT_WASI.contains(&base) { ImportKind::InertWasi } else { ImportKind::Wasi };
    }
    let interface = base.strip_prefix(spec.package).and_then(|rest| rest.strip_prefix('/'));
    match interface {
        Some("types") if compatible(spec, version).is_some() => ImportKind::Types,
        Some(iface) if compatible(spec, version).is_some() => match spec.imports.iter().find(|(i, _)| *i == iface) {
            Some((_, funcs)) => ImportKind::Host(funcs),
            None => ImportKind::Unknown,
        },
        Some(_) => ImportKind::WrongVersion,
        None => ImportKind::Unknown,
    }
}

fn wit_version(spec: &WorldSpec) -> String {
    let (a, b, c) = spec.version;
    format!("{a}.{b}.{c}")
}

/// The versions accepted, for messages: `0.1.x or 0.2.x`.
fn compatible_range(spec: &WorldSpec) -> String {
    let ranges: Vec<String> =
        spec.accepted.iter().map(|(a, b)| if *a == 0 { format!("{a}.{b}.x") } else { format!("{a}.x") }).collect();
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

/// Every reason `component` does not fit the world of `spec` (empty when it
/// fits), and the (major, minor) of the world its `handler` export belongs to.
pub fn problems(spec: &WorldSpec, engine: &Engine, component: &Component) -> (Vec<String>, Option<(u64, u64)>) {
    let package = spec.package;
    let ty = component.component_type();
    let mut problems = Vec::new();
    let mut wasi = Vec::new();
    let mut wrong_version = Vec::new();
    for (name, import) in ty.imports(engine) {
        match classify(spec, name) {
            ImportKind::Host(funcs) => {
                let unknown: Vec<String> = func_names(engine, &import.ty)
                    .into_iter()
                    .filter(|f| !funcs.contains(f))
                    .map(|f| format!("{name}#{f}"))
                    .collect();
                if !unknown.is_empty() {
                    let (base, _) = split_version(name);
                    problems.push(format!(
                        "imports {}, which this mneme does not provide (its `{base}` has {}): build against the {} \
                         of this mneme ({package}@{})",
                        quoted(&unknown),
                        quoted(&funcs.iter().map(|f| f.to_string()).collect::<Vec<_>>()),
                        spec.wit_file,
                        wit_version(spec)
                    ));
                }
            }
            ImportKind::Types | ImportKind::InertWasi => {}
            ImportKind::Wasi => wasi.push(name.to_string()),
            ImportKind::WrongVersion => wrong_version.push(name.to_string()),
            ImportKind::Unknown => {
                let allowed: Vec<String> = spec.imports.iter().map(|(i, _)| format!("{package}/{i}")).collect();
                problems.push(format!(
                    "imports `{name}`, which mneme does not provide: {} (world `{}` of {package}@{}) may import only {}",
                    spec.what,
                    spec.world,
                    wit_version(spec),
                    quoted(&allowed)
                ))
            }
        }
    }
    if !wrong_version.is_empty() {
        problems.insert(
            0,
            format!(
                "imports {}, but this mneme implements {package}@{} (it accepts {}): build against the {} of this \
                 mneme",
                quoted(&wrong_version),
                wit_version(spec),
                compatible_range(spec),
                spec.wit_file
            ),
        );
    }
    if !wasi.is_empty() {
        problems.insert(0, format!("imports WASI: {}; {WASI_FIX}", quoted(&wasi)));
    }

    let exports: Vec<(&str, ComponentItem)> = ty.exports(engine).map(|(n, e)| (n, e.ty)).collect();
    let handler = exports.iter().find_map(|(name, item)| {
        let (base, version) = split_version(name);
        let world = compatible(spec, version).filter(|_| base == format!("{package}/handler"))?;
        Some((name, item, world))
    });
    let world = handler.map(|(_, _, world)| world);
    match handler {
        None => {
            let found: Vec<String> = exports.iter().map(|(n, _)| n.to_string()).collect();
            problems.push(format!(
                "does not export `{package}/handler@{}` (the `{}` world's export); it exports {}",
                compatible_range(spec),
                spec.world,
                if found.is_empty() { "nothing".to_string() } else { quoted(&found) }
            ));
        }
        Some((name, item, _)) => {
            let have = func_names(engine, item);
            let missing: Vec<String> =
                spec.handler_funcs.iter().filter(|f| !have.contains(f)).map(|f| f.to_string()).collect();
            if !missing.is_empty() {
                problems.push(format!("`{name}` lacks {}", quoted(&missing)));
            }
        }
    }
    (problems, world)
}

/// Refuse a component that does not fit the world of `spec`, naming every
/// reason; else the (major, minor) of the world it was built against.
pub fn check(spec: &WorldSpec, engine: &Engine, component: &Component) -> anyhow::Result<(u64, u64)> {
    match problems(spec, engine, component) {
        (problems, Some(world)) if problems.is_empty() => Ok(world),
        (problems, _) => bail!("the component does not fit mneme's `{}` world: {}", spec.world, problems.join("; ")),
    }
}

/// [`check`] against the `entity` world: the entity world it was built against.
pub fn check_entity(engine: &Engine, component: &Component) -> anyhow::Result<WitVersion> {
    check(&ENTITY, engine, component).map(WitVersion::of)
}

/// Whether a component exports a `projection` world's handler (of any version): a
/// components directory holds entities and projections side by side.
pub fn exports_projection(engine: &Engine, component: &Component) -> bool {
    let handler = format!("{}/handler", PROJECTION.package);
    component.component_type().exports(engine).any(|(name, _)| split_version(name).0 == handler)
}

/// Where a component exports `{package}/{interface}@{major.minor}.x#{function}`
/// of `spec`'s world at the version this host implements: an optional fast path
/// (`wit/entity.wit`: `replay#apply-event-batch` for recovery,
/// `decide#handle-command-and-apply` for commands; `wit/projection.wit`:
/// `feed#handle-event-batch`), if it does; its type is checked when the instance
/// is made.
pub fn optional_export(
    spec: &WorldSpec,
    engine: &Engine,
    component: &Component,
    interface: &str,
    function: &str,
) -> Option<ComponentExportIndex> {
    let ty = component.component_type();
    let wanted = format!("{}/{interface}", spec.package);
    let current = (spec.version.0, spec.version.1);
    let name = ty.exports(engine).map(|(name, _)| name).find(|name| {
        let (base, version) = split_version(name);
        base == wanted && compatible(spec, version) == Some(current)
    })?;
    let interface = component.get_export_index(None, name)?;
    component.get_export_index(Some(&interface), function)
}

/// Host data that remembers which WASI function a guest called, for the fault's
/// message (the sandbox's `HostState`).
pub trait NotesWasiCalls: 'static {
    fn wasi_called(&mut self, function: String);
}

/// Define the component's [`INERT_WASI`] imports as functions that trap, naming
/// themselves, and its `types` import (types only) if it asks for another patch
/// version than the linker's.
pub fn link_inert_imports<T: NotesWasiCalls>(
    spec: &WorldSpec,
    engine: &Engine,
    component: &Component,
    linker: &mut Linker<T>,
) -> anyhow::Result<()> {
    let ty = component.component_type();
    for (name, import) in ty.imports(engine) {
        match classify(spec, name) {
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
            wit.contains(&format!("package {}@{};", ENTITY.package, wit_version(&ENTITY))),
            "wit/entity.wit declares another version"
        );
        let wit = include_str!("../../../wit/projection.wit");
        assert!(
            wit.contains(&format!("package {}@{};", PROJECTION.package, wit_version(&PROJECTION))),
            "wit/projection.wit declares another version"
        );
        for (iface, funcs) in PROJECTION.imports.iter().chain(ENTITY.imports) {
            for f in *funcs {
                let wit = if PROJECTION.imports.iter().any(|(i, _)| i == iface) {
                    include_str!("../../../wit/projection.wit")
                } else {
                    include_str!("../../../wit/entity.wit")
                };
                assert!(wit.contains(&format!("interface {iface} {{")) && wit.contains(&format!("{f}: func(")));
            }
        }
    }

    #[test]
    fn each_world_provides_its_own_interfaces_only() {
        let p = |name| classify(&PROJECTION, name);
        assert_eq!(p("mneme:projection/view@0.1.0"), ImportKind::Host(&["get"]));
        assert_eq!(p("mneme:projection/host@0.1.3"), ImportKind::Host(&["report-fault"]));
        assert_eq!(p("mneme:projection/types@0.1.0"), ImportKind::Types);
        assert_eq!(p("mneme:projection/view@0.2.0"), ImportKind::WrongVersion);
        assert_eq!(p("mneme:entity/host@0.2.0"), ImportKind::Unknown, "an entity is not a projection");
        assert_eq!(classify(&ENTITY, "mneme:projection/view@0.1.0"), ImportKind::Unknown);
        assert_eq!(p("wasi:random/random@0.2.6"), ImportKind::Wasi);
        assert_eq!(p("wasi:cli/stderr@0.2.6"), ImportKind::InertWasi);
        assert_eq!(compatible_range(&PROJECTION), "0.1.x");
    }

    #[test]
    fn the_earlier_world_is_kept_as_it_was() {
        let wit = include_str!("../../../wit/v0.1/entity.wit");
        assert!(wit.contains("package mneme:entity@0.1.0;"));
        assert!(!wit.contains("origin"), "0.1.0 has no origin");
    }

    #[test]
    fn mneme_interfaces_of_a_compatible_version_are_provided() {
        let classify = |name| classify(&ENTITY, name);
        assert_eq!(classify("mneme:entity/host@0.1.0"), ImportKind::Host(HOST_FUNCS));
        assert_eq!(classify("mneme:entity/host@0.1.7"), ImportKind::Host(HOST_FUNCS));
        assert_eq!(classify("mneme:entity/host@0.1.2+build.5"), ImportKind::Host(HOST_FUNCS));
        assert_eq!(classify("mneme:entity/types@0.1.0"), ImportKind::Types);
        assert_eq!(classify("mneme:entity/host@0.2.0"), ImportKind::Host(HOST_FUNCS));
        assert_eq!(classify("mneme:entity/types@0.2.3"), ImportKind::Types);
    }

    #[test]
    fn each_version_belongs_to_its_world() {
        let world = |v| compatible(&ENTITY, v).map(WitVersion::of);
        assert_eq!(world(Some("0.1.0")), Some(WitVersion::V0_1));
        assert_eq!(world(Some("0.1.9+b")), Some(WitVersion::V0_1));
        assert_eq!(world(Some("0.2.0")), Some(WitVersion::V0_2));
        assert_eq!(world(Some("0.2.4")), Some(WitVersion::V0_2));
        for v in [None, Some("0.3.0"), Some("0.0.9"), Some("1.2.0"), Some("0.2"), Some("0.2.0-rc1")] {
            assert_eq!(world(v), None, "{v:?}");
        }
        assert_eq!(compatible_range(&ENTITY), "0.1.x or 0.2.x");
    }

    #[test]
    fn mneme_interfaces_of_another_version_are_refused() {
        let classify = |name| classify(&ENTITY, name);
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
        let classify = |name| classify(&ENTITY, name);
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
        let classify = |name| classify(&ENTITY, name);
        for name in ["foo:bar/baz@1.0.0", "report-fault", "mneme:entityx/host@0.1.0", "mneme:other/host@0.1.0"] {
            assert_eq!(classify(name), ImportKind::Unknown, "{name}");
        }
    }
}
