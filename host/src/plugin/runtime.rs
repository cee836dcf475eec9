//! [`PluginRuntime`]: prepares uploads (validate, compile, persist) and loads
//! prepared versions as the typed handle of their kind — from memory, from
//! this host's compiled artifact, or by recompiling the stored `.wasm`.
//! Running them is in `kinds` (the calls) and `invoke` (the sandbox).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use wasmtime::component::{Component, Linker};

use super::artifact::{self, ArtifactStore};
use super::bindings::connector::ConnectorPluginPre;
use super::bindings::filter::FilterPluginPre;
use super::bindings::transformer::TransformerPluginPre;
use super::cache::PluginCache;
use super::classify::chain;
use super::engine::{EngineSizing, PluginEngine};
use super::invoke::Sandbox;
use super::kinds::{ConnectorPlugin, FilterPlugin, LoadedPlugin, PluginHandle, TransformerPlugin};
use super::state::{self, PluginState};
use super::validate::{self, PluginError, PluginErrorCode};
use super::{PluginKind, Prepared, RuntimeConfig, RuntimeStats};

#[derive(Default)]
struct Counters {
    compiles: AtomicU64,
    artifact_loads: AtomicU64,
    artifact_rejects: AtomicU64,
}

/// The plugin runtime: one per process, shared as `Arc<PluginRuntime>`.
pub struct PluginRuntime {
    pub(super) sandbox: Sandbox,
    linkers: [Linker<PluginState>; 3],
    artifacts: ArtifactStore,
    cache: PluginCache,
    pub(super) config: RuntimeConfig,
    counters: Counters,
}

fn linker_index(kind: PluginKind) -> usize {
    match kind {
        PluginKind::Filter => 0,
        PluginKind::Transformer => 1,
        PluginKind::Connector => 2,
    }
}

impl PluginRuntime {
    /// Builds the engine, the linkers and the plugin directories.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let engine = PluginEngine::new(EngineSizing {
            max_instances: config.max_instances,
            consume_fuel: config.consume_fuel,
        })?;
        let linker = |kind| {
            state::linker(&engine.engine, kind)
                .map_err(|e| anyhow::anyhow!("linking {} host functions: {e}", kind.as_str()))
        };
        let linkers = [
            linker(PluginKind::Filter)?,
            linker(PluginKind::Transformer)?,
            linker(PluginKind::Connector)?,
        ];
        let artifacts = ArtifactStore::open(&config.data_dir, &engine.compat)?;
        Ok(Self {
            linkers,
            artifacts,
            cache: PluginCache::new(config.max_cached_plugins),
            counters: Counters::default(),
            sandbox: Sandbox::new(engine, config.outbound.clone()),
            config,
        })
    }

    /// Counters: compiles, artifact loads and rejects, invocations.
    pub fn stats(&self) -> RuntimeStats {
        let c = &self.counters;
        RuntimeStats {
            compiles: c.compiles.load(Ordering::Relaxed),
            artifact_loads: c.artifact_loads.load(Ordering::Relaxed),
            artifact_rejects: c.artifact_rejects.load(Ordering::Relaxed),
            invocations: self.sandbox.invocations.load(Ordering::Relaxed),
        }
    }

    /// Forgets a loaded version (e.g. after the plugin was deleted); its
    /// files stay, content-addressed, for other plugins with the same bytes.
    pub fn evict(&self, sha256: &str) {
        self.cache.remove(sha256);
    }

    /// Instance slots free right now (a gauge: 0 means invocations queue).
    pub fn idle_instances(&self) -> usize {
        self.sandbox.engine.slots.available_permits()
    }

    /// Whether this host has the component (its `.wasm`) in its data dir.
    pub fn is_stored(&self, sha256: &str) -> bool {
        artifact::is_sha256(sha256) && self.artifacts.wasm_path(sha256).exists()
    }

    /// The component as stored by [`PluginRuntime::prepare`] (to share it).
    pub fn stored_wasm(&self, sha256: &str) -> std::io::Result<Vec<u8>> {
        if !artifact::is_sha256(sha256) {
            return Err(std::io::Error::other(format!(
                "`{sha256}` is not a sha256 digest"
            )));
        }
        self.artifacts.read_wasm(sha256)
    }

    /// Where this host keeps its compiled artifact of a component.
    pub fn artifact_path(&self, sha256: &str) -> PathBuf {
        self.artifacts.artifact_path(sha256)
    }

    /// Validate, compile, persist the .wasm and artifact, cache. Idempotent
    /// per sha256. CPU-heavy (compiles): call it from a blocking task.
    pub fn prepare(&self, wasm: &[u8]) -> Result<Prepared, PluginError> {
        validate::check_header(wasm, self.config.max_upload_bytes)?;
        let sha256 = artifact::sha256_hex(wasm);
        if let Some(p) = self.cache.get(&sha256) {
            return Ok(Prepared {
                kind: p.kind(),
                sha256,
                size: wasm.len(),
                compile_ms: 0,
            });
        }
        // Stored by an earlier process: reuse its artifact, compile nothing.
        if self.artifacts.wasm_path(&sha256).exists()
            && let Some(loaded) = self.load_artifact(&sha256)
        {
            let kind = loaded.kind();
            self.cache.insert(sha256.clone(), loaded);
            return Ok(Prepared {
                kind,
                sha256,
                size: wasm.len(),
                compile_ms: 0,
            });
        }
        let started = Instant::now();
        let component = self.compile(wasm)?;
        let compile_ms = started.elapsed().as_millis() as u64;
        let loaded = self.instantiate_pre(&sha256, &component)?;
        self.artifacts
            .write_wasm(&sha256, wasm)
            .map_err(|e| internal(format!("storing the plugin: {e}")))?;
        self.store_artifact(&sha256, &component);
        let kind = loaded.kind();
        self.cache.insert(sha256.clone(), loaded);
        Ok(Prepared {
            kind,
            sha256,
            size: wasm.len(),
            compile_ms,
        })
    }

    /// Loads a prepared version as the handle of its kind: memory cache →
    /// this host's artifact → recompile from the stored .wasm (and rewrite
    /// the artifact).
    pub fn load(&self, sha256: &str) -> Result<LoadedPlugin, PluginError> {
        if !artifact::is_sha256(sha256) {
            return Err(PluginError::new(
                PluginErrorCode::NotFound,
                format!("`{sha256}` is not a sha256 digest"),
            ));
        }
        if let Some(p) = self.cache.get(sha256) {
            return Ok(p);
        }
        let loaded = match self.load_artifact(sha256) {
            Some(loaded) => loaded,
            None => {
                let wasm = self.artifacts.read_wasm(sha256).map_err(|e| {
                    PluginError::new(
                        PluginErrorCode::NotFound,
                        format!("no stored plugin {sha256}: {e}"),
                    )
                })?;
                let component = self.compile(&wasm)?;
                let loaded = self.instantiate_pre(sha256, &component)?;
                self.store_artifact(sha256, &component);
                loaded
            }
        };
        self.cache.insert(sha256.to_owned(), loaded.clone());
        Ok(loaded)
    }

    /// Loads a prepared version that must be of `P`'s kind; another kind is
    /// refused with [`PluginErrorCode::WrongKind`].
    pub fn load_as<P: PluginHandle>(&self, sha256: &str) -> Result<P, PluginError> {
        let loaded = self.load(sha256)?;
        P::from_loaded(&loaded).ok_or_else(|| {
            PluginError::new(
                PluginErrorCode::WrongKind,
                format!(
                    "plugin {sha256} is a {}, not a {}",
                    loaded.kind().as_str(),
                    P::KIND.as_str()
                ),
            )
        })
    }

    fn load_artifact(&self, sha256: &str) -> Option<LoadedPlugin> {
        let bytes = match self.artifacts.read_artifact(sha256) {
            Some(b) => b,
            None => {
                if self.artifacts.artifact_path(sha256).exists() {
                    self.counters
                        .artifact_rejects
                        .fetch_add(1, Ordering::Relaxed);
                }
                return None;
            }
        };
        match artifact::deserialize(&self.sandbox.engine.engine, &bytes) {
            Ok(component) => match self.instantiate_pre(sha256, &component) {
                Ok(loaded) => {
                    self.counters.artifact_loads.fetch_add(1, Ordering::Relaxed);
                    Some(loaded)
                }
                Err(e) => {
                    tracing::warn!(%sha256, error = %e, "plugin artifact no longer links; recompiling");
                    self.counters
                        .artifact_rejects
                        .fetch_add(1, Ordering::Relaxed);
                    None
                }
            },
            Err(e) => {
                tracing::warn!(%sha256, error = %e, "plugin artifact rejected; recompiling");
                self.counters
                    .artifact_rejects
                    .fetch_add(1, Ordering::Relaxed);
                self.artifacts.remove_artifact(sha256);
                None
            }
        }
    }

    fn compile(&self, wasm: &[u8]) -> Result<Component, PluginError> {
        self.counters.compiles.fetch_add(1, Ordering::Relaxed);
        Component::new(&self.sandbox.engine.engine, wasm).map_err(|e| {
            PluginError::new(
                PluginErrorCode::CompileFailed,
                format!("invalid component: {}", chain(&e)),
            )
        })
    }

    fn store_artifact(&self, sha256: &str, component: &Component) {
        let written = component
            .serialize()
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                self.artifacts
                    .write_artifact(sha256, &bytes)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            // Not fatal: the next load recompiles from the .wasm.
            tracing::warn!(%sha256, error = %e, "could not store plugin artifact");
        }
    }

    /// Tells the component's kind from its exports and pre-instantiates it
    /// as that kind's handle.
    fn instantiate_pre(
        &self,
        sha256: &str,
        component: &Component,
    ) -> Result<LoadedPlugin, PluginError> {
        let kind = validate::classify(&self.sandbox.engine.engine, component)?;
        let incompatible = |e: wasmtime::Error| {
            PluginError::new(
                PluginErrorCode::IncompatibleWorld,
                format!(
                    "the component does not match the busbar:plugin {} world: {}",
                    kind.as_str(),
                    chain(&e)
                ),
            )
        };
        let pre = self.linkers[linker_index(kind)]
            .instantiate_pre(component)
            .map_err(incompatible)?;
        Ok(match kind {
            PluginKind::Filter => {
                FilterPlugin::new(sha256, FilterPluginPre::new(pre).map_err(incompatible)?).into()
            }
            PluginKind::Transformer => TransformerPlugin::new(
                sha256,
                TransformerPluginPre::new(pre).map_err(incompatible)?,
            )
            .into(),
            PluginKind::Connector => {
                ConnectorPlugin::new(sha256, ConnectorPluginPre::new(pre).map_err(incompatible)?)
                    .into()
            }
        })
    }
}

fn internal(message: String) -> PluginError {
    PluginError::new(PluginErrorCode::Internal, message)
}
