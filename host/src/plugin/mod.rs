//! The WebAssembly plugin runtime: validates, compiles, caches and runs the
//! filters, transformers and connectors tenants upload as components.
//!
//! - [`engine`] owns the one wasmtime engine (pooling, epochs, Cranelift);
//! - [`validate`] checks an upload and tells its kind;
//! - [`artifact`] and [`cache`] keep each version compiled once:
//!   content-addressed files on disk, loaded components in memory;
//! - [`log`], [`config`] and [`http`] are the host capabilities a guest can
//!   use; WASI p2 is linked with an empty context;
//! - [`limits`] are the per-invocation limits; [`convert`] maps events.
//!
//! Every invocation gets a fresh store and instance (microseconds with the
//! pooling allocator and copy-on-write memory images), so nothing leaks from
//! one event to the next, and a failure — trap, deadline, memory, output
//! limit — fails that invocation only.

pub mod artifact;
mod bindings;
pub mod cache;
pub mod cli;
pub mod config;
pub mod convert;
pub mod engine;
pub mod http;
pub mod limits;
pub mod log;
pub mod registry;
mod state;
pub mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use wasmtime::component::Component;
use wasmtime::{Store, Trap};

use self::artifact::ArtifactStore;
use self::bindings::connector::ConnectorPluginPre;
use self::bindings::filter::FilterPluginPre;
use self::bindings::transformer::TransformerPluginPre;
use self::bindings::types::{CloudEvent, DeliveryError, PluginError as WitPluginError};
use self::cache::PluginCache;
use self::engine::{EngineSizing, PluginEngine};
use self::http::{OutboundConfig, OutboundHttp, TenantPermits};
use self::log::{LogTag, PluginLog};
use self::state::State;
use crate::event::Event;
use crate::ingest::IngestLimits;

pub use self::limits::{KindLimits, LimitsOverride, LimitsOverrides, PluginLimits};
pub use self::log::{LogLevel, LogRecord, LogSource};
pub use self::validate::{PluginError, PluginErrorCode};

pub use crate::resource::PluginKind;

/// How the runtime is set up; see [`RuntimeConfig::new`] for the defaults.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// The bus's data dir; plugins live under `<data_dir>/plugins/`.
    pub data_dir: PathBuf,
    /// Largest component accepted by [`PluginRuntime::prepare`].
    pub max_upload_bytes: usize,
    /// Plugin instances alive at once; more invocations wait for a slot.
    pub max_instances: u32,
    /// Loaded plugin versions kept in memory.
    pub max_cached_plugins: u64,
    /// Meter fuel so invocations report `fuel_used` (for `busbar plugin
    /// test`); costs CPU, so off in the server.
    pub consume_fuel: bool,
    /// Outbound HTTP policy of connectors.
    pub outbound: OutboundConfig,
    /// Limits events returned by transformers must meet, as ingest does.
    pub event_limits: IngestLimits,
}

impl RuntimeConfig {
    /// Defaults: 16 MiB uploads, 64 instances, 256 cached versions, no fuel.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            max_upload_bytes: 16 << 20,
            max_instances: 64,
            max_cached_plugins: 256,
            consume_fuel: false,
            outbound: OutboundConfig::default(),
            event_limits: IngestLimits::default(),
        }
    }
}

/// The outcome of a successful [`PluginRuntime::prepare`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Prepared {
    /// The kind told from the exports.
    pub kind: PluginKind,
    /// Lower-case hex sha256 of the component: its identity everywhere.
    pub sha256: String,
    /// Size of the component in bytes.
    pub size: usize,
    /// Time spent compiling (0 when it was already prepared).
    pub compile_ms: u64,
}

/// Who and what an invocation is for.
#[derive(Clone, Copy, Debug)]
pub struct InvokeContext<'a> {
    /// Tenant that owns the plugin (log tag, outbound request cap).
    pub tenant: &'a str,
    /// Plugin name (log tag).
    pub plugin: &'a str,
    /// Plugin version (log tag).
    pub version: u32,
    /// Event being handled (log tag; empty for `validate_config`).
    pub event_id: &'a str,
    /// Key-values from the rule or target, read by the guest's `config`.
    pub config: &'a BTreeMap<String, String>,
    /// Limits of this invocation.
    pub limits: &'a PluginLimits,
    /// Hosts a connector may call (`name`, `name:port` or `*.suffix`).
    pub allowed_hosts: &'a [String],
}

/// A successful invocation.
#[derive(Clone, Debug)]
pub struct Invocation<T> {
    /// What the plugin returned.
    pub value: T,
    /// Its log records (log interface, stdout, stderr), bounded.
    pub logs: Vec<LogRecord>,
    /// Wall-clock time including instantiation.
    pub elapsed: Duration,
    /// Fuel consumed, when the runtime meters fuel.
    pub fuel_used: Option<u64>,
    /// Largest linear memory the instance reached, in bytes.
    pub memory_peak: usize,
}

/// Why an invocation failed. Only that invocation is affected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Ran out of CPU time (epoch deadline) or fuel.
    Deadline,
    /// Tried to grow its memory beyond the limit.
    OutOfMemory,
    /// Trapped: panic, stack overflow, unreachable, bad host-call argument...
    Trap,
    /// The plugin said the event is invalid, or a transformer returned an
    /// invalid event.
    InvalidEvent,
    /// The plugin said its configuration is unusable.
    InvalidConfig,
    /// A transformer returned too many events or bytes.
    OutputLimit,
    /// The plugin reported an internal error, or the host failed.
    Internal,
    /// The wall-clock timeout expired (e.g. blocked on outbound HTTP).
    Timeout,
    /// A connector returned a result list whose length differs from the batch.
    InvalidOutput,
}

impl FailureKind {
    /// The kind's name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deadline => "deadline",
            Self::OutOfMemory => "out_of_memory",
            Self::Trap => "trap",
            Self::InvalidEvent => "invalid_event",
            Self::InvalidConfig => "invalid_config",
            Self::OutputLimit => "output_limit",
            Self::Internal => "internal",
            Self::Timeout => "timeout",
            Self::InvalidOutput => "invalid_output",
        }
    }
}

/// A failed invocation, with the logs the plugin wrote before it failed.
#[derive(Clone, Debug, thiserror::Error)]
#[error("plugin {}: {message}", kind.as_str())]
pub struct PluginFailure {
    /// What went wrong.
    pub kind: FailureKind,
    /// Detail for the event's trace.
    pub message: String,
    /// Records logged before the failure.
    pub logs: Vec<LogRecord>,
}

impl PluginFailure {
    fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            logs: Vec::new(),
        }
    }
}

/// A connector's outcome for one event of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryResult {
    /// Delivered.
    Delivered,
    /// May succeed later; retry under the rule's policy.
    Retryable {
        /// Why it failed.
        message: String,
        /// The receiver's requested delay, a lower bound on the backoff.
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help; dead-letter now.
    Permanent(String),
}

/// Counters exposed for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RuntimeStats {
    /// Components compiled from wasm (uploads and artifact misses).
    pub compiles: u64,
    /// Components loaded from this host's artifacts without compiling.
    pub artifact_loads: u64,
    /// Artifacts ignored because they failed to verify or deserialise.
    pub artifact_rejects: u64,
    /// Invocations started.
    pub invocations: u64,
}

#[derive(Default)]
struct Counters {
    compiles: AtomicU64,
    artifact_loads: AtomicU64,
    artifact_rejects: AtomicU64,
    invocations: AtomicU64,
}

enum Pre {
    Filter(FilterPluginPre<State>),
    Transformer(TransformerPluginPre<State>),
    Connector(ConnectorPluginPre<State>),
}

/// A compiled, pre-instantiated plugin version, ready to run.
pub struct LoadedPlugin {
    kind: PluginKind,
    sha256: String,
    pre: Pre,
}

impl LoadedPlugin {
    /// The plugin's kind.
    pub fn kind(&self) -> PluginKind {
        self.kind
    }

    /// The component's sha256.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("kind", &self.kind)
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// The plugin runtime: one per process, shared as `Arc<PluginRuntime>`.
pub struct PluginRuntime {
    engine: PluginEngine,
    linkers: [wasmtime::component::Linker<State>; 3],
    artifacts: ArtifactStore,
    cache: PluginCache,
    config: RuntimeConfig,
    outbound: Arc<OutboundConfig>,
    permits: TenantPermits,
    counters: Counters,
}

fn linker_index(kind: PluginKind) -> usize {
    match kind {
        PluginKind::Filter => 0,
        PluginKind::Transformer => 1,
        PluginKind::Connector => 2,
    }
}

/// What to call in the guest.
enum Call {
    Filter(CloudEvent),
    Transform(CloudEvent),
    ValidateConfig,
    Deliver(Vec<CloudEvent>),
}

/// What the guest returned.
enum Returned {
    Filter(Result<bool, WitPluginError>),
    Transform(Result<Vec<CloudEvent>, WitPluginError>),
    ValidateConfig(Result<(), WitPluginError>),
    Deliver(Vec<Result<(), DeliveryError>>),
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
            outbound: Arc::new(config.outbound.clone()),
            permits: TenantPermits::default(),
            counters: Counters::default(),
            engine,
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
            invocations: c.invocations.load(Ordering::Relaxed),
        }
    }

    /// Forgets a loaded version (e.g. after the plugin was deleted); its
    /// files stay, content-addressed, for other plugins with the same bytes.
    pub fn evict(&self, sha256: &str) {
        self.cache.remove(sha256);
    }

    /// Instance slots free right now (a gauge: 0 means invocations queue).
    pub fn idle_instances(&self) -> usize {
        self.engine.slots.available_permits()
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
                kind: p.kind,
                sha256,
                size: wasm.len(),
                compile_ms: 0,
            });
        }
        // Stored by an earlier process: reuse its artifact, compile nothing.
        if self.artifacts.wasm_path(&sha256).exists()
            && let Some(loaded) = self.load_artifact(&sha256)
        {
            let kind = loaded.kind;
            self.cache.insert(sha256.clone(), Arc::new(loaded));
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
        let kind = loaded.kind;
        self.cache.insert(sha256.clone(), Arc::new(loaded));
        Ok(Prepared {
            kind,
            sha256,
            size: wasm.len(),
            compile_ms,
        })
    }

    /// Loads a prepared version: memory cache → this host's artifact →
    /// recompile from the stored .wasm (and rewrite the artifact).
    pub fn load(&self, sha256: &str) -> Result<Arc<LoadedPlugin>, PluginError> {
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
        let loaded = Arc::new(loaded);
        self.cache.insert(sha256.to_owned(), loaded.clone());
        Ok(loaded)
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
        match artifact::deserialize(&self.engine.engine, &bytes) {
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
        Component::new(&self.engine.engine, wasm).map_err(|e| {
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

    fn instantiate_pre(
        &self,
        sha256: &str,
        component: &Component,
    ) -> Result<LoadedPlugin, PluginError> {
        let kind = validate::classify(&self.engine.engine, component)?;
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
        let pre = match kind {
            PluginKind::Filter => Pre::Filter(FilterPluginPre::new(pre).map_err(incompatible)?),
            PluginKind::Transformer => {
                Pre::Transformer(TransformerPluginPre::new(pre).map_err(incompatible)?)
            }
            PluginKind::Connector => {
                Pre::Connector(ConnectorPluginPre::new(pre).map_err(incompatible)?)
            }
        };
        Ok(LoadedPlugin {
            kind,
            sha256: sha256.to_owned(),
            pre,
        })
    }

    /// Runs a filter: `true` lets the event through the rule.
    pub async fn filter(
        &self,
        p: &LoadedPlugin,
        cx: &InvokeContext<'_>,
        event: &Event,
    ) -> Result<Invocation<bool>, PluginFailure> {
        let (ret, inv) = self
            .run(
                p,
                cx,
                PluginKind::Filter,
                Call::Filter(convert::to_wit(event)),
            )
            .await?;
        match ret {
            Returned::Filter(Ok(pass)) => Ok(inv.with(pass)),
            Returned::Filter(Err(e)) => Err(inv.fail_guest(e)),
            _ => Err(inv.fail(FailureKind::Internal, "mismatched call")),
        }
    }

    /// Runs a transformer: the events that replace `event` (validated like
    /// ingested events; bounded in number and size).
    pub async fn transform(
        &self,
        p: &LoadedPlugin,
        cx: &InvokeContext<'_>,
        event: &Event,
    ) -> Result<Invocation<Vec<Event>>, PluginFailure> {
        let (ret, inv) = self
            .run(
                p,
                cx,
                PluginKind::Transformer,
                Call::Transform(convert::to_wit(event)),
            )
            .await?;
        let out = match ret {
            Returned::Transform(Ok(out)) => out,
            Returned::Transform(Err(e)) => return Err(inv.fail_guest(e)),
            _ => return Err(inv.fail(FailureKind::Internal, "mismatched call")),
        };
        let limits = cx.limits;
        if out.len() > limits.max_output_events {
            let msg = format!(
                "returned {} events; the limit is {}",
                out.len(),
                limits.max_output_events
            );
            return Err(inv.fail(FailureKind::OutputLimit, msg));
        }
        let bytes: usize = out.iter().map(convert::wit_size).sum();
        if bytes > limits.max_output_bytes {
            let msg = format!(
                "returned {bytes} bytes of events; the limit is {}",
                limits.max_output_bytes
            );
            return Err(inv.fail(FailureKind::OutputLimit, msg));
        }
        let mut events = Vec::with_capacity(out.len());
        for (i, ce) in out.into_iter().enumerate() {
            match convert::from_wit(ce, &self.config.event_limits) {
                Ok(e) => events.push(e),
                Err(e) => {
                    let msg = format!("output event {i} is not a valid CloudEvent: {e}");
                    return Err(inv.fail(FailureKind::InvalidEvent, msg));
                }
            }
        }
        Ok(inv.with(events))
    }

    /// Asks a connector whether the target's configuration is usable.
    pub async fn validate_config(
        &self,
        p: &LoadedPlugin,
        cx: &InvokeContext<'_>,
    ) -> Result<Invocation<()>, PluginFailure> {
        let (ret, inv) = self
            .run(p, cx, PluginKind::Connector, Call::ValidateConfig)
            .await?;
        match ret {
            Returned::ValidateConfig(Ok(())) => Ok(inv.with(())),
            Returned::ValidateConfig(Err(e)) => Err(inv.fail_guest(e)),
            _ => Err(inv.fail(FailureKind::Internal, "mismatched call")),
        }
    }

    /// Runs a connector on a batch: one outcome per event, in order.
    pub async fn deliver(
        &self,
        p: &LoadedPlugin,
        cx: &InvokeContext<'_>,
        events: &[Event],
    ) -> Result<Invocation<Vec<DeliveryResult>>, PluginFailure> {
        let batch = events.iter().map(convert::to_wit).collect();
        let (ret, inv) = self
            .run(p, cx, PluginKind::Connector, Call::Deliver(batch))
            .await?;
        let results = match ret {
            Returned::Deliver(r) => r,
            _ => return Err(inv.fail(FailureKind::Internal, "mismatched call")),
        };
        if results.len() != events.len() {
            let msg = format!(
                "returned {} results for a batch of {} events",
                results.len(),
                events.len()
            );
            return Err(inv.fail(FailureKind::InvalidOutput, msg));
        }
        let results = results
            .into_iter()
            .map(|r| match r {
                Ok(()) => DeliveryResult::Delivered,
                Err(DeliveryError::Retryable(e)) => DeliveryResult::Retryable {
                    message: e.message,
                    retry_after: e.retry_after_ms.map(Duration::from_millis),
                },
                Err(DeliveryError::Permanent(m)) => DeliveryResult::Permanent(m),
            })
            .collect();
        Ok(inv.with(results))
    }

    fn new_store(&self, kind: PluginKind, cx: &InvokeContext<'_>) -> Store<State> {
        let tag = LogTag {
            tenant: cx.tenant.to_owned(),
            plugin: cx.plugin.to_owned(),
            version: cx.version,
            event_id: cx.event_id.to_owned(),
        };
        let hooks = if kind == PluginKind::Connector {
            OutboundHttp::new(
                cx.tenant,
                cx.allowed_hosts,
                self.outbound.clone(),
                &self.permits,
            )
        } else {
            OutboundHttp::deny_all()
        };
        let state = State::new(
            PluginLog::new(tag, cx.limits.log_bytes),
            config::PluginConfig::new(cx.config.clone()),
            hooks,
            cx.limits,
        );
        state::store(&self.engine, state, cx.limits)
    }

    /// Instantiates `p` in a fresh store and makes one call, under every
    /// limit; classifies any failure.
    async fn run(
        &self,
        p: &LoadedPlugin,
        cx: &InvokeContext<'_>,
        expected: PluginKind,
        call: Call,
    ) -> Result<(Returned, Meta), PluginFailure> {
        if p.kind != expected {
            return Err(PluginFailure::new(
                FailureKind::Internal,
                format!(
                    "plugin {} is a {}, not a {}",
                    cx.plugin,
                    p.kind.as_str(),
                    expected.as_str()
                ),
            ));
        }
        self.counters.invocations.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        // An exhausted pool waits here rather than failing to instantiate.
        let _slot =
            self.engine.slots.acquire().await.map_err(|_| {
                PluginFailure::new(FailureKind::Internal, "plugin runtime shut down")
            })?;
        let mut store = self.new_store(p.kind, cx);
        let call_guest = call_guest(&p.pre, &mut store, call);
        let timeout = Duration::from_millis(cx.limits.timeout_ms);
        let outcome = tokio::time::timeout(timeout, call_guest).await;
        let fuel_used = if self.engine.consume_fuel {
            let initial = cx.limits.fuel.unwrap_or(u64::MAX);
            store.get_fuel().ok().map(|left| initial - left)
        } else {
            None
        };
        let state = store.data();
        let meta = Meta {
            logs: state.log.finish(),
            elapsed: started.elapsed(),
            fuel_used,
            memory_peak: state.limiter.peak,
        };
        match outcome {
            Ok(Ok(ret)) => Ok((ret, meta)),
            Ok(Err(e)) => {
                let (kind, message) = classify(&e, state);
                Err(meta.fail(kind, message))
            }
            Err(_) => Err(meta.fail(
                FailureKind::Timeout,
                format!("did not finish within {} ms", cx.limits.timeout_ms),
            )),
        }
    }
}

/// A filter instance kept across events: skips instantiation (for the
/// benchmark and trusted hot paths). Guest state survives between events,
/// so per-event isolation is lost; after a failure the instance is
/// discarded and every later call fails.
pub struct ReusedFilter {
    store: Store<State>,
    bindings: bindings::filter::FilterPlugin,
    limits: PluginLimits,
    poisoned: bool,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl ReusedFilter {
    /// Runs the filter on one event, under the CPU deadline.
    pub async fn filter(&mut self, event: &Event) -> Result<bool, PluginFailure> {
        if self.poisoned {
            return Err(PluginFailure::new(
                FailureKind::Internal,
                "the instance failed earlier and was discarded",
            ));
        }
        self.store.data_mut().reset_deadline(&self.limits);
        self.store.set_epoch_deadline(1);
        let ev = convert::to_wit(event);
        let timeout = Duration::from_millis(self.limits.timeout_ms);
        let call = self
            .bindings
            .busbar_plugin_filter()
            .call_filter(&mut self.store, &ev);
        let outcome = tokio::time::timeout(timeout, call).await;
        let logs = self.store.data().log.finish();
        let fail = |kind, message: String| PluginFailure {
            kind,
            message,
            logs: logs.clone(),
        };
        match outcome {
            Ok(Ok(Ok(pass))) => Ok(pass),
            Ok(Ok(Err(e))) => {
                let meta = Meta {
                    logs: logs.clone(),
                    elapsed: Duration::ZERO,
                    fuel_used: None,
                    memory_peak: 0,
                };
                Err(meta.fail_guest(e))
            }
            Ok(Err(e)) => {
                self.poisoned = true;
                let (kind, message) = classify(&e, self.store.data());
                Err(fail(kind, message))
            }
            Err(_) => {
                self.poisoned = true;
                Err(fail(FailureKind::Timeout, "timed out".to_owned()))
            }
        }
    }
}

impl PluginRuntime {
    /// Instantiates a filter once for many events (see [`ReusedFilter`]).
    pub async fn reused_filter(
        &self,
        p: &LoadedPlugin,
        cx: &InvokeContext<'_>,
    ) -> Result<ReusedFilter, PluginFailure> {
        let Pre::Filter(pre) = &p.pre else {
            return Err(PluginFailure::new(
                FailureKind::Internal,
                format!(
                    "plugin {} is a {}, not a filter",
                    cx.plugin,
                    p.kind.as_str()
                ),
            ));
        };
        let slot = self
            .engine
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PluginFailure::new(FailureKind::Internal, "plugin runtime shut down"))?;
        let mut store = self.new_store(p.kind, cx);
        let bindings = pre.instantiate_async(&mut store).await.map_err(|e| {
            let (kind, message) = classify(&e, store.data());
            PluginFailure::new(kind, message)
        })?;
        Ok(ReusedFilter {
            store,
            bindings,
            limits: cx.limits.clone(),
            poisoned: false,
            _slot: slot,
        })
    }
}

async fn call_guest(pre: &Pre, store: &mut Store<State>, call: Call) -> wasmtime::Result<Returned> {
    Ok(match (pre, call) {
        (Pre::Filter(pre), Call::Filter(ev)) => {
            let b = pre.instantiate_async(&mut *store).await?;
            Returned::Filter(
                b.busbar_plugin_filter()
                    .call_filter(&mut *store, &ev)
                    .await?,
            )
        }
        (Pre::Transformer(pre), Call::Transform(ev)) => {
            let b = pre.instantiate_async(&mut *store).await?;
            Returned::Transform(
                b.busbar_plugin_transformer()
                    .call_transform(&mut *store, &ev)
                    .await?,
            )
        }
        (Pre::Connector(pre), Call::ValidateConfig) => {
            let b = pre.instantiate_async(&mut *store).await?;
            Returned::ValidateConfig(
                b.busbar_plugin_connector()
                    .call_validate_config(&mut *store)
                    .await?,
            )
        }
        (Pre::Connector(pre), Call::Deliver(events)) => {
            let b = pre.instantiate_async(&mut *store).await?;
            Returned::Deliver(
                b.busbar_plugin_connector()
                    .call_deliver(&mut *store, &events)
                    .await?,
            )
        }
        _ => return Err(wasmtime::Error::msg("call does not match the plugin kind")),
    })
}

/// What the runtime measured about one invocation.
struct Meta {
    logs: Vec<LogRecord>,
    elapsed: Duration,
    fuel_used: Option<u64>,
    memory_peak: usize,
}

impl Meta {
    fn with<T>(self, value: T) -> Invocation<T> {
        Invocation {
            value,
            logs: self.logs,
            elapsed: self.elapsed,
            fuel_used: self.fuel_used,
            memory_peak: self.memory_peak,
        }
    }

    fn fail(self, kind: FailureKind, message: impl Into<String>) -> PluginFailure {
        PluginFailure {
            kind,
            message: message.into(),
            logs: self.logs,
        }
    }

    fn fail_guest(self, e: WitPluginError) -> PluginFailure {
        match e {
            WitPluginError::InvalidEvent(m) => self.fail(FailureKind::InvalidEvent, m),
            WitPluginError::InvalidConfig(m) => self.fail(FailureKind::InvalidConfig, m),
            WitPluginError::Internal(m) => self.fail(FailureKind::Internal, m),
        }
    }
}

/// Tells why a call failed, from the limits' flags and the trap code.
fn classify(e: &wasmtime::Error, state: &State) -> (FailureKind, String) {
    if state.deadline_hit {
        return (FailureKind::Deadline, "CPU time limit exceeded".to_owned());
    }
    if state.limiter.exceeded {
        return (
            FailureKind::OutOfMemory,
            format!("memory limit exceeded: {}", chain(e)),
        );
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel | Trap::Interrupt) => (
            FailureKind::Deadline,
            format!("fuel exhausted: {}", chain(e)),
        ),
        Some(Trap::StackOverflow) => (FailureKind::Trap, format!("stack overflow: {}", chain(e))),
        Some(trap) => (FailureKind::Trap, format!("{trap}: {}", chain(e))),
        None => (FailureKind::Trap, chain(e)),
    }
}

/// An error and its causes on one line.
fn chain(e: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    parts.dedup();
    parts.join(": ")
}

fn internal(message: String) -> PluginError {
    PluginError::new(PluginErrorCode::Internal, message)
}
