//! Running tenants' plugins for the router and the delivery engine.
//!
//! [`PluginHost`] resolves a binding (name, or name@version) against the
//! tenant's plugin records, runs it in the sandbox under the tenant's
//! limits, turns failures into the bus's failure codes, and pauses a
//! version that keeps crashing. The records themselves are
//! [`crate::resource::PluginRecord`]s, found through a [`PluginDirectory`].
//!
//! On a store several nodes share, components travel through the store's
//! [`Blobs`]: an upload is shared before its record is stored, and a node
//! that meets a version it does not have fetches the `.wasm` and prepares
//! it itself (compiling it, or loading its own artifact from an earlier
//! fetch) — it never runs machine code another node compiled.

use super::validate::PluginErrorCode;
use super::{
    ConnectorPlugin, DeliveryResult, FailureKind, FilterPlugin, InvokeContext, KindLimits,
    LimitsOverrides, PluginFailure, PluginHandle, PluginKind, PluginLimits, PluginRuntime,
    TransformerPlugin,
};
use crate::event::{Event, StoredEvent};
use crate::resource::{PluginBinding, PluginRecord};
use crate::store::{Blobs, FailureCode, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Consecutive crashes (trap, out of memory, deadline) after which a version is paused.
pub const PAUSE_AFTER_CRASHES: u32 = 5;

/// Where the host finds a tenant's plugins and the admin's limit overrides
/// (the control plane's catalog implements it).
pub trait PluginDirectory: Send + Sync + 'static {
    /// A tenant's plugin record.
    fn plugin(&self, tenant: &str, name: &str) -> Option<PluginRecord>;
    /// The admin's overrides of a tenant's plugin limits, if any.
    fn plugin_limits(&self, tenant: &str) -> Option<Arc<LimitsOverrides>>;
}

/// Why a plugin could not run or failed, in the bus's failure codes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct PluginCallError {
    /// `plugin_missing`, `plugin_paused`, `plugin_deadline`, ...
    pub code: FailureCode,
    /// Detail for the trace and the dead letter.
    pub message: String,
}

fn error(code: FailureCode, message: impl Into<String>) -> PluginCallError {
    PluginCallError {
        code,
        message: message.into(),
    }
}

/// The failure code recorded for a sandbox failure.
pub fn failure_code(kind: FailureKind) -> FailureCode {
    match kind {
        FailureKind::Deadline => FailureCode::PluginDeadline,
        FailureKind::OutOfMemory => FailureCode::PluginOutOfMemory,
        FailureKind::Trap => FailureCode::PluginTrap,
        FailureKind::InvalidEvent => FailureCode::PluginInvalidEvent,
        FailureKind::InvalidConfig => FailureCode::PluginInvalidConfig,
        FailureKind::OutputLimit => FailureCode::PluginOutputLimit,
        FailureKind::Internal => FailureCode::PluginInternal,
        FailureKind::Timeout => FailureCode::PluginTimeout,
        FailureKind::InvalidOutput => FailureCode::PluginInvalidOutput,
    }
}

/// Runs tenants' plugins on behalf of the router and the delivery engine.
pub struct PluginHost {
    /// The sandbox.
    pub runtime: Arc<PluginRuntime>,
    directory: Arc<dyn PluginDirectory>,
    /// The server's limits per kind; the admin's overrides for a tenant
    /// (from the directory) apply on top.
    pub defaults: KindLimits,
    /// Consecutive crashes per (tenant, plugin, version).
    crashes: Mutex<HashMap<(String, String, u32), u32>>,
    /// Invocations in progress per tenant, so one tenant's slow plugins cannot
    /// take every sandbox instance.
    tenant_slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Components shared with the other nodes (`None`: this process is the only one).
    shared: Option<Arc<dyn Blobs>>,
    /// One fetch at a time per component (sha256 → its turn).
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// How long a node keeps trying to fetch a component it does not have
/// while the shared store is unavailable, before the invocation fails.
const FETCH_PATIENCE: Duration = Duration::from_secs(5);

/// Plugin invocations one tenant may have running at once.
pub const TENANT_CONCURRENCY: usize = 8;

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost").finish_non_exhaustive()
    }
}

impl PluginHost {
    /// Builds the host.
    pub fn new(
        runtime: Arc<PluginRuntime>,
        directory: Arc<dyn PluginDirectory>,
        defaults: KindLimits,
    ) -> Self {
        Self {
            runtime,
            directory,
            defaults,
            crashes: Mutex::new(HashMap::new()),
            tenant_slots: Mutex::new(HashMap::new()),
            shared: None,
            fetching: Mutex::new(HashMap::new()),
        }
    }

    /// The same host, sharing components with the other nodes through
    /// `blobs` (when there are other nodes).
    pub fn sharing(self, blobs: Option<Arc<dyn Blobs>>) -> Self {
        Self {
            shared: blobs,
            ..self
        }
    }

    /// Makes a component this node prepared available to the other nodes.
    /// Called before its plugin record is stored, so a node that sees the
    /// record can always fetch the component.
    pub async fn share(&self, sha256: &str) -> Result<(), StoreError> {
        let Some(blobs) = &self.shared else {
            return Ok(());
        };
        let wasm = self
            .runtime
            .stored_wasm(sha256)
            .map_err(|e| StoreError::Backend(anyhow::anyhow!("reading plugin {sha256}: {e}")))?;
        blobs.put_blob(sha256, wasm.into()).await
    }

    /// Fetches and prepares a component in the background if this node
    /// does not have it yet (a plugin version another node uploaded), so
    /// the first event that needs it does not wait for the compile.
    pub fn prefetch(self: &Arc<Self>, sha256: &str) {
        if self.shared.is_none() || self.runtime.is_stored(sha256) {
            return;
        }
        let (me, sha256) = (self.clone(), sha256.to_owned());
        tokio::spawn(async move {
            if let Err(e) = me.fetch(&sha256).await {
                tracing::warn!(%sha256, error = %e, "cannot fetch a plugin component ahead of use");
            }
        });
    }

    /// Gets a component this node does not have from the shared store,
    /// checks its digest and prepares it here (validate, compile, keep the
    /// `.wasm` and this host's artifact). Waits up to [`FETCH_PATIENCE`]
    /// while the store is unavailable.
    async fn fetch(&self, sha256: &str) -> Result<(), PluginCallError> {
        let Some(blobs) = &self.shared else {
            return Err(error(
                FailureCode::PluginLoad,
                format!("no stored plugin {sha256}"),
            ));
        };
        let turn = {
            let mut fetching = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
            fetching.entry(sha256.to_owned()).or_default().clone()
        };
        let _turn = turn.lock().await;
        if self.runtime.is_stored(sha256) {
            // Another caller fetched it meanwhile.
            return Ok(());
        }
        let load = |message: String| error(FailureCode::PluginLoad, message);
        let deadline = tokio::time::Instant::now() + FETCH_PATIENCE;
        let wasm = loop {
            match blobs.get_blob(sha256).await {
                Ok(Some(wasm)) => break wasm,
                Ok(None) => {
                    return Err(load(format!(
                        "plugin component {sha256} is in no node's shared store"
                    )));
                }
                Err(StoreError::Unavailable(e)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%sha256, error = %e, "shared store unavailable; fetching again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(load(format!("cannot fetch plugin {sha256}: {e}"))),
            }
        };
        if super::artifact::sha256_hex(&wasm) != sha256 {
            return Err(load(format!(
                "the shared copy of plugin {sha256} does not match its digest"
            )));
        }
        // Validation and compilation are CPU-heavy: off the async workers.
        let runtime = self.runtime.clone();
        let prepared = tokio::task::spawn_blocking(move || runtime.prepare(&wasm))
            .await
            .map_err(|e| load(format!("preparing plugin {sha256}: {e}")))?
            .map_err(|e| load(format!("preparing plugin {sha256}: {e}")))?;
        tracing::info!(%sha256, kind = prepared.kind.as_str(), compile_ms = prepared.compile_ms, "plugin component fetched from the shared store");
        self.fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sha256);
        Ok(())
    }

    /// The limits `tenant`'s plugins of `kind` run under: the server's, with
    /// the admin's overrides for the tenant. Read per invocation, so a change
    /// applies from the next one.
    pub fn limits(&self, tenant: &str, kind: PluginKind) -> PluginLimits {
        match self.directory.plugin_limits(tenant) {
            Some(overrides) => overrides.apply(&self.defaults, kind),
            None => self.defaults.get(kind).clone(),
        }
    }

    /// Waits for one of the tenant's invocation slots.
    pub async fn tenant_slot(&self, tenant: &str) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut slots = self.tenant_slots.lock().unwrap_or_else(|p| p.into_inner());
            slots
                .entry(tenant.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(TENANT_CONCURRENCY)))
                .clone()
        };
        semaphore.acquire_owned().await.ok()
    }

    /// Whether a version is paused after repeated crashes.
    pub fn is_paused(&self, tenant: &str, name: &str, version: u32) -> bool {
        let crashes = self.crashes.lock().unwrap_or_else(|p| p.into_inner());
        crashes
            .get(&(tenant.to_owned(), name.to_owned(), version))
            .is_some_and(|n| *n >= PAUSE_AFTER_CRASHES)
    }

    /// Clears a version's crash count (e.g. when it becomes current again).
    pub fn resume(&self, tenant: &str, name: &str, version: u32) {
        let mut crashes = self.crashes.lock().unwrap_or_else(|p| p.into_inner());
        crashes.remove(&(tenant.to_owned(), name.to_owned(), version));
    }

    fn record(&self, tenant: &str, name: &str, version: u32, crashed: bool) {
        let mut crashes = self.crashes.lock().unwrap_or_else(|p| p.into_inner());
        let key = (tenant.to_owned(), name.to_owned(), version);
        if crashed {
            let n = crashes.entry(key).or_insert(0);
            *n += 1;
            if *n == PAUSE_AFTER_CRASHES {
                tracing::warn!(
                    tenant,
                    plugin = name,
                    version,
                    "plugin version paused after repeated crashes"
                );
            }
        } else {
            crashes.remove(&key);
        }
    }

    /// Finds the version a binding means right now and loads it (fetching
    /// it first if it is another node's upload this node has not seen).
    async fn resolve<P: PluginHandle>(
        &self,
        tenant: &str,
        binding: &PluginBinding,
    ) -> Result<(u32, P), PluginCallError> {
        let kind = P::KIND;
        let record = self
            .directory
            .plugin(tenant, &binding.name)
            .ok_or_else(|| {
                error(
                    FailureCode::PluginMissing,
                    format!("plugin {:?} no longer exists", binding.name),
                )
            })?;
        if record.kind != kind {
            return Err(error(
                FailureCode::PluginKind,
                format!(
                    "plugin {:?} is a {}, not a {}",
                    binding.name,
                    record.kind.as_str(),
                    kind.as_str()
                ),
            ));
        }
        let version = binding.version.unwrap_or(record.current);
        let v = record.version(version).ok_or_else(|| {
            error(
                FailureCode::PluginMissing,
                format!("plugin {} has no version {version}", binding.name),
            )
        })?;
        if self.is_paused(tenant, &binding.name, version) {
            return Err(error(
                FailureCode::PluginPaused,
                format!(
                    "{}@{version} is paused after {PAUSE_AFTER_CRASHES} consecutive crashes; upload a fix or roll back, then redrive",
                    binding.name
                ),
            ));
        }
        let sha256 = v.sha256.clone();
        let loaded = match self.runtime.load_as(&sha256) {
            Err(e) if e.code == PluginErrorCode::NotFound && self.shared.is_some() => {
                self.fetch(&sha256).await?;
                self.runtime.load_as(&sha256)
            }
            loaded => loaded,
        };
        let loaded = loaded.map_err(|e| {
            error(
                FailureCode::PluginLoad,
                format!("cannot load {}@{version}: {e}", binding.name),
            )
        })?;
        Ok((version, loaded))
    }

    fn context<'a>(
        &'a self,
        tenant: &'a str,
        binding: &'a PluginBinding,
        version: u32,
        event_id: &'a str,
        limits: &'a PluginLimits,
        allowed_hosts: &'a [String],
    ) -> InvokeContext<'a> {
        InvokeContext {
            tenant,
            plugin: &binding.name,
            version,
            event_id,
            config: &binding.config,
            limits,
            allowed_hosts,
        }
    }

    fn failed(
        &self,
        tenant: &str,
        binding: &PluginBinding,
        version: u32,
        f: PluginFailure,
    ) -> PluginCallError {
        let crashed = matches!(
            f.kind,
            FailureKind::Trap | FailureKind::OutOfMemory | FailureKind::Deadline
        );
        self.record(tenant, &binding.name, version, crashed);
        error(
            failure_code(f.kind),
            format!("{}@{version}: {}", binding.name, f.message),
        )
    }

    /// The version a binding runs right now (for traces), if the plugin exists.
    pub fn version_of(&self, tenant: &str, binding: &PluginBinding) -> Option<u32> {
        binding.version.or_else(|| {
            self.directory
                .plugin(tenant, &binding.name)
                .map(|r| r.current)
        })
    }

    /// Runs a filter; `Ok(true)` lets the event through.
    pub async fn filter(
        &self,
        tenant: &str,
        binding: &PluginBinding,
        event: &StoredEvent,
    ) -> Result<bool, PluginCallError> {
        let (version, plugin) = self.resolve::<FilterPlugin>(tenant, binding).await?;
        let limits = self.limits(tenant, PluginKind::Filter);
        let cx = self.context(tenant, binding, version, event.id(), &limits, &[]);
        match self.runtime.filter(&plugin, &cx, event).await {
            Ok(inv) => {
                self.record(tenant, &binding.name, version, false);
                Ok(inv.value)
            }
            Err(f) => Err(self.failed(tenant, binding, version, f)),
        }
    }

    /// Runs a transformer: zero or more events out.
    pub async fn transform(
        &self,
        tenant: &str,
        binding: &PluginBinding,
        event: &StoredEvent,
    ) -> Result<Vec<StoredEvent>, PluginCallError> {
        let (version, plugin) = self.resolve::<TransformerPlugin>(tenant, binding).await?;
        let limits = self.limits(tenant, PluginKind::Transformer);
        let cx = self.context(tenant, binding, version, event.id(), &limits, &[]);
        match self.runtime.transform(&plugin, &cx, event).await {
            Ok(inv) => {
                self.record(tenant, &binding.name, version, false);
                Ok(inv.value)
            }
            Err(f) => Err(self.failed(tenant, binding, version, f)),
        }
    }

    /// Checks a connector's configuration at deploy time.
    pub async fn validate_connector(
        &self,
        tenant: &str,
        binding: &PluginBinding,
        allowed_hosts: &[String],
    ) -> Result<(), PluginCallError> {
        let (version, plugin) = self.resolve::<ConnectorPlugin>(tenant, binding).await?;
        let limits = self.limits(tenant, PluginKind::Connector);
        let cx = self.context(tenant, binding, version, "", &limits, allowed_hosts);
        self.runtime
            .validate_config(&plugin, &cx)
            .await
            .map(|_| ())
            .map_err(|f| {
                error(
                    failure_code(f.kind),
                    format!("{}@{version}: {}", binding.name, f.message),
                )
            })
    }

    /// Delivers a batch of events through a connector: one result per event.
    pub async fn deliver(
        &self,
        tenant: &str,
        binding: &PluginBinding,
        allowed_hosts: &[String],
        events: &[Event],
    ) -> Result<Vec<DeliveryResult>, PluginCallError> {
        let (version, plugin) = self.resolve::<ConnectorPlugin>(tenant, binding).await?;
        let limits = self.limits(tenant, PluginKind::Connector);
        let event_id = events.first().map(Event::id).unwrap_or_default();
        let cx = self.context(tenant, binding, version, event_id, &limits, allowed_hosts);
        let _slot = self.tenant_slot(tenant).await;
        match self.runtime.deliver(&plugin, &cx, events).await {
            Ok(inv) => {
                self.record(tenant, &binding.name, version, false);
                Ok(inv.value)
            }
            Err(f) => Err(self.failed(tenant, binding, version, f)),
        }
    }
}
