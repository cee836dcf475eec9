//! The guest SDK this binary carries: `plugins/sdk` as it was when the binary
//! was built (embedded by `host/build.rs`), written on demand to a per-user
//! cache so that new plugin crates can depend on it by path. Until the SDK is
//! published on a registry, this is how an installed `busbar` scaffolds
//! crates that build on a machine without the Busbar source.
//!
//! The cache directory is `$XDG_CACHE_HOME/busbar/sdk/<version>-<digest>/`
//! (or `~/.cache/...`). The digest of the embedded files makes each directory
//! immutable: a development build whose SDK changed without a version bump
//! gets a directory of its own instead of a stale one. A directory is written
//! under a temporary name and renamed into place, so it is complete whenever
//! it exists, and concurrent `busbar plugin new` runs cannot see half of it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

include!(concat!(env!("OUT_DIR"), "/embedded_sdk.rs"));

/// The directory of the SDK of this binary's version in the user's cache,
/// written there first if missing.
pub fn install() -> anyhow::Result<PathBuf> {
    install_in(&cache_dir()?.join("busbar").join("sdk"))
}

/// `$XDG_CACHE_HOME`, else `$HOME/.cache` (relative values are ignored, as
/// the XDG base directory specification says).
fn cache_dir() -> anyhow::Result<PathBuf> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(dir) = absolute("XDG_CACHE_HOME") {
        return Ok(dir);
    }
    absolute("HOME")
        .map(|home| home.join(".cache"))
        .context("cannot find a cache directory for the SDK (set HOME or XDG_CACHE_HOME), or pass --sdk-path")
}

/// The SDK's directory under `root`, written if missing.
fn install_in(root: &Path) -> anyhow::Result<PathBuf> {
    let dir = root.join(format!("{}-{}", crate::VERSION, digest()));
    if dir.exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let tmp = root.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        crate::clock::now_ms()
    ));
    let written = write_files(&tmp).and_then(|()| {
        std::fs::rename(&tmp, &dir).or_else(|e| {
            // Another run installed the same files first.
            if dir.exists() { Ok(()) } else { Err(e.into()) }
        })
    });
    let _ = std::fs::remove_dir_all(&tmp);
    written.with_context(|| format!("writing the SDK to {}", dir.display()))?;
    Ok(dir)
}

fn write_files(dir: &Path) -> anyhow::Result<()> {
    for (path, bytes) in SDK_FILES {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, bytes)?;
    }
    Ok(())
}

/// The first 12 hex digits of a sha256 over every embedded file's path and
/// contents.
fn digest() -> String {
    let mut h = Sha256::new();
    for (path, bytes) in SDK_FILES {
        h.update((path.len() as u64).to_le_bytes());
        h.update(path.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    h.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn every_file_of_the_sdk_is_embedded_as_it_is_on_disk() {
        let paths: Vec<&str> = SDK_FILES.iter().map(|(p, _)| *p).collect();
        for expected in [
            "Cargo.toml",
            "src/lib.rs",
            "wit/plugin.wit",
            "wit/deps/http.wit",
        ] {
            assert!(
                paths.contains(&expected),
                "{expected} missing from {paths:?}"
            );
        }
        assert!(!paths.iter().any(|p| p.starts_with("tests/")), "{paths:?}");
        for (path, bytes) in SDK_FILES {
            let on_disk = std::fs::read(repo().join("plugins/sdk").join(path)).unwrap();
            assert!(on_disk == *bytes, "{path} differs from plugins/sdk/{path}");
        }
        assert!(
            std::str::from_utf8(PLUGINS_LOCK)
                .unwrap()
                .contains("name = \"wit-bindgen\"")
        );
    }

    #[test]
    fn the_sdk_carries_the_same_wit_as_the_host() {
        for (path, bytes) in SDK_FILES {
            if let Some(wit) = path.strip_prefix("wit/") {
                let host = std::fs::read(repo().join("wit").join(wit)).unwrap();
                assert!(host == *bytes, "plugins/sdk/{path} differs from wit/{wit}");
            }
        }
    }

    #[test]
    fn the_sdk_manifest_stands_alone_at_this_version() {
        let (_, manifest) = SDK_FILES.iter().find(|(p, _)| *p == "Cargo.toml").unwrap();
        let manifest: toml::Table = std::str::from_utf8(manifest).unwrap().parse().unwrap();
        assert_eq!(
            manifest["package"]["version"].as_str(),
            Some(crate::VERSION)
        );
        // Nothing inherited: outside the plugins workspace there is none.
        assert!(!toml::to_string(&manifest).unwrap().contains("workspace"));
    }

    #[test]
    fn installs_once_complete_and_immutable() {
        let root = tempfile::tempdir().unwrap();
        let dir = install_in(root.path()).unwrap();
        assert!(dir.starts_with(root.path()));
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(&format!("{}-", crate::VERSION)), "{name}");
        for (path, bytes) in SDK_FILES {
            assert_eq!(std::fs::read(dir.join(path)).unwrap(), *bytes, "{path}");
        }
        // Again: the same directory, nothing rewritten, no temporary left.
        let marker = dir.join("src/lib.rs");
        let before = std::fs::metadata(&marker).unwrap().modified().unwrap();
        assert_eq!(install_in(root.path()).unwrap(), dir);
        assert_eq!(
            std::fs::metadata(&marker).unwrap().modified().unwrap(),
            before
        );
        let entries: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
        assert_eq!(entries.len(), 1);
    }
}
