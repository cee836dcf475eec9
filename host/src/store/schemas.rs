//! The schema registry's records: registered schema versions, and the
//! schemas discovery infers from the events a bus sees.
//!
//! A registered schema is a list of immutable versions numbered from 1; a
//! new version is written only as the next number after the newest
//! ([`SchemaStore::add_schema_version`] refuses anything else with
//! [`Conflict`](super::StoreError::Conflict)), so two writers racing on one
//! schema cannot both win: the loser re-reads and, if its compatibility
//! check still passes, tries again. The store keeps each version's spec as
//! the JSON the registry gives it; it knows nothing of JSON Schema.
//!
//! A discovered schema is a mergeable summary (the registry's inference
//! state, JSON to the store) per (tenant, bus, `source`, `type`), written
//! with compare-and-set on a revision: each node merges what it saw into
//! the stored summary and writes it back only if nobody wrote in between.
//!
//! JetStream: versions are messages on `schemas.<tenant>.<bus>.<name>`
//! published with `Nats-Expected-Last-Subject-Sequence` (the version number
//! is the count of messages on the subject); discovered summaries live in a
//! KV bucket keyed by tenant, bus and a digest of source and type, updated
//! with the KV's expected-revision `update`.

use super::{Millis, StoreResult};
use async_trait::async_trait;
use serde_json::Value;

/// One version of a registered schema.
#[derive(Clone, Debug, PartialEq)]
pub struct SchemaVersion {
    /// Owning tenant.
    pub tenant: String,
    /// The bus the schema is registered on.
    pub bus: String,
    /// The schema's name, unique per bus.
    pub name: String,
    /// 1, 2, ... in the order they were added.
    pub version: u32,
    /// The version as the registry describes it (selector, mode, the JSON
    /// Schema document, ...).
    pub spec: Value,
    /// When it was added.
    pub created_ms: Millis,
}

/// The inference state of one discovered schema.
#[derive(Clone, Debug, PartialEq)]
pub struct DiscoveredSchema {
    /// Owning tenant.
    pub tenant: String,
    /// The bus whose events were seen.
    pub bus: String,
    /// The events' `source`.
    pub source: String,
    /// The events' `type`.
    pub event_type: String,
    /// The registry's summary of every event seen (opaque to the store).
    pub summary: Value,
    /// Changes on every write; 0 for a record not yet stored.
    pub revision: u64,
    /// Last write.
    pub updated_ms: Millis,
}

/// Registered and discovered schemas.
#[async_trait]
pub trait SchemaStore: Send + Sync + 'static {
    /// Adds a version. It must be the next one: 1 for a schema that has no
    /// versions, else one more than the newest; anything else is a
    /// [`Conflict`](super::StoreError::Conflict) and changes nothing.
    async fn add_schema_version(&self, version: SchemaVersion) -> StoreResult<()>;

    /// Every version of one schema, oldest first (empty when it does not exist).
    async fn schema_versions(
        &self,
        tenant: &str,
        bus: &str,
        name: &str,
    ) -> StoreResult<Vec<SchemaVersion>>;

    /// The newest version of every schema of every tenant (at start-up).
    async fn latest_schema_versions(&self) -> StoreResult<Vec<SchemaVersion>>;

    /// Deletes a schema with all its versions; false if it had none. A
    /// schema added again later starts from version 1.
    async fn delete_schema(&self, tenant: &str, bus: &str, name: &str) -> StoreResult<bool>;

    /// The discovered schemas of one bus, by source and type.
    async fn discovered_schemas(
        &self,
        tenant: &str,
        bus: &str,
    ) -> StoreResult<Vec<DiscoveredSchema>>;

    /// Writes a discovered schema if its stored revision is still
    /// `schema.revision` (0: not stored yet). Returns the new revision, or
    /// `None` (and changes nothing) when someone wrote in between.
    async fn put_discovered_schema(&self, schema: DiscoveredSchema) -> StoreResult<Option<u64>>;

    /// Forgets everything registered and discovered on a bus (it was
    /// deleted); returns how many records went.
    async fn delete_bus_schemas(&self, tenant: &str, bus: &str) -> StoreResult<u64>;
}
