//! Store interfaces added after this backend was written (deduplicated
//! appends, schemas): not yet implemented on JetStream. Every call answers
//! [`StoreError::Unavailable`] naming the verb, so a bus on NATS refuses
//! what it cannot do instead of doing it wrong. (Being implemented: see
//! the design notes in `mod.rs`.)

use super::NatsStore;
use crate::clock::Millis;
use crate::store::dedup::{AdmittedEvent, Appended, DedupLog};
use crate::store::schemas::{DiscoveredSchema, SchemaStore, SchemaVersion};
use crate::store::{StoreError, StoreResult};
use async_trait::async_trait;

fn not_yet<T>(verb: &str) -> StoreResult<T> {
    Err(StoreError::Unavailable(format!(
        "{verb} is not implemented on the NATS backend yet"
    )))
}

#[async_trait]
impl DedupLog for NatsStore {
    async fn append_deduplicated(&self, _: Vec<AdmittedEvent>) -> StoreResult<Vec<Appended>> {
        not_yet("append_deduplicated")
    }

    async fn prune_dedup_keys(&self, _: Millis) -> StoreResult<u64> {
        Ok(0)
    }
}

#[async_trait]
impl SchemaStore for NatsStore {
    async fn add_schema_version(&self, _: SchemaVersion) -> StoreResult<()> {
        not_yet("add_schema_version")
    }

    async fn schema_versions(&self, _: &str, _: &str, _: &str) -> StoreResult<Vec<SchemaVersion>> {
        not_yet("schema_versions")
    }

    async fn latest_schema_versions(&self) -> StoreResult<Vec<SchemaVersion>> {
        Ok(Vec::new())
    }

    async fn delete_schema(&self, _: &str, _: &str, _: &str) -> StoreResult<bool> {
        not_yet("delete_schema")
    }

    async fn discovered_schemas(&self, _: &str, _: &str) -> StoreResult<Vec<DiscoveredSchema>> {
        not_yet("discovered_schemas")
    }

    async fn put_discovered_schema(&self, _: DiscoveredSchema) -> StoreResult<Option<u64>> {
        not_yet("put_discovered_schema")
    }

    async fn delete_bus_schemas(&self, _: &str, _: &str) -> StoreResult<u64> {
        Ok(0)
    }
}
