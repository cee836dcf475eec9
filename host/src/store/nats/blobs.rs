//! Plugin components shared across nodes: a JetStream object store,
//! bucket `<PREFIX>_PLUGINS` (stream `OBJ_<PREFIX>_PLUGINS`), one object
//! per component named by its sha256, with the deployment's replicas.
//!
//! An object is written once and never changed (its name is its digest),
//! so a put of a name already there is skipped. Objects are not removed
//! when a plugin is deleted: another plugin, or another tenant's, may have
//! the same bytes.

use super::NatsStore;
use crate::store::{Blobs, StoreResult};
use async_nats::jetstream::object_store::{self, GetErrorKind, InfoErrorKind, ObjectStore};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncReadExt;

/// The deployment's bucket.
pub(crate) struct Bucket(ObjectStore);

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bucket")
    }
}

/// Opens (creating if needed) the deployment's bucket.
pub(super) async fn open_bucket(
    js: &async_nats::jetstream::Context,
    options: &super::NatsOptions,
) -> Result<Bucket, String> {
    let bucket = format!("{}_PLUGINS", options.prefix);
    let timeout = options.request_timeout * 2;
    let existing = tokio::time::timeout(timeout, js.get_object_store(&bucket))
        .await
        .map_err(|_| format!("object store {bucket}: timed out"))?;
    if let Ok(store) = existing {
        return Ok(Bucket(store));
    }
    let config = object_store::Config {
        bucket: bucket.clone(),
        description: Some("busbar plugin components, by sha256".into()),
        num_replicas: options.replicas,
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    };
    tokio::time::timeout(timeout, js.create_object_store(config))
        .await
        .map_err(|_| format!("object store {bucket}: timed out"))?
        .map(Bucket)
        .map_err(|e| format!("object store {bucket}: {e}"))
}

#[async_trait]
impl Blobs for NatsStore {
    async fn put_blob(&self, sha256: &str, bytes: Bytes) -> StoreResult<()> {
        let s = &self.inner;
        let present = async {
            match s.plugins.0.info(sha256).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == InfoErrorKind::NotFound => Ok(false),
                Err(e) => Err(e.to_string()),
            }
        };
        if s.timed("look up a plugin component", present).await? {
            return Ok(());
        }
        let mut reader: &[u8] = &bytes;
        s.timed(
            "store a plugin component",
            s.plugins.0.put(sha256, &mut reader),
        )
        .await?;
        Ok(())
    }

    async fn get_blob(&self, sha256: &str) -> StoreResult<Option<Bytes>> {
        let s = &self.inner;
        let get = async {
            let mut object = match s.plugins.0.get(sha256).await {
                Ok(o) => o,
                Err(e) if e.kind() == GetErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.to_string()),
            };
            let mut out = Vec::new();
            object
                .read_to_end(&mut out)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Some(Bytes::from(out)))
        };
        s.timed("fetch a plugin component", get).await
    }
}
