//! Schemas on JetStream: the table `P_SCHEMAS` (one message per key).
//!
//! - A registered version is its own key, `v.<tenant>.<bus>.<name>.<n>`,
//!   created with `Nats-Expected-Last-Subject-Sequence: 0`: of two writers
//!   racing for version `n`, exactly one creates it. Before that, the
//!   writer reads the schema's versions and refuses anything but the next
//!   number, so there are no gaps.
//! - A discovered summary is `d.<tenant>.<bus>.<source>.<type>`; its
//!   revision is the key's stream sequence, and a write presents the one
//!   it read (0: not stored yet) — the table's compare-and-set.
//!
//! Deleting purges the keys (`v.<tenant>.<bus>.<name>.>`), so a schema
//! added again starts from version 1.

use super::NatsStore;
use super::table::{self, Expect, TableError};
use crate::store::schemas::{DiscoveredSchema, SchemaStore, SchemaVersion};
use crate::store::{Millis, StoreError, StoreResult};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;

/// A version as stored.
#[derive(Serialize, Deserialize)]
struct StoredVersion {
    tenant: String,
    bus: String,
    name: String,
    version: u32,
    spec: Value,
    created_ms: Millis,
}

impl StoredVersion {
    fn into_version(self) -> SchemaVersion {
        SchemaVersion {
            tenant: self.tenant,
            bus: self.bus,
            name: self.name,
            version: self.version,
            spec: self.spec,
            created_ms: self.created_ms,
        }
    }
}

/// A discovered summary as stored (the revision is the key's).
#[derive(Serialize, Deserialize)]
struct StoredDiscovery {
    tenant: String,
    bus: String,
    source: String,
    event_type: String,
    summary: Value,
    updated_ms: Millis,
}

impl NatsStore {
    /// Every version stored under the key filter, with its key.
    async fn versions_under(&self, filter: &str) -> StoreResult<Vec<(String, SchemaVersion)>> {
        let s = &self.inner;
        let mut out = Vec::new();
        for (key, record) in s
            .schemas
            .scan(filter)
            .await
            .map_err(|e| e.into_store(s, "read schemas"))?
        {
            if let Some(v) = table::parse::<StoredVersion>(&record)? {
                out.push((key, v.into_version()));
            }
        }
        Ok(out)
    }

    /// Purges every key under the filter; how many there were.
    async fn purge_schemas(&self, filter: &str) -> StoreResult<u64> {
        let s = &self.inner;
        let n = s
            .schemas
            .scan(filter)
            .await
            .map_err(|e| e.into_store(s, "read schemas"))?
            .len() as u64;
        if n > 0 {
            s.schemas
                .remove(filter)
                .await
                .map_err(|e| e.into_store(s, "delete schemas"))?;
        }
        Ok(n)
    }
}

#[async_trait]
impl SchemaStore for NatsStore {
    async fn add_schema_version(&self, version: SchemaVersion) -> StoreResult<()> {
        let s = &self.inner;
        let schema = table::key(&[&version.tenant, &version.bus, &version.name]);
        let newest = self
            .versions_under(&format!("v.{schema}.*"))
            .await?
            .iter()
            .map(|(_, v)| v.version)
            .max()
            .unwrap_or(0);
        let conflict = || {
            StoreError::Conflict(format!(
                "version {} of schema {}",
                version.version, version.name
            ))
        };
        if version.version != newest + 1 {
            return Err(conflict());
        }
        let stored = StoredVersion {
            tenant: version.tenant.clone(),
            bus: version.bus.clone(),
            name: version.name.clone(),
            version: version.version,
            spec: version.spec.clone(),
            created_ms: version.created_ms,
        };
        let key = format!("v.{schema}.{}", version.version);
        match s
            .schemas
            .put(&key, Some(table::json(&stored)?), Expect::Rev(0))
            .await
        {
            Ok(_) => Ok(()),
            Err(TableError::Conflict) => Err(conflict()),
            Err(e) => Err(e.into_store(s, "add a schema version")),
        }
    }

    async fn schema_versions(
        &self,
        tenant: &str,
        bus: &str,
        name: &str,
    ) -> StoreResult<Vec<SchemaVersion>> {
        let schema = table::key(&[tenant, bus, name]);
        let mut versions: Vec<SchemaVersion> = self
            .versions_under(&format!("v.{schema}.*"))
            .await?
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        versions.sort_by_key(|v| v.version);
        Ok(versions)
    }

    async fn latest_schema_versions(&self) -> StoreResult<Vec<SchemaVersion>> {
        let mut latest: HashMap<(String, String, String), SchemaVersion> = HashMap::new();
        for (_, v) in self.versions_under("v.>").await? {
            let id = (v.tenant.clone(), v.bus.clone(), v.name.clone());
            match latest.get(&id) {
                Some(have) if have.version >= v.version => {}
                _ => {
                    latest.insert(id, v);
                }
            }
        }
        Ok(latest.into_values().collect())
    }

    async fn delete_schema(&self, tenant: &str, bus: &str, name: &str) -> StoreResult<bool> {
        let schema = table::key(&[tenant, bus, name]);
        Ok(self.purge_schemas(&format!("v.{schema}.*")).await? > 0)
    }

    async fn discovered_schemas(
        &self,
        tenant: &str,
        bus: &str,
    ) -> StoreResult<Vec<DiscoveredSchema>> {
        let s = &self.inner;
        let filter = format!("d.{}.>", table::key(&[tenant, bus]));
        let mut out = Vec::new();
        for (_, record) in s
            .schemas
            .scan(&filter)
            .await
            .map_err(|e| e.into_store(s, "read discovered schemas"))?
        {
            if let Some(d) = table::parse::<StoredDiscovery>(&record)? {
                out.push(DiscoveredSchema {
                    tenant: d.tenant,
                    bus: d.bus,
                    source: d.source,
                    event_type: d.event_type,
                    summary: d.summary,
                    revision: record.rev,
                    updated_ms: d.updated_ms,
                });
            }
        }
        Ok(out)
    }

    async fn put_discovered_schema(&self, schema: DiscoveredSchema) -> StoreResult<Option<u64>> {
        let s = &self.inner;
        let key = format!(
            "d.{}",
            table::key(&[
                &schema.tenant,
                &schema.bus,
                &schema.source,
                &schema.event_type
            ])
        );
        let stored = StoredDiscovery {
            tenant: schema.tenant,
            bus: schema.bus,
            source: schema.source,
            event_type: schema.event_type,
            summary: schema.summary,
            updated_ms: schema.updated_ms,
        };
        match s
            .schemas
            .put(
                &key,
                Some(table::json(&stored)?),
                Expect::Rev(schema.revision),
            )
            .await
        {
            Ok(rev) => Ok(Some(rev)),
            Err(TableError::Conflict) => Ok(None),
            Err(e) => Err(e.into_store(s, "write a discovered schema")),
        }
    }

    async fn delete_bus_schemas(&self, tenant: &str, bus: &str) -> StoreResult<u64> {
        let b = table::key(&[tenant, bus]);
        let registered = self.purge_schemas(&format!("v.{b}.>")).await?;
        let discovered = self.purge_schemas(&format!("d.{b}.>")).await?;
        Ok(registered + discovered)
    }
}
