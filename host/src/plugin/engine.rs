//! The one place that owns the wasmtime [`Engine`]: every knob of its
//! [`Config`] is set here, with the reason next to it.
//!
//! The engine is shared by every plugin of every tenant. It compiles with
//! Cranelift, instantiates from a pooling allocator with copy-on-write memory
//! images (a fresh instance per invocation costs microseconds), and
//! interrupts guests with epochs advanced by a ticker thread. A semaphore in
//! front of the pool makes an invocation wait for a free slot instead of
//! failing when the pool is exhausted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

/// How often the ticker thread advances the engine's epoch: a running guest's
/// CPU time is checked against its deadline at every tick (see `cpu`), so
/// this is the deadline's resolution and a guest's longest slice.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Largest linear memory any plugin may grow to; per-plugin limits
/// ([`super::PluginLimits::memory_bytes`]) are clamped to it.
pub const MAX_MEMORY_BYTES: usize = 512 << 20;

/// Wasm stack a guest may use before it traps with a stack overflow.
const MAX_WASM_STACK: usize = 1 << 20;

/// Sizing of the engine, from [`super::RuntimeConfig`].
#[derive(Clone, Copy, Debug)]
pub struct EngineSizing {
    /// Plugin instances alive at once (pool slots and semaphore permits).
    pub max_instances: u32,
    /// Compile fuel metering into the code (for `busbar plugin test`).
    pub consume_fuel: bool,
}

/// The shared engine, its epoch ticker and the pool's admission semaphore.
pub struct PluginEngine {
    /// The wasmtime engine; cheap to clone, shared by all components.
    pub engine: Engine,
    /// One permit per pool slot: an invocation holds one while its instance
    /// lives, so an exhausted pool waits instead of failing to instantiate.
    pub slots: Arc<Semaphore>,
    /// Hex digest of `precompile_compatibility_hash`: artifacts compiled by
    /// another wasmtime version or configuration have another digest.
    pub compat: String,
    /// Whether stores meter fuel.
    pub consume_fuel: bool,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl PluginEngine {
    /// Builds the engine and starts its epoch ticker.
    pub fn new(sizing: EngineSizing) -> anyhow::Result<Self> {
        let engine = Engine::new(&config(sizing))
            .map_err(|e| anyhow::anyhow!("configuring the wasmtime engine: {e}"))?;
        let compat = compat_digest(&engine);
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            // The thread holds only a weak reference, so it never keeps the
            // engine alive; it also stops when the runtime is dropped.
            let weak = engine.weak();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("busbar-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        match weak.upgrade() {
                            Some(engine) => engine.increment_epoch(),
                            None => break,
                        }
                    }
                })?
        };
        Ok(Self {
            engine,
            slots: Arc::new(Semaphore::new(sizing.max_instances as usize)),
            compat,
            consume_fuel: sizing.consume_fuel,
            stop,
            ticker: Some(ticker),
        })
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

fn config(sizing: EngineSizing) -> Config {
    let instances = sizing.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::default();
    // One slot per concurrently live plugin instance; the semaphore in
    // `PluginEngine::slots` admits exactly this many.
    pool.total_component_instances(instances);
    // A Rust `wasm32-wasip2` component has one core module plus a few
    // wit-component shims; 16 leaves room for other toolchains' adapters.
    pool.max_core_instances_per_component(16);
    pool.total_core_instances(instances * 16);
    // One linear memory per component in practice; two for components that
    // carry an adapter with its own memory.
    pool.max_memories_per_component(2);
    pool.total_memories(instances * 2);
    pool.max_tables_per_component(16);
    pool.total_tables(instances * 16);
    // Async calls run on fiber stacks, one per live instance.
    pool.total_stacks(instances);
    // No plugin memory may exceed this, whatever its limits say.
    pool.max_memory_size(MAX_MEMORY_BYTES);
    // Function tables of real plugins hold a few thousand entries.
    pool.table_elements(20_000);
    // Keep up to 1 MiB of a freed memory slot resident and reset it in
    // place instead of madvise (whose page faults and TLB-flush IPIs cost
    // more than the small heaps plugins touch). With PAGEMAP_SCAN (Linux
    // 6.7+) only the pages the guest dirtied are reset, not the whole 1 MiB:
    // a fresh filter instance went from 65 to 21 µs (BENCHMARKS.md).
    pool.linear_memory_keep_resident(1 << 20);
    pool.table_keep_resident(64 << 10);
    pool.pagemap_scan(wasmtime::Enabled::Auto);

    let mut c = Config::new();
    c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // Instantiation maps the memory image copy-on-write instead of copying
    // data segments: the main reason a fresh instance costs microseconds.
    c.memory_init_cow(true);
    // Reserve 4 GiB (+ guard) of address space per memory slot so that 32-bit
    // loads and stores need no explicit bounds checks; it is address space,
    // not RAM. Memories never move, so they need no room to grow into.
    c.memory_reservation(4 << 30);
    c.memory_guard_size(32 << 20);
    c.memory_reservation_for_growth(0);
    // CPU deadlines: a ticker thread advances the epoch every `EPOCH_TICK`;
    // at each tick a store checks its invocation's CPU time and traps once
    // the budget is spent. Much cheaper than fuel, which instruments every
    // basic block.
    c.epoch_interruption(true);
    // Fuel only when asked (`busbar plugin test` reports instructions used);
    // it changes the generated code, and so the artifact compatibility hash.
    c.consume_fuel(sizing.consume_fuel);
    // Deep recursion traps with a stack overflow instead of taking the host
    // down; the fiber stack must be larger than the wasm stack limit.
    c.max_wasm_stack(MAX_WASM_STACK);
    c.async_stack_size(MAX_WASM_STACK + (1 << 20));
    // Cranelift optimising for speed: plugins are compiled once per version
    // and run per event. NaN canonicalisation is off: plugins need no
    // cross-platform bit-exact floats.
    c.strategy(wasmtime::Strategy::Cranelift);
    c.cranelift_opt_level(OptLevel::Speed);
    c.cranelift_nan_canonicalization(false);
    // Compile functions on all cores; uploads are rare, latency matters.
    c.parallel_compilation(true);
    // Trap messages name the guest functions on the stack (name section);
    // file/line details would parse DWARF on every trap, so they stay off.
    c.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Disable);
    c
}

/// A stable hex digest of the engine's precompile compatibility hash.
fn compat_digest(engine: &Engine) -> String {
    use std::hash::{Hash, Hasher};
    struct ShaHasher(Sha256);
    impl Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    let digest = h.0.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuel_changes_the_compatibility_digest() {
        let a = PluginEngine::new(EngineSizing {
            max_instances: 2,
            consume_fuel: false,
        })
        .unwrap();
        let b = PluginEngine::new(EngineSizing {
            max_instances: 2,
            consume_fuel: true,
        })
        .unwrap();
        let a2 = PluginEngine::new(EngineSizing {
            max_instances: 2,
            consume_fuel: false,
        })
        .unwrap();
        assert_ne!(a.compat, b.compat);
        assert_eq!(a.compat, a2.compat);
    }
}
