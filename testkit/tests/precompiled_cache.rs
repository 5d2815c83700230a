//! A component's compiled code is kept across test runs (in
//! `$XDG_CACHE_HOME/mneme/testkit`), the newest 16 entries: the next run of a
//! Python or JavaScript entity's tests does not compile it again.
//! (Its own test binary: it sets `XDG_CACHE_HOME` for the whole process.)

use std::time::{Duration, SystemTime};

use mneme_testkit::{built_component, TestKit};

#[test]
fn compiled_code_is_kept_across_runs_and_the_cache_stays_bounded() {
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("XDG_CACHE_HOME", home.path());
    let cache = home.path().join("mneme/testkit");
    std::fs::create_dir_all(&cache).unwrap();
    // 20 entries of earlier runs, older than anything written now.
    let long_ago = SystemTime::now() - Duration::from_secs(3600);
    for i in 0..20 {
        let f = std::fs::File::create(cache.join(format!("old-{i:02}.cwasm"))).unwrap();
        f.set_modified(long_ago + Duration::from_secs(i)).unwrap();
    }

    let mut kit = TestKit::wasm(built_component("bank-account")).unwrap();
    assert_eq!(kit.run(serde_json::json!({"type": "CreateAccount"})).manifests(), ["AccountCreated"]);
    let names: Vec<String> =
        std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let fresh: Vec<&String> = names.iter().filter(|n| !n.starts_with("old-")).collect();
    assert_eq!(fresh.len(), 1, "the component's compiled code, kept: {names:?}");
    assert!(fresh[0].ends_with(".cwasm"));
    // Pruned when the kit started (before its own entry was written): the 16 newest old ones.
    assert_eq!(names.len(), 17, "{names:?}");
    assert!(!names.iter().any(|n| n == "old-00.cwasm" || n == "old-03.cwasm"), "the oldest go first: {names:?}");
}
