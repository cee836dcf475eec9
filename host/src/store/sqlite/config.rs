//! [`ConfigStore`] on SQLite: one table each for tenants, keys, resources
//! and settings.

use super::SqliteStore;
use crate::store::{
    ConfigSnapshot, ConfigStore, KeyRecord, Resource, ResourceKind, StoreError, StoreResult,
    TenantRecord,
};
use anyhow::Context;
use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

#[async_trait]
impl ConfigStore for SqliteStore {
    async fn load(&self) -> StoreResult<ConfigSnapshot> {
        self.run(|tx| {
            let tenants = tx
                .prepare_cached("SELECT name, created_ms FROM tenants ORDER BY name")?
                .query_map([], |r| {
                    Ok(TenantRecord {
                        name: r.get(0)?,
                        created_ms: r.get(1)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let keys = tx
                .prepare_cached(
                    "SELECT id, tenant, hash, created_ms FROM api_keys WHERE revoked_ms IS NULL ORDER BY id",
                )?
                .query_map([], |r| {
                    Ok(KeyRecord {
                        id: r.get(0)?,
                        tenant: r.get(1)?,
                        hash: r.get(2)?,
                        created_ms: r.get(3)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut resources = Vec::new();
            let mut stmt = tx.prepare_cached(
                "SELECT tenant, kind, name, spec, updated_ms FROM resources ORDER BY tenant, kind, name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })?;
            for row in rows {
                let (tenant, kind, name, spec, updated_ms) = row?;
                let kind = ResourceKind::parse(&kind)
                    .with_context(|| format!("unknown resource kind {kind}"))?;
                let spec = serde_json::from_str(&spec)
                    .with_context(|| format!("resource {name} has bad JSON"))?;
                resources.push(Resource {
                    tenant,
                    kind,
                    name,
                    spec,
                    updated_ms,
                });
            }
            Ok(ConfigSnapshot {
                tenants,
                keys,
                resources,
            })
        })
        .await
    }

    async fn create_tenant(&self, tenant: TenantRecord) -> StoreResult<()> {
        let name = tenant.name.clone();
        self.run(move |tx| {
            tx.prepare_cached("INSERT INTO tenants (name, created_ms) VALUES (?, ?)")?
                .execute(params![tenant.name, tenant.created_ms])?;
            Ok(())
        })
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => StoreError::Conflict(format!("tenant {name}")),
            other => other,
        })
    }

    async fn put_key(&self, key: KeyRecord) -> StoreResult<()> {
        let id = key.id.clone();
        self.run(move |tx| {
            tx.prepare_cached(
                "INSERT INTO api_keys (id, tenant, hash, created_ms) VALUES (?, ?, ?, ?)",
            )?
            .execute(params![key.id, key.tenant, key.hash, key.created_ms])?;
            Ok(())
        })
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => StoreError::Conflict(format!("key {id}")),
            other => other,
        })
    }

    async fn revoke_key(&self, tenant: &str, key_id: &str) -> StoreResult<bool> {
        let (tenant, key_id) = (tenant.to_owned(), key_id.to_owned());
        let now = self.now_ms();
        self.run(move |tx| {
            let n = tx
                .prepare_cached(
                    "UPDATE api_keys SET revoked_ms = ? WHERE tenant = ? AND id = ? AND revoked_ms IS NULL",
                )?
                .execute(params![now, tenant, key_id])?;
            Ok(n > 0)
        })
        .await
    }

    async fn put_resource(&self, r: Resource) -> StoreResult<()> {
        self.run(move |tx| {
            tx.prepare_cached(
                "INSERT INTO resources (tenant, kind, name, spec, updated_ms) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (tenant, kind, name) DO UPDATE SET spec = excluded.spec, updated_ms = excluded.updated_ms",
            )?
            .execute(params![r.tenant, r.kind.as_str(), r.name, r.spec.to_string(), r.updated_ms])?;
            Ok(())
        })
        .await
    }

    async fn delete_resource(
        &self,
        tenant: &str,
        kind: ResourceKind,
        name: &str,
    ) -> StoreResult<bool> {
        let (tenant, name) = (tenant.to_owned(), name.to_owned());
        self.run(move |tx| {
            let n = tx
                .prepare_cached("DELETE FROM resources WHERE tenant = ? AND kind = ? AND name = ?")?
                .execute(params![tenant, kind.as_str(), name])?;
            Ok(n > 0)
        })
        .await
    }

    async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        let key = key.to_owned();
        self.run(move |tx| {
            Ok(tx
                .prepare_cached("SELECT value FROM settings WHERE key = ?")?
                .query_row([key], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.run(move |tx| {
            tx.prepare_cached(
                "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![key, value])?;
            Ok(())
        })
        .await
    }
}
