//! [`SchemaStore`] on SQLite: `schema_versions` (one row per version) and
//! `discovered_schemas` (one row per bus, source and type, with a revision
//! for compare-and-set).

use super::SqliteStore;
use crate::store::{DiscoveredSchema, SchemaStore, SchemaVersion, StoreError, StoreResult};
use anyhow::Context;
use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

/// Reads a `schema_versions` row (tenant, bus, name, version, spec, created_ms).
fn row_to_version(r: &rusqlite::Row<'_>) -> rusqlite::Result<(SchemaVersion, String)> {
    Ok((
        SchemaVersion {
            tenant: r.get(0)?,
            bus: r.get(1)?,
            name: r.get(2)?,
            version: r.get(3)?,
            spec: serde_json::Value::Null,
            created_ms: r.get(5)?,
        },
        r.get(4)?,
    ))
}

/// Parses the spec column of rows read by [`row_to_version`].
fn with_specs(rows: Vec<(SchemaVersion, String)>) -> anyhow::Result<Vec<SchemaVersion>> {
    rows.into_iter()
        .map(|(mut v, spec)| {
            v.spec = serde_json::from_str(&spec).with_context(|| {
                format!("schema {}/{} v{} has bad JSON", v.bus, v.name, v.version)
            })?;
            Ok(v)
        })
        .collect()
}

#[async_trait]
impl SchemaStore for SqliteStore {
    async fn add_schema_version(&self, version: SchemaVersion) -> StoreResult<()> {
        let spec =
            serde_json::to_string(&version.spec).map_err(|e| StoreError::Backend(e.into()))?;
        let added = self
            .run(move |tx| {
                let newest: u32 = tx
                    .prepare_cached(
                        "SELECT COALESCE(MAX(version), 0) FROM schema_versions \
                         WHERE tenant = ? AND bus = ? AND name = ?",
                    )?
                    .query_row(params![version.tenant, version.bus, version.name], |r| {
                        r.get(0)
                    })?;
                if version.version != newest + 1 {
                    return Ok(false);
                }
                tx.prepare_cached(
                    "INSERT INTO schema_versions (tenant, bus, name, version, spec, created_ms) \
                     VALUES (?, ?, ?, ?, ?, ?)",
                )?
                .execute(params![
                    version.tenant,
                    version.bus,
                    version.name,
                    version.version,
                    spec,
                    version.created_ms
                ])?;
                Ok(true)
            })
            .await?;
        if added {
            Ok(())
        } else {
            Err(StoreError::Conflict("that schema version".into()))
        }
    }

    async fn schema_versions(
        &self,
        tenant: &str,
        bus: &str,
        name: &str,
    ) -> StoreResult<Vec<SchemaVersion>> {
        let (tenant, bus, name) = (tenant.to_owned(), bus.to_owned(), name.to_owned());
        self.run(move |tx| {
            let rows = tx
                .prepare_cached(
                    "SELECT tenant, bus, name, version, spec, created_ms FROM schema_versions \
                     WHERE tenant = ? AND bus = ? AND name = ? ORDER BY version",
                )?
                .query_map(params![tenant, bus, name], row_to_version)?
                .collect::<Result<Vec<_>, _>>()?;
            with_specs(rows)
        })
        .await
    }

    async fn latest_schema_versions(&self) -> StoreResult<Vec<SchemaVersion>> {
        self.run(|tx| {
            let rows = tx
                .prepare_cached(
                    "SELECT tenant, bus, name, version, spec, created_ms FROM schema_versions s \
                     WHERE version = (SELECT MAX(version) FROM schema_versions l \
                       WHERE l.tenant = s.tenant AND l.bus = s.bus AND l.name = s.name) \
                     ORDER BY tenant, bus, name",
                )?
                .query_map([], row_to_version)?
                .collect::<Result<Vec<_>, _>>()?;
            with_specs(rows)
        })
        .await
    }

    async fn delete_schema(&self, tenant: &str, bus: &str, name: &str) -> StoreResult<bool> {
        let (tenant, bus, name) = (tenant.to_owned(), bus.to_owned(), name.to_owned());
        self.run(move |tx| {
            let n = tx
                .prepare_cached(
                    "DELETE FROM schema_versions WHERE tenant = ? AND bus = ? AND name = ?",
                )?
                .execute(params![tenant, bus, name])?;
            Ok(n > 0)
        })
        .await
    }

    async fn discovered_schemas(
        &self,
        tenant: &str,
        bus: &str,
    ) -> StoreResult<Vec<DiscoveredSchema>> {
        let (tenant, bus) = (tenant.to_owned(), bus.to_owned());
        self.run(move |tx| {
            let rows = tx
                .prepare_cached(
                    "SELECT tenant, bus, source, type, summary, revision, updated_ms \
                     FROM discovered_schemas WHERE tenant = ? AND bus = ? ORDER BY source, type",
                )?
                .query_map(params![tenant, bus], |r| {
                    Ok((
                        DiscoveredSchema {
                            tenant: r.get(0)?,
                            bus: r.get(1)?,
                            source: r.get(2)?,
                            event_type: r.get(3)?,
                            summary: serde_json::Value::Null,
                            revision: r.get::<_, i64>(5)?.unsigned_abs(),
                            updated_ms: r.get(6)?,
                        },
                        r.get::<_, String>(4)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(mut d, summary)| {
                    d.summary = serde_json::from_str(&summary).with_context(|| {
                        format!(
                            "discovered schema {}/{} has bad JSON",
                            d.source, d.event_type
                        )
                    })?;
                    Ok(d)
                })
                .collect()
        })
        .await
    }

    async fn put_discovered_schema(&self, schema: DiscoveredSchema) -> StoreResult<Option<u64>> {
        let summary =
            serde_json::to_string(&schema.summary).map_err(|e| StoreError::Backend(e.into()))?;
        self.run(move |tx| {
            let current: Option<i64> = tx
                .prepare_cached(
                    "SELECT revision FROM discovered_schemas \
                     WHERE tenant = ? AND bus = ? AND source = ? AND type = ?",
                )?
                .query_row(
                    params![schema.tenant, schema.bus, schema.source, schema.event_type],
                    |r| r.get(0),
                )
                .optional()?;
            if current.unwrap_or(0).unsigned_abs() != schema.revision {
                return Ok(None);
            }
            let revision = schema.revision + 1;
            let stored = i64::try_from(revision)?;
            tx.prepare_cached(
                "INSERT INTO discovered_schemas (tenant, bus, source, type, summary, revision, updated_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (tenant, bus, source, type) \
                 DO UPDATE SET summary = ?5, revision = ?6, updated_ms = ?7",
            )?
            .execute(params![
                schema.tenant,
                schema.bus,
                schema.source,
                schema.event_type,
                summary,
                stored,
                schema.updated_ms
            ])?;
            Ok(Some(revision))
        })
        .await
    }

    async fn delete_bus_schemas(&self, tenant: &str, bus: &str) -> StoreResult<u64> {
        let (tenant, bus) = (tenant.to_owned(), bus.to_owned());
        self.run(move |tx| {
            let a = tx
                .prepare_cached("DELETE FROM schema_versions WHERE tenant = ? AND bus = ?")?
                .execute(params![tenant, bus])?;
            let b = tx
                .prepare_cached("DELETE FROM discovered_schemas WHERE tenant = ? AND bus = ?")?
                .execute(params![tenant, bus])?;
            Ok((a + b) as u64)
        })
        .await
    }
}
