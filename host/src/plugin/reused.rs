//! A filter instance kept across events, for the plugin benchmark only
//! (feature `bench-internals`): it measures the cost of a call without
//! instantiation. The server never uses it: guest state survives between
//! events, so per-event isolation is lost.

use std::time::Duration;

use wasmtime::Store;

use super::bindings::filter::FilterPlugin as FilterBindings;
use super::classify::classify;
use super::cpu;
use super::invoke::Meta;
use super::kinds::FilterPlugin;
use super::state::PluginState;
use super::{
    FailureKind, InvokeContext, PluginFailure, PluginKind, PluginLimits, PluginRuntime, convert,
};
use crate::event::Event;

/// A filter instance kept across events; after a failure the instance is
/// discarded and every later call fails.
pub struct ReusedFilter {
    store: Store<PluginState>,
    bindings: FilterBindings,
    limits: PluginLimits,
    poisoned: bool,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl ReusedFilter {
    /// Runs the filter on one event, under the CPU deadline and timeout.
    pub async fn filter(&mut self, event: &Event) -> Result<bool, PluginFailure> {
        if self.poisoned {
            return Err(PluginFailure::new(
                FailureKind::Internal,
                "the instance failed earlier and was discarded",
            ));
        }
        self.store.data_mut().reset_deadline();
        self.store.set_epoch_deadline(1);
        let clock = self.store.data().clock.clone();
        let ev = convert::to_wit(event);
        let timeout = Duration::from_millis(self.limits.timeout_ms);
        let call = self
            .bindings
            .busbar_plugin_filter()
            .call_filter(&mut self.store, &ev);
        let outcome = cpu::metered(call, &clock, timeout).await;
        let logs = self.store.data().log.finish();
        let fail = |kind, message: String| PluginFailure {
            kind,
            message,
            logs: logs.clone(),
        };
        match outcome {
            Some(Ok(Ok(pass))) => Ok(pass),
            Some(Ok(Err(e))) => {
                let meta = Meta {
                    logs: logs.clone(),
                    elapsed: Duration::ZERO,
                    fuel_used: None,
                    memory_peak: 0,
                };
                Err(meta.fail_guest(e))
            }
            Some(Err(e)) => {
                self.poisoned = true;
                let (kind, message) = classify(&e, self.store.data());
                Err(fail(kind, message))
            }
            None => {
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
        p: &FilterPlugin,
        cx: &InvokeContext<'_>,
    ) -> Result<ReusedFilter, PluginFailure> {
        let slot = self
            .sandbox
            .engine
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PluginFailure::new(FailureKind::Internal, "plugin runtime shut down"))?;
        let mut store = self.sandbox.new_store(PluginKind::Filter, cx);
        let bindings = p.instantiate(&mut store).await.map_err(|e| {
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
