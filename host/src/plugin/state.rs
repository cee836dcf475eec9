//! The data of one plugin [`Store`]: an empty WASI context, the host
//! capabilities and the limits' bookkeeping. One per invocation.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{
    CallHook, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::types;
use super::config::{self, PluginConfig};
use super::cpu::CpuClock;
use super::engine::{MAX_MEMORY_BYTES, PluginEngine};
use super::log::{self, LogSource, PluginLog};
use super::outbound::OutboundHttp;
use super::{PluginKind, PluginLimits};

/// The `T` of every plugin `Store<T>`.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: OutboundHttp,
    pub(crate) log: PluginLog,
    config: PluginConfig,
    pub(crate) limiter: Limiter,
    /// The invocation's CPU time so far.
    pub(crate) clock: Arc<CpuClock>,
    /// CPU time the guest may use.
    cpu_limit: Duration,
    /// Set when the CPU deadline interrupted the guest.
    pub(crate) deadline_hit: bool,
    /// Bytes a guest may pass into one host call.
    pub(crate) hostcall_bytes: usize,
    /// Bytes the host copies out of the guest's result before giving up.
    pub(crate) result_bytes: usize,
}

impl PluginState {
    /// A state with an empty WASI context whose stdout/stderr go to `log`;
    /// the guest's result may cost `result_bytes` to copy into the host.
    pub fn new(
        log: PluginLog,
        config: PluginConfig,
        hooks: OutboundHttp,
        limits: &PluginLimits,
        result_bytes: usize,
    ) -> Self {
        // The builder's defaults are the sandbox: no environment, no
        // arguments, no preopened directories, stdin closed, no sockets
        // and no name lookup.
        let wasi = WasiCtx::builder()
            .stdout(log.stream(LogSource::Stdout))
            .stderr(log.stream(LogSource::Stderr))
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks,
            log,
            config,
            limiter: Limiter::new(limits.memory_bytes),
            clock: Arc::default(),
            cpu_limit: Duration::from_millis(limits.cpu_ms),
            deadline_hit: false,
            hostcall_bytes: limits.hostcall_bytes,
            result_bytes,
        }
    }

    /// Starts a new CPU budget (for a reused instance).
    #[cfg(feature = "bench-internals")]
    pub fn reset_deadline(&mut self) {
        self.clock = Arc::default();
        self.deadline_hit = false;
    }
}

/// Builds a store for `state` with every per-invocation limit applied.
pub fn store(
    engine: &PluginEngine,
    state: PluginState,
    limits: &PluginLimits,
) -> Store<PluginState> {
    let mut store = Store::new(&engine.engine, state);
    store.limiter(|s| &mut s.limiter);
    store.set_hostcall_fuel(limits.hostcall_bytes);
    store.set_max_component_handles(limits.max_handles);
    if engine.consume_fuel {
        // Cannot fail: the engine meters fuel.
        let _ = store.set_fuel(limits.fuel.unwrap_or(u64::MAX));
    }
    // Check every tick: trap once the invocation's measured CPU time (see
    // `cpu`) reaches the limit, otherwise yield to the executor, so a
    // spinning guest shares its worker thread. Time blocked in host calls is
    // not CPU time (the wall-clock timeout covers it).
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut cx| {
        let s = cx.data_mut();
        if s.clock.used() >= s.cpu_limit {
            s.deadline_hit = true;
            return Err(Trap::Interrupt.into());
        }
        s.clock.yielding();
        Ok(UpdateDeadline::Yield(1))
    });
    // Hostcall fuel bounds what wasmtime copies out of the guest: the
    // arguments of each host call (`hostcall_bytes`), and the result of the
    // guest's export once it returns (`result_bytes`), so an oversized
    // output is refused while copying, before it is all in host memory.
    // Every host call resets the budget; the export's return switches it.
    store.call_hook(|mut cx, hook| {
        let fuel = match hook {
            CallHook::CallingHost => cx.data().hostcall_bytes,
            CallHook::ReturningFromWasm => cx.data().result_bytes,
            CallHook::CallingWasm | CallHook::ReturningFromHost => return Ok(()),
        };
        cx.set_hostcall_fuel(fuel);
        Ok(())
    });
    store
}

/// A [`StoreLimits`] (trapping on a failed grow) that also records the peak
/// memory and whether the limit was hit.
pub struct Limiter {
    inner: StoreLimits,
    /// Largest linear memory size reached, in bytes.
    pub peak: usize,
    /// Set when a memory grow beyond the limit trapped.
    pub exceeded: bool,
}

impl Limiter {
    fn new(memory_bytes: usize) -> Self {
        Self {
            inner: StoreLimitsBuilder::new()
                .memory_size(memory_bytes.min(MAX_MEMORY_BYTES))
                .trap_on_grow_failure(true)
                .build(),
            peak: 0,
            exceeded: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        match self.inner.memory_growing(current, desired, maximum) {
            Ok(true) => {
                self.peak = self.peak.max(desired);
                Ok(true)
            }
            other => {
                self.exceeded = true;
                other
            }
        }
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.exceeded = true;
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl types::Host for PluginState {}

/// The linker for one plugin kind: WASI p2 (empty context), log, config,
/// and for connectors only, outbound `wasi:http`.
pub fn linker(
    engine: &wasmtime::Engine,
    kind: PluginKind,
) -> wasmtime::Result<Linker<PluginState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    types::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |s| s)?;
    log::add_to_linker(&mut linker, |s| &mut s.log)?;
    config::add_to_linker(&mut linker, |s| &mut s.config)?;
    if kind == PluginKind::Connector {
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    }
    Ok(linker)
}
