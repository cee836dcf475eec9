//! `busbar serve --plugins-dir DIR`: local development without uploads.
//!
//! Every `*.wasm` file in the directory is registered as a plugin of the
//! development tenant, named after the file (`amount_filter.wasm` →
//! `amount_filter`); the directory is polled, and a changed file becomes the
//! plugin's next version, live, exactly as an upload would. The tenant is
//! created (with a `default` bus) if it does not exist yet.

use super::ControlPlane;
use crate::resource::{Registration, Upload, valid_name};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// How often the directory is looked at.
const POLL: Duration = Duration::from_secs(1);

/// Registers one file as the next version of its plugin (unless unchanged).
async fn load_file(
    path: &Path,
    tenant: &str,
    control: &ControlPlane,
) -> anyhow::Result<Option<String>> {
    let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
        return Ok(None);
    };
    if !valid_name(&name) {
        anyhow::bail!("{} is not a valid plugin name", name);
    }
    let wasm = tokio::fs::read(path).await?;
    let runtime = control.plugins().runtime.clone();
    let prepared = tokio::task::spawn_blocking(move || runtime.prepare(&wasm))
        .await?
        .map_err(|e| anyhow::anyhow!("{}: {}", e.code.as_str(), e.message))?;
    let upload = Upload {
        kind: prepared.kind,
        sha256: &prepared.sha256,
        size: prepared.size,
    };
    match control.register_plugin(tenant, &name, upload).await? {
        Registration::Unchanged(_) => Ok(None),
        Registration::Added(record) => Ok(Some(format!(
            "{name}@{} ({})",
            record.current,
            record.kind.as_str()
        ))),
    }
}

/// Watches `dir` until shutdown.
pub async fn watch_dir(
    dir: PathBuf,
    tenant: String,
    control: Arc<ControlPlane>,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Err(e) = control.ensure_tenant(&tenant).await {
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
                match load_file(&path, &tenant, &control).await {
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
