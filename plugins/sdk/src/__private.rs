//! The WIT glue, compiled only for `wasm32`. Not part of the public API:
//! the export macros expand to paths into this module.

use std::cell::OnceCell;
use std::marker::PhantomData;

use crate::log::Level;
use crate::{Config, Connector, Context, DeliveryError, Event, Filter, PluginError, Transformer};

/// Bindings of the filter world. Its imports (`types`, `log`, `config`) are
/// the ones every kind shares, so the other worlds reuse them through
/// `with`, and the SDK has one Rust type per WIT type.
pub mod filter_bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "busbar:plugin/filter-plugin",
        runtime_path: "crate::wit_bindgen::rt",
        pub_export_macro: true,
    });
}

/// Bindings of the transformer world.
pub mod transformer_bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "busbar:plugin/transformer-plugin",
        runtime_path: "crate::wit_bindgen::rt",
        pub_export_macro: true,
        with: {
            "busbar:plugin/types@0.1.0": crate::__private::filter_bindings::busbar::plugin::types,
            "busbar:plugin/log@0.1.0": crate::__private::filter_bindings::busbar::plugin::log,
            "busbar:plugin/config@0.1.0": crate::__private::filter_bindings::busbar::plugin::config,
        },
    });
}

/// Bindings of the connector world; `wasi:http` comes from the `wasip2`
/// crate, which the HTTP client uses.
pub mod connector_bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "busbar:plugin/connector-plugin",
        runtime_path: "crate::wit_bindgen::rt",
        pub_export_macro: true,
        with: {
            "busbar:plugin/types@0.1.0": crate::__private::filter_bindings::busbar::plugin::types,
            "busbar:plugin/log@0.1.0": crate::__private::filter_bindings::busbar::plugin::log,
            "busbar:plugin/config@0.1.0": crate::__private::filter_bindings::busbar::plugin::config,
            "wasi:http/outgoing-handler@0.2.12": wasip2::http::outgoing_handler,
            "wasi:http/types@0.2.12": wasip2::http::types,
            "wasi:io/error@0.2.12": wasip2::io::error,
            "wasi:io/poll@0.2.12": wasip2::io::poll,
            "wasi:io/streams@0.2.12": wasip2::io::streams,
            "wasi:clocks/monotonic-clock@0.2.12": wasip2::clocks::monotonic_clock,
        },
    });
}

use filter_bindings::busbar::plugin::{config as wit_config, log as wit_log, types as wit};

pub(crate) fn log(level: Level, message: &str) {
    let level = match level {
        Level::Trace => wit::LogLevel::Trace,
        Level::Debug => wit::LogLevel::Debug,
        Level::Info => wit::LogLevel::Info,
        Level::Warn => wit::LogLevel::Warn,
        Level::Error => wit::LogLevel::Error,
    };
    wit_log::log(level, message);
}

fn host_config() -> Config {
    Config::from_pairs(wit_config::get_all())
}

thread_local! {
    /// The context of this instance, read from the host on first use. The
    /// host fixes an instance's configuration when it creates it, so an
    /// instance that handles many events (the host may reuse one) asks for
    /// it once instead of once per event.
    static CONTEXT: OnceCell<Context> = const { OnceCell::new() };
}

/// Runs `f` with this instance's context, made by `init` on first use.
/// (Only connectors pass an `init` that names `wasi:http`, so filters and
/// transformers never import it.)
fn with_context<R>(init: impl FnOnce() -> Context, f: impl FnOnce(&Context) -> R) -> R {
    CONTEXT.with(|cell| f(cell.get_or_init(init)))
}

fn plain_context() -> Context {
    Context::new(host_config())
}

fn connector_context() -> Context {
    Context::new(host_config()).with_http(crate::http::wasi::WasiHttp)
}

fn from_wit(event: wit::CloudEvent) -> Event {
    Event {
        id: event.id,
        source: event.source,
        ty: event.type_,
        specversion: event.specversion,
        subject: event.subject,
        time: event.time,
        datacontenttype: event.datacontenttype,
        dataschema: event.dataschema,
        extensions: event.extensions,
        data: event.data,
    }
}

fn to_wit(event: Event) -> wit::CloudEvent {
    wit::CloudEvent {
        id: event.id,
        source: event.source,
        type_: event.ty,
        specversion: event.specversion,
        subject: event.subject,
        time: event.time,
        datacontenttype: event.datacontenttype,
        dataschema: event.dataschema,
        extensions: event.extensions,
        data: event.data,
    }
}

fn plugin_error(err: PluginError) -> wit::PluginError {
    match err {
        PluginError::InvalidEvent(m) => wit::PluginError::InvalidEvent(m),
        PluginError::InvalidConfig(m) => wit::PluginError::InvalidConfig(m),
        PluginError::Internal(m) => wit::PluginError::Internal(m),
    }
}

fn delivery_error(err: DeliveryError) -> wit::DeliveryError {
    match err {
        DeliveryError::Retryable {
            message,
            retry_after_ms,
        } => wit::DeliveryError::Retryable(wit::RetryableError {
            message,
            retry_after_ms,
        }),
        DeliveryError::Permanent(m) => wit::DeliveryError::Permanent(m),
    }
}

/// Implements the generated filter `Guest` trait for a [`Filter`].
pub struct FilterExport<T>(PhantomData<T>);

impl<T: Filter> filter_bindings::exports::busbar::plugin::filter::Guest for FilterExport<T> {
    fn filter(event: wit::CloudEvent) -> Result<bool, wit::PluginError> {
        with_context(plain_context, |cx| {
            T::filter(&from_wit(event), cx).map_err(plugin_error)
        })
    }
}

/// Implements the generated transformer `Guest` trait for a [`Transformer`].
pub struct TransformerExport<T>(PhantomData<T>);

impl<T: Transformer> transformer_bindings::exports::busbar::plugin::transformer::Guest
    for TransformerExport<T>
{
    fn transform(event: wit::CloudEvent) -> Result<Vec<wit::CloudEvent>, wit::PluginError> {
        with_context(plain_context, |cx| {
            T::transform(from_wit(event), cx)
                .map(|events| events.into_iter().map(to_wit).collect())
                .map_err(plugin_error)
        })
    }
}

/// Implements the generated connector `Guest` trait for a [`Connector`].
pub struct ConnectorExport<T>(PhantomData<T>);

impl<T: Connector> connector_bindings::exports::busbar::plugin::connector::Guest
    for ConnectorExport<T>
{
    fn validate_config() -> Result<(), wit::PluginError> {
        with_context(connector_context, |cx| {
            T::validate_config(cx.config()).map_err(plugin_error)
        })
    }

    fn deliver(events: Vec<wit::CloudEvent>) -> Vec<Result<(), wit::DeliveryError>> {
        let events: Vec<Event> = events.into_iter().map(from_wit).collect();
        let mut outcomes: Vec<_> =
            with_context(connector_context, |cx| T::deliver_batch(&events, cx))
                .into_iter()
                .map(|outcome| outcome.map_err(delivery_error))
                .collect();
        // The host requires exactly one outcome per event; a plugin that
        // returned too few or too many gets its surplus cut and the missing
        // ones reported as retryable, rather than failing the whole batch.
        outcomes.resize_with(events.len(), || {
            Err(wit::DeliveryError::Retryable(wit::RetryableError {
                message: "connector returned no outcome for this event".to_owned(),
                retry_after_ms: None,
            }))
        });
        outcomes
    }
}
