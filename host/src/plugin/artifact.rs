//! Plugin files on disk, content-addressed by the sha256 of the component:
//!
//! - `<data_dir>/plugins/wasm/<sha256>.wasm` — the component as uploaded;
//! - `<data_dir>/plugins/artifacts/<sha256>-<compat>.cwasm` — the machine code
//!   this host compiled from it, where `<compat>` digests the engine's
//!   precompile compatibility hash (wasmtime version and configuration).
//!
//! Files are written to a temporary name and renamed, so a reader never sees
//! a partial file and a mapped file never changes. An artifact ends with the
//! sha256 of its body; one that does not verify is ignored (and recompiled by
//! the caller). Only artifacts this host wrote are ever deserialised — never
//! bytes a tenant supplied, which would be arbitrary code execution.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

const DIGEST_LEN: usize = 32;

/// The two plugin directories under the data dir.
#[derive(Clone, Debug)]
pub struct ArtifactStore {
    wasm_dir: PathBuf,
    artifact_dir: PathBuf,
    compat: String,
}

/// Whether `s` is a lower-case hex sha256 (and so safe in a file name).
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

impl ArtifactStore {
    /// Opens (creating) the directories under `data_dir`.
    pub fn open(data_dir: &Path, compat: &str) -> std::io::Result<Self> {
        let store = Self {
            wasm_dir: data_dir.join("plugins").join("wasm"),
            artifact_dir: data_dir.join("plugins").join("artifacts"),
            compat: compat.to_owned(),
        };
        std::fs::create_dir_all(&store.wasm_dir)?;
        std::fs::create_dir_all(&store.artifact_dir)?;
        Ok(store)
    }

    /// Where the component with this digest is stored.
    pub fn wasm_path(&self, sha256: &str) -> PathBuf {
        self.wasm_dir.join(format!("{sha256}.wasm"))
    }

    /// Where this engine's artifact for the component is stored.
    pub fn artifact_path(&self, sha256: &str) -> PathBuf {
        self.artifact_dir
            .join(format!("{sha256}-{}.cwasm", self.compat))
    }

    /// Stores the component unless it already is.
    pub fn write_wasm(&self, sha256: &str, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.wasm_path(sha256);
        if path.exists() {
            return Ok(());
        }
        write_atomically(&path, &[bytes])
    }

    /// Reads a stored component back.
    pub fn read_wasm(&self, sha256: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.wasm_path(sha256))
    }

    /// Stores a compiled artifact followed by its digest.
    pub fn write_artifact(&self, sha256: &str, artifact: &[u8]) -> std::io::Result<()> {
        let digest = Sha256::digest(artifact);
        write_atomically(&self.artifact_path(sha256), &[artifact, &digest])
    }

    /// Reads this engine's artifact for a component: `None` when there is
    /// none or it fails its digest (truncated, corrupted, replaced).
    pub fn read_artifact(&self, sha256: &str) -> Option<Vec<u8>> {
        let mut bytes = std::fs::read(self.artifact_path(sha256)).ok()?;
        let body_len = bytes.len().checked_sub(DIGEST_LEN)?;
        let (body, digest) = bytes.split_at(body_len);
        if Sha256::digest(body).as_slice() != digest {
            tracing::warn!(%sha256, "plugin artifact fails its digest; ignoring it");
            return None;
        }
        bytes.truncate(body_len);
        Some(bytes)
    }

    /// Removes this engine's artifact (after it failed to deserialise).
    pub fn remove_artifact(&self, sha256: &str) {
        let _ = std::fs::remove_file(self.artifact_path(sha256));
    }
}

fn write_atomically(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}-{}", std::process::id(), fastrand::u64(..)));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        for part in parts {
            f.write_all(part)?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Deserialises an artifact read back by [`ArtifactStore::read_artifact`].
///
/// wasmtime refuses artifacts from another wasmtime version or engine
/// configuration with an error; the caller then recompiles.
#[allow(unsafe_code)]
pub fn deserialize(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `artifact` was produced by `Component::serialize` of this host
    // (it lives in the host's own data dir, under a name keyed by this
    // engine's compatibility hash, and its trailing digest verified). Tenant
    // bytes only ever go through `Component::new`, which compiles them.
    unsafe { Component::deserialize(engine, artifact) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_verify_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path(), "abcd").unwrap();
        let sha = sha256_hex(b"component");
        assert!(is_sha256(&sha));
        assert!(store.read_artifact(&sha).is_none());
        store.write_artifact(&sha, b"machine code").unwrap();
        assert_eq!(store.read_artifact(&sha).unwrap(), b"machine code");
        let path = store.artifact_path(&sha);
        assert!(
            path.to_str()
                .unwrap()
                .ends_with(&format!("{sha}-abcd.cwasm"))
        );
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(store.read_artifact(&sha).is_none());
        std::fs::write(&path, b"short").unwrap();
        assert!(store.read_artifact(&sha).is_none());
    }

    #[test]
    fn digests_are_checked_as_file_names() {
        assert!(!is_sha256("../../etc/passwd"));
        assert!(!is_sha256(&"A".repeat(64)));
    }
}
