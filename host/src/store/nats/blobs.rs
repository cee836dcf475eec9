//! Plugin components shared across nodes: a JetStream object store,
//! bucket `<PREFIX>_PLUGINS` (stream `OBJ_<PREFIX>_PLUGINS`), one object
//! per component named by its sha256, with the deployment's replicas.
//!
//! An object is written once and never changed (its name is its digest),
//! so a put of a name already there is skipped. Objects are not removed
//! when a plugin is deleted: another plugin, or another tenant's, may have
//! the same bytes.

use crate::store::{Blobs, StoreResult};
use async_nats::jetstream::object_store::{self, GetErrorKind, InfoErrorKind, ObjectStore};
use async_trait::async_trait;
use bytes::Bytes;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The deployment's bucket, with what its calls need of the connection.
#[derive(Clone)]
pub struct NatsBlobs {
    bucket: ObjectStore,
    client: async_nats::Client,
    timeout: Duration,
}

impl std::fmt::Debug for NatsBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBlobs").finish_non_exhaustive()
    }
}

/// Opens (creating if needed) the deployment's bucket.
pub(super) async fn open_bucket(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    options: &super::NatsOptions,
) -> Result<NatsBlobs, String> {
    let bucket = format!("{}_PLUGINS", options.prefix);
    let timeout = options.request_timeout * 2;
    let existing = tokio::time::timeout(timeout, js.get_object_store(&bucket))
        .await
        .map_err(|_| format!("object store {bucket}: timed out"))?;
    let blobs = |bucket| NatsBlobs {
        bucket,
        client: client.clone(),
        timeout,
    };
    if let Ok(store) = existing {
        return Ok(blobs(store));
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
        .map(blobs)
        .map_err(|e| format!("object store {bucket}: {e}"))
}

impl NatsBlobs {
    async fn timed<T, E: std::fmt::Display>(
        &self,
        what: &str,
        f: impl std::future::IntoFuture<Output = Result<T, E>>,
    ) -> StoreResult<T> {
        super::timed(&self.client, self.timeout, what, f).await
    }
}

#[async_trait]
impl Blobs for NatsBlobs {
    async fn put_blob(&self, sha256: &str, bytes: Bytes) -> StoreResult<()> {
        let s = self;
        let present = async {
            match s.bucket.info(sha256).await {
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
            s.bucket.put(sha256, &mut reader),
        )
        .await?;
        Ok(())
    }

    async fn get_blob(&self, sha256: &str) -> StoreResult<Option<Bytes>> {
        let s = self;
        let get = async {
            let mut object = match s.bucket.get(sha256).await {
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
