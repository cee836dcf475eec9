//! Content-addressed files every node of a deployment shares: the Wasm
//! components of plugins.
//!
//! A node that uploads a plugin keeps the `.wasm` in its own data dir; on a
//! shared backend it also puts it here, under its sha256, so another node
//! that meets a version it does not have fetches the bytes and compiles
//! them itself. Only the component is shared, never compiled machine code:
//! a node deserialises only artifacts it produced (see `plugin::artifact`).
//! A single-process backend has no other node to share with and offers no
//! blob store ([`Stores::blobs`](super::Stores) is `None`).

use super::StoreResult;
use async_trait::async_trait;
use bytes::Bytes;

/// Shared, content-addressed bytes.
#[async_trait]
pub trait Blobs: Send + Sync + 'static {
    /// Stores `bytes` under `sha256` (lower-case hex of their digest);
    /// storing the same digest again does nothing.
    async fn put_blob(&self, sha256: &str, bytes: Bytes) -> StoreResult<()>;
    /// The bytes stored under `sha256`, or `None`. The caller checks the
    /// digest: the store is shared, and its contents are input.
    async fn get_blob(&self, sha256: &str) -> StoreResult<Option<Bytes>>;
}
