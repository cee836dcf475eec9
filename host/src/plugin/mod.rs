//! The WebAssembly plugin runtime: the sandbox that validates, compiles,
//! caches and runs the filters, transformers and connectors tenants upload
//! as components.
//!
//! - [`engine`] owns the one wasmtime engine (pooling, epochs, Cranelift);
//! - [`validate`] checks an upload and tells its kind;
//! - [`artifact`] and [`cache`] keep each version compiled once:
//!   content-addressed files on disk, loaded components in memory;
//! - [`PluginRuntime`] (`runtime`) prepares uploads and loads a version as
//!   the typed handle of its kind ([`FilterPlugin`], [`TransformerPlugin`],
//!   [`ConnectorPlugin`]); `kinds` has each kind's calls, which take only
//!   that kind's handle;
//! - `invoke` runs one invocation under every limit, `cpu` measures its CPU
//!   time and wall clock, and `classify` tells why it failed;
//! - [`log`], [`config`] and [`http`] are the host capabilities a guest can
//!   use; WASI p2 is linked with an empty context;
//! - [`limits`] are the per-invocation limits; [`convert`] maps events;
//! - [`registry`] runs tenants' bindings (name or name@version) for the
//!   router and the delivery engine, with per-tenant limits and pausing.
//!
//! Every invocation gets a fresh store and instance (microseconds with the
//! pooling allocator and copy-on-write memory images), so nothing leaks from
//! one event to the next, and a failure — trap, deadline, memory, output
//! limit — fails that invocation only.
//!
//! # Failures
//!
//! A failed invocation has a [`FailureKind`]; the bus records it as the
//! error code `plugin_<kind>` (dead letters, traces). Crashes count toward
//! pausing a version (`registry::PAUSE_AFTER_CRASHES`); the rest do not.
//!
//! | code | what happened | crash |
//! |------|---------------|-------|
//! | `plugin_deadline` | used its CPU time (`cpu_ms`, measured on the invocation's own time) or its fuel | yes |
//! | `plugin_out_of_memory` | grew its memory beyond `memory_bytes` | yes |
//! | `plugin_trap` | trapped: panic, stack overflow, unreachable, ... | yes |
//! | `plugin_timeout` | the wall clock (`timeout_ms`) ran out, e.g. blocked on outbound HTTP | no |
//! | `plugin_output_limit` | returned more events or bytes than `max_output_events`/`max_output_bytes` (refused while copying when far beyond), or passed more than `hostcall_bytes` to one host call | no |
//! | `plugin_invalid_output` | returned something the host refuses: a transformer's event that fails the validation ingested events pass (e.g. `datacontenttype: application/json` with data that is not JSON, larger than `max_event_bytes`), or a connector's result list of the wrong length | no |
//! | `plugin_invalid_event` | the plugin said the event it was given is invalid | no |
//! | `plugin_invalid_config` | the plugin said its configuration is unusable | no |
//! | `plugin_internal` | the plugin reported an internal error, or the host failed | no |

pub mod artifact;
mod bindings;
pub mod cache;
mod classify;
pub mod config;
pub mod convert;
mod cpu;
pub mod engine;
mod invoke;
mod kinds;
pub mod limits;
pub mod log;
pub mod outbound;
pub mod registry;
#[cfg(feature = "bench-internals")]
mod reused;
mod runtime;
mod state;
pub mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use self::outbound::OutboundConfig;
use crate::ingest::IngestLimits;

pub use self::kinds::{
    ConnectorPlugin, FilterPlugin, LoadedPlugin, PluginHandle, TransformerPlugin,
};
pub use self::limits::{KindLimits, LimitsOverride, LimitsOverrides, PluginLimits};
pub use self::log::{LogLevel, LogRecord, LogSource};
#[cfg(feature = "bench-internals")]
pub use self::reused::ReusedFilter;
pub use self::runtime::PluginRuntime;
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

/// Why an invocation failed. Only that invocation is affected. See the
/// module documentation for the codes and which count as crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Used its CPU time (measured on the invocation's own time, checked
    /// every epoch tick) or its fuel.
    Deadline,
    /// Tried to grow its memory beyond the limit.
    OutOfMemory,
    /// Trapped: panic, stack overflow, unreachable, bad host-call argument...
    Trap,
    /// The plugin said the event it was given is invalid (its own
    /// `invalid-event` error).
    InvalidEvent,
    /// The plugin said its configuration is unusable.
    InvalidConfig,
    /// Returned more events or bytes than the output limits allow (refused
    /// while copying when far beyond them), or passed more than
    /// `hostcall_bytes` into one host call.
    OutputLimit,
    /// The plugin reported an internal error, or the host failed.
    Internal,
    /// The wall-clock timeout expired (e.g. blocked on outbound HTTP).
    Timeout,
    /// Returned something the host refuses: a transformer's event that fails
    /// the validation ingested events pass, or a connector's result list
    /// whose length differs from the batch.
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
