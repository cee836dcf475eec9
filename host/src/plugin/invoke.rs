//! One invocation in the sandbox, the same for every kind: wait for a pool
//! slot, build a fresh store with the invocation's limits, run the call
//! under the CPU deadline and the wall-clock timeout, measure it, and turn
//! whatever went wrong into a [`PluginFailure`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::Store;

use super::bindings::types::{CloudEvent, PluginError as WitPluginError};
use super::classify::classify;
use super::config::PluginConfig;
use super::cpu;
use super::engine::PluginEngine;
use super::log::{LogRecord, LogTag, PluginLog};
use super::outbound::{OutboundConfig, OutboundHttp, TenantPermits};
use super::state::{self, PluginState};
use super::{FailureKind, Invocation, InvokeContext, PluginFailure, PluginKind, PluginLimits};

/// Extension attributes per event allowed for in [`result_bytes`].
const EXTENSIONS_PER_EVENT: usize = 64;

/// What every invocation shares: the engine and its pool, the connectors'
/// outbound policy, and a counter.
pub(super) struct Sandbox {
    pub(super) engine: PluginEngine,
    outbound: Arc<OutboundConfig>,
    permits: TenantPermits,
    /// Invocations started.
    pub(super) invocations: AtomicU64,
}

impl Sandbox {
    pub(super) fn new(engine: PluginEngine, outbound: OutboundConfig) -> Self {
        Self {
            engine,
            outbound: Arc::new(outbound),
            permits: TenantPermits::default(),
            invocations: AtomicU64::new(0),
        }
    }

    /// A fresh store for one invocation of a `kind` plugin, with every limit
    /// of `cx` applied.
    pub(super) fn new_store(&self, kind: PluginKind, cx: &InvokeContext<'_>) -> Store<PluginState> {
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
        let state = PluginState::new(
            PluginLog::new(tag, cx.limits.log_bytes),
            PluginConfig::new(cx.config.clone()),
            hooks,
            cx.limits,
            result_bytes(kind, cx.limits),
        );
        state::store(&self.engine, state, cx.limits)
    }

    /// Waits for a pool slot, then makes one `call` in a fresh store of a
    /// `kind` plugin under every limit; classifies any failure.
    pub(super) async fn run<R>(
        &self,
        kind: PluginKind,
        cx: &InvokeContext<'_>,
        call: impl AsyncFnOnce(&mut Store<PluginState>) -> wasmtime::Result<R>,
    ) -> Result<(R, Meta), PluginFailure> {
        self.invocations.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        // An exhausted pool waits here rather than failing to instantiate.
        let _slot =
            self.engine.slots.acquire().await.map_err(|_| {
                PluginFailure::new(FailureKind::Internal, "plugin runtime shut down")
            })?;
        let mut store = self.new_store(kind, cx);
        let clock = store.data().clock.clone();
        let timeout = Duration::from_millis(cx.limits.timeout_ms);
        let outcome = cpu::metered(call(&mut store), &clock, timeout).await;
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
            Some(Ok(ret)) => Ok((ret, meta)),
            Some(Err(e)) => {
                let (kind, message) = classify(&e, state);
                Err(meta.fail(kind, message))
            }
            None => Err(meta.fail(
                FailureKind::Timeout,
                format!("did not finish within {} ms", cx.limits.timeout_ms),
            )),
        }
    }
}

/// Bytes the host copies out of a `kind` plugin's result before refusing it
/// as over its output limits (wasmtime's hostcall fuel, set when the export
/// returns). Copying charges each string and byte list by its length and
/// each list by its length times the host-side size of an element.
///
/// A transformer's result is bounded by its output limits: every allowed
/// event (with room for [`EXTENSIONS_PER_EVENT`] extension attributes each)
/// plus every allowed byte. A flood far beyond them stops copying early; the
/// exact limits are checked on what was copied. Other kinds return little
/// (a bool, one outcome per event), bounded like host-call arguments.
fn result_bytes(kind: PluginKind, limits: &PluginLimits) -> usize {
    match kind {
        PluginKind::Transformer => {
            let event =
                size_of::<CloudEvent>() + EXTENSIONS_PER_EVENT * size_of::<(String, String)>();
            limits
                .max_output_events
                .saturating_mul(event)
                .saturating_add(limits.max_output_bytes)
        }
        PluginKind::Filter | PluginKind::Connector => limits.hostcall_bytes,
    }
}

/// What the runtime measured about one invocation.
pub(super) struct Meta {
    pub(super) logs: Vec<LogRecord>,
    pub(super) elapsed: Duration,
    pub(super) fuel_used: Option<u64>,
    pub(super) memory_peak: usize,
}

impl Meta {
    /// A successful invocation that returned `value`.
    pub(super) fn with<T>(self, value: T) -> Invocation<T> {
        Invocation {
            value,
            logs: self.logs,
            elapsed: self.elapsed,
            fuel_used: self.fuel_used,
            memory_peak: self.memory_peak,
        }
    }

    /// A failed invocation, with the logs written before it failed.
    pub(super) fn fail(self, kind: FailureKind, message: impl Into<String>) -> PluginFailure {
        PluginFailure {
            kind,
            message: message.into(),
            logs: self.logs,
        }
    }

    /// A failure the guest reported itself.
    pub(super) fn fail_guest(self, e: WitPluginError) -> PluginFailure {
        match e {
            WitPluginError::InvalidEvent(m) => self.fail(FailureKind::InvalidEvent, m),
            WitPluginError::InvalidConfig(m) => self.fail(FailureKind::InvalidConfig, m),
            WitPluginError::Internal(m) => self.fail(FailureKind::Internal, m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transformer_result_within_the_output_limits_fits_its_copy_budget() {
        let limits = PluginLimits::default();
        let budget = result_bytes(PluginKind::Transformer, &limits);
        // Every allowed event, each with a few extensions, plus every allowed byte.
        let within = limits.max_output_events
            * (size_of::<CloudEvent>() + 8 * size_of::<(String, String)>())
            + limits.max_output_bytes;
        assert!(within <= budget);
        // A hundred times the allowed events are not copied, however small.
        assert!(100 * limits.max_output_events * size_of::<CloudEvent>() > budget);
        assert_eq!(
            result_bytes(PluginKind::Filter, &limits),
            limits.hostcall_bytes
        );
    }
}
