//! Guest plugins built from source for the host's tests.
//!
//! The `plugins/` workspace is built once per test run for `wasm32-wasip2`
//! (release, as tenants would) into `<host target dir>/guests`. Test modules
//! list the guests they exercise in a `TESTED` list; `every_guest_has_a_host_test`
//! fails the run when a crate under `plugins/examples` or `plugins/hostile` is
//! in none of them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Guests exercised by host tests, per test module.
const TESTED: &[&[&str]] = &[
    crate::plugin_runtime::TESTED,
    crate::plugins_bus::TESTED,
    crate::openapi::conformance::TESTED,
    crate::egress::TESTED,
    crate::targets::TESTED,
];

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The host's target dir: the test binary lives in `<target>/debug/deps/`.
pub fn host_target_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_owned()
}

fn ensure_wasm_target() {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .unwrap();
    let sysroot = String::from_utf8(sysroot.stdout).unwrap();
    let lib = Path::new(sysroot.trim()).join("lib/rustlib/wasm32-wasip2");
    if !lib.exists() {
        let status = Command::new("rustup")
            .args(["target", "add", "wasm32-wasip2"])
            .status()
            .unwrap();
        assert!(status.success(), "rustup target add wasm32-wasip2 failed");
    }
}

/// Builds the plugins workspace (once) and returns its wasm output dir.
fn built() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        ensure_wasm_target();
        let target_dir = host_target_dir().join("guests");
        let output = Command::new(env!("CARGO"))
            .args(["build", "--target", "wasm32-wasip2", "--release"])
            .current_dir(repo_root().join("plugins"))
            .env("CARGO_TARGET_DIR", &target_dir)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "building the guest plugins failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        target_dir.join("wasm32-wasip2").join("release")
    })
}

/// The component of guest crate `name` (e.g. `amount-filter`, `spin`).
pub fn guest(name: &str) -> PathBuf {
    assert!(
        TESTED.iter().any(|list| list.contains(&name)),
        "guest `{name}` is used by a test but missing from its module's TESTED list"
    );
    let path = built().join(format!("{}.wasm", lib_name(name)));
    assert!(
        path.exists(),
        "no component for guest `{name}` at {}",
        path.display()
    );
    path
}

/// The library name of the guest crate in directory `name` (e.g. `spin` is
/// package `hostile-spin`, built as `hostile_spin.wasm`).
fn lib_name(name: &str) -> String {
    for group in ["examples", "hostile"] {
        let manifest = repo_root()
            .join("plugins")
            .join(group)
            .join(name)
            .join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let manifest: toml::Table = text.parse().unwrap();
        let lib = manifest.get("lib").and_then(|l| l.get("name"));
        let package = manifest.get("package").and_then(|p| p.get("name"));
        let name = lib.or(package).and_then(|n| n.as_str()).unwrap();
        return name.replace('-', "_");
    }
    panic!("no guest crate `{name}` under plugins/examples or plugins/hostile")
}

/// The bytes of guest `name`.
pub fn guest_bytes(name: &str) -> Vec<u8> {
    std::fs::read(guest(name)).unwrap()
}

/// Crate directory names under `plugins/<group>`.
fn crates_in(group: &str) -> Vec<String> {
    let dir = repo_root().join("plugins").join(group);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").exists())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn every_guest_has_a_host_test() {
    let mut untested = Vec::new();
    let mut all = Vec::new();
    for group in ["examples", "hostile"] {
        for name in crates_in(group) {
            if !TESTED.iter().any(|list| list.contains(&name.as_str())) {
                untested.push(format!("plugins/{group}/{name}"));
            }
            all.push(name);
        }
    }
    assert!(!all.is_empty(), "no guest crates found under plugins/");
    assert!(
        untested.is_empty(),
        "guests without a host test (add a test and list them in TESTED): {untested:?}"
    );
}
