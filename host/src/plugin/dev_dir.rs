//! `busbar serve --plugins-dir DIR`: local development without uploads.
//!
//! Every `*.wasm` file in the directory is registered as a plugin of the
//! development tenant, named after the file (`amount_filter.wasm` →
//! `amount_filter`); the directory is polled, and a changed file becomes the
//! plugin's next version, live, exactly as an upload would. The tenant is
//! created (with a `default` bus) if it does not exist yet.

use super::registry::{self, PluginHost, Registration, register};
use crate::catalog::Catalog;
use crate::clock::now_ms;
use crate::store::{Resource, ResourceKind, Store, TenantRecord};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// How often the directory is looked at.
const POLL: Duration = Duration::from_secs(1);

/// Makes sure the development tenant exists.
async fn ensure_tenant(store: &dyn Store, catalog: &Catalog, tenant: &str) -> anyhow::Result<()> {
    if catalog.has_tenant(tenant) {
        return Ok(());
    }
    let created_ms = now_ms();
    store
        .create_tenant(TenantRecord {
            name: tenant.to_owned(),
            created_ms,
        })
        .await?;
    catalog.add_tenant(tenant, created_ms);
    let bus = Resource {
        tenant: tenant.to_owned(),
        kind: ResourceKind::Bus,
        name: "default".into(),
        spec: serde_json::json!({}),
        updated_ms: created_ms,
    };
    store.put_resource(bus).await?;
    catalog.put_bus(tenant, "default", serde_json::json!({}));
    Ok(())
}

/// Registers one file if it is new or changed since `seen`.
async fn load_file(
    path: &Path,
    tenant: &str,
    store: &dyn Store,
    catalog: &Catalog,
    plugins: &PluginHost,
) -> anyhow::Result<Option<String>> {
    let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
        return Ok(None);
    };
    if !crate::route::valid_name(&name) {
        anyhow::bail!("{} is not a valid plugin name", name);
    }
    let wasm = tokio::fs::read(path).await?;
    let runtime = plugins.runtime.clone();
    let prepared = tokio::task::spawn_blocking(move || runtime.prepare(&wasm))
        .await?
        .map_err(|e| anyhow::anyhow!("{}: {}", e.code.as_str(), e.message))?;
    match register(catalog.plugin(tenant, &name), &name, &prepared, now_ms())
        .map_err(anyhow::Error::msg)?
    {
        Registration::Unchanged(_) => Ok(None),
        Registration::Added(record) => {
            registry::save(store, catalog, tenant, &record).await?;
            Ok(Some(format!(
                "{name}@{} ({})",
                record.current,
                record.kind.as_str()
            )))
        }
    }
}

/// Watches `dir` until shutdown.
pub async fn watch_dir(
    dir: PathBuf,
    tenant: String,
    store: Arc<dyn Store>,
    catalog: Arc<Catalog>,
    plugins: Arc<PluginHost>,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Err(e) = ensure_tenant(store.as_ref(), &catalog, &tenant).await {
        tracing::error!(error = %e, tenant, "cannot create the plugins-dir tenant");
        return;
    }
    let mut seen: HashMap<PathBuf, (SystemTime, u64)> = HashMap::new();
    loop {
        if let Ok(mut entries) = tokio::fs::read_dir(&dir).await {
            while let Ok(Some(entry)) = entries.next_entry().await {
                let path = entry.path();
                if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
                    continue;
                }
                let Ok(meta) = entry.metadata().await else {
                    continue;
                };
                let stamp = (
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    meta.len(),
                );
                if seen.get(&path) == Some(&stamp) {
                    continue;
                }
                seen.insert(path.clone(), stamp);
                match load_file(&path, &tenant, store.as_ref(), &catalog, &plugins).await {
                    Ok(Some(loaded)) => {
                        tracing::info!(tenant, plugin = %loaded, file = %path.display(), "plugin loaded from plugins dir")
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "plugin file rejected")
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => return,
        }
    }
}
