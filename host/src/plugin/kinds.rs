//! The three kinds of plugin as typed handles, and the calls of each kind.
//!
//! Loading a version gives the handle of the kind its component exports
//! ([`LoadedPlugin`], or [`PluginRuntime::load_as`] for one kind), and each
//! call takes only its kind's handle, so a plugin cannot be called as
//! another kind: the mistake does not compile.
//!
//! ```compile_fail
//! # async fn f(rt: &busbar::plugin::PluginRuntime, p: &busbar::plugin::FilterPlugin,
//! #            cx: &busbar::plugin::InvokeContext<'_>, e: &busbar::event::Event) {
//! rt.transform(p, cx, e).await; // a filter is not a transformer
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use wasmtime::Store;

use super::bindings::connector::ConnectorPluginPre;
use super::bindings::filter::FilterPluginPre;
use super::bindings::transformer::TransformerPluginPre;
use super::bindings::types::{CloudEvent, DeliveryError, PluginError as WitPluginError};
use super::convert::PluginInput;
use super::state::PluginState;
use super::{
    DeliveryResult, FailureKind, Invocation, InvokeContext, PluginFailure, PluginKind,
    PluginRuntime, convert,
};
use crate::event::{Event, StoredEvent};

/// A compiled, pre-instantiated plugin version of any kind, ready to run.
#[derive(Clone, Debug)]
pub enum LoadedPlugin {
    /// A filter.
    Filter(FilterPlugin),
    /// A transformer.
    Transformer(TransformerPlugin),
    /// A connector.
    Connector(ConnectorPlugin),
}

impl LoadedPlugin {
    /// The plugin's kind.
    pub fn kind(&self) -> PluginKind {
        match self {
            Self::Filter(_) => PluginKind::Filter,
            Self::Transformer(_) => PluginKind::Transformer,
            Self::Connector(_) => PluginKind::Connector,
        }
    }

    /// The component's sha256.
    pub fn sha256(&self) -> &str {
        match self {
            Self::Filter(p) => p.sha256(),
            Self::Transformer(p) => p.sha256(),
            Self::Connector(p) => p.sha256(),
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// The handle of one plugin kind: what [`PluginRuntime::load_as`] returns.
/// Implemented by [`FilterPlugin`], [`TransformerPlugin`] and
/// [`ConnectorPlugin`] only.
pub trait PluginHandle: Clone + Send + Sync + sealed::Sealed + 'static {
    /// The kind of plugin this handle runs.
    const KIND: PluginKind;

    /// This kind's handle, when `loaded` is of this kind.
    fn from_loaded(loaded: &LoadedPlugin) -> Option<Self>;
}

macro_rules! handle {
    ($(#[$doc:meta])* $name:ident, $pre:ident, $variant:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name {
            sha256: Arc<str>,
            pre: $pre<PluginState>,
        }

        impl $name {
            pub(super) fn new(sha256: &str, pre: $pre<PluginState>) -> Self {
                Self {
                    sha256: sha256.into(),
                    pre,
                }
            }

            /// The plugin's kind.
            pub fn kind(&self) -> PluginKind {
                PluginKind::$variant
            }

            /// The component's sha256.
            pub fn sha256(&self) -> &str {
                &self.sha256
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("sha256", &self.sha256)
                    .finish()
            }
        }

        impl sealed::Sealed for $name {}

        impl PluginHandle for $name {
            const KIND: PluginKind = PluginKind::$variant;

            fn from_loaded(loaded: &LoadedPlugin) -> Option<Self> {
                match loaded {
                    LoadedPlugin::$variant(p) => Some(p.clone()),
                    _ => None,
                }
            }
        }

        impl From<$name> for LoadedPlugin {
            fn from(p: $name) -> Self {
                Self::$variant(p)
            }
        }
    };
}

handle!(
    /// A loaded filter: decides whether an event goes on.
    FilterPlugin,
    FilterPluginPre,
    Filter
);
handle!(
    /// A loaded transformer: rewrites an event into zero or more events.
    TransformerPlugin,
    TransformerPluginPre,
    Transformer
);
handle!(
    /// A loaded connector: delivers batches of events to an external system.
    ConnectorPlugin,
    ConnectorPluginPre,
    Connector
);

impl FilterPlugin {
    /// Instantiates the filter in `store` and calls it once.
    async fn call(
        &self,
        store: &mut Store<PluginState>,
        event: &CloudEvent,
    ) -> wasmtime::Result<Result<bool, WitPluginError>> {
        let plugin = self.pre.instantiate_async(&mut *store).await?;
        plugin
            .busbar_plugin_filter()
            .call_filter(&mut *store, event)
            .await
    }

    /// Instantiates the filter in `store` (for a reused instance).
    #[cfg(feature = "bench-internals")]
    pub(super) async fn instantiate(
        &self,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<super::bindings::filter::FilterPlugin> {
        self.pre.instantiate_async(store).await
    }
}

impl TransformerPlugin {
    /// Instantiates the transformer in `store` and calls it once.
    async fn call(
        &self,
        store: &mut Store<PluginState>,
        event: &CloudEvent,
    ) -> wasmtime::Result<Result<Vec<CloudEvent>, WitPluginError>> {
        let plugin = self.pre.instantiate_async(&mut *store).await?;
        plugin
            .busbar_plugin_transformer()
            .call_transform(&mut *store, event)
            .await
    }
}

impl ConnectorPlugin {
    /// Instantiates the connector in `store` and asks it about its config.
    async fn call_validate_config(
        &self,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<Result<(), WitPluginError>> {
        let plugin = self.pre.instantiate_async(&mut *store).await?;
        plugin
            .busbar_plugin_connector()
            .call_validate_config(&mut *store)
            .await
    }

    /// Instantiates the connector in `store` and gives it a batch.
    async fn call_deliver(
        &self,
        store: &mut Store<PluginState>,
        events: &[CloudEvent],
    ) -> wasmtime::Result<Vec<Result<(), DeliveryError>>> {
        let plugin = self.pre.instantiate_async(&mut *store).await?;
        plugin
            .busbar_plugin_connector()
            .call_deliver(&mut *store, events)
            .await
    }
}

impl PluginRuntime {
    /// Runs a filter: `true` lets the event through the rule.
    pub async fn filter(
        &self,
        p: &FilterPlugin,
        cx: &InvokeContext<'_>,
        event: &(impl PluginInput + Sync + ?Sized),
    ) -> Result<Invocation<bool>, PluginFailure> {
        let event = event.to_wit();
        let (ret, meta) = self
            .sandbox
            .run(PluginKind::Filter, cx, async |store| {
                p.call(store, &event).await
            })
            .await?;
        match ret {
            Ok(pass) => Ok(meta.with(pass)),
            Err(e) => Err(meta.fail_guest(e)),
        }
    }

    /// Runs a transformer: the events that replace `event`, bounded in
    /// number and size, each validated as ingest validates events.
    pub async fn transform(
        &self,
        p: &TransformerPlugin,
        cx: &InvokeContext<'_>,
        event: &(impl PluginInput + Sync + ?Sized),
    ) -> Result<Invocation<Vec<StoredEvent>>, PluginFailure> {
        let event = event.to_wit();
        let (ret, meta) = self
            .sandbox
            .run(PluginKind::Transformer, cx, async |store| {
                p.call(store, &event).await
            })
            .await?;
        let out = match ret {
            Ok(out) => out,
            Err(e) => return Err(meta.fail_guest(e)),
        };
        let limits = cx.limits;
        if out.len() > limits.max_output_events {
            let msg = format!(
                "returned {} events; the limit is {}",
                out.len(),
                limits.max_output_events
            );
            return Err(meta.fail(FailureKind::OutputLimit, msg));
        }
        let bytes: usize = out.iter().map(convert::wit_size).sum();
        if bytes > limits.max_output_bytes {
            let msg = format!(
                "returned {bytes} bytes of events; the limit is {}",
                limits.max_output_bytes
            );
            return Err(meta.fail(FailureKind::OutputLimit, msg));
        }
        let mut events = Vec::with_capacity(out.len());
        for (i, ce) in out.into_iter().enumerate() {
            match convert::from_wit_stored(ce, &self.config.event_limits) {
                Ok(e) => events.push(e),
                Err(e) => {
                    let msg = format!("output event {i} is not a valid CloudEvent: {e}");
                    return Err(meta.fail(FailureKind::InvalidOutput, msg));
                }
            }
        }
        Ok(meta.with(events))
    }

    /// Asks a connector whether the target's configuration is usable.
    pub async fn validate_config(
        &self,
        p: &ConnectorPlugin,
        cx: &InvokeContext<'_>,
    ) -> Result<Invocation<()>, PluginFailure> {
        let (ret, meta) = self
            .sandbox
            .run(PluginKind::Connector, cx, async |store| {
                p.call_validate_config(store).await
            })
            .await?;
        match ret {
            Ok(()) => Ok(meta.with(())),
            Err(e) => Err(meta.fail_guest(e)),
        }
    }

    /// Runs a connector on a batch: one outcome per event, in order.
    pub async fn deliver(
        &self,
        p: &ConnectorPlugin,
        cx: &InvokeContext<'_>,
        events: &[Event],
    ) -> Result<Invocation<Vec<DeliveryResult>>, PluginFailure> {
        let batch: Vec<CloudEvent> = events.iter().map(convert::to_wit).collect();
        let (results, meta) = self
            .sandbox
            .run(PluginKind::Connector, cx, async |store| {
                p.call_deliver(store, &batch).await
            })
            .await?;
        if results.len() != events.len() {
            let msg = format!(
                "returned {} results for a batch of {} events",
                results.len(),
                events.len()
            );
            return Err(meta.fail(FailureKind::InvalidOutput, msg));
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
        Ok(meta.with(results))
    }
}
