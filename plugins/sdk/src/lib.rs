//! Write [Busbar](https://github.com/busbar/busbar) plugins in Rust.
//!
//! A plugin is a WebAssembly component of one of three kinds, each with its
//! own trait and export macro:
//!
//! | kind        | trait           | macro                      | what it does                     |
//! |-------------|-----------------|----------------------------|----------------------------------|
//! | filter      | [`Filter`]      | [`filter!`](crate::filter)           | event → keep or drop             |
//! | transformer | [`Transformer`] | [`transformer!`](crate::transformer) | event → zero or more events      |
//! | connector   | [`Connector`]   | [`connector!`](crate::connector)     | events → one outcome per event   |
//!
//! A whole filter:
//!
//! ```
//! use busbar_sdk::prelude::*;
//!
//! struct BigOrders;
//!
//! impl Filter for BigOrders {
//!     fn filter(event: &Event, cx: &Context) -> Result<bool, PluginError> {
//!         let threshold: f64 = cx.config().parse_or("threshold", 100.0)?;
//!         let total = event.json_value()?["total"].as_f64().unwrap_or(0.0);
//!         Ok(total > threshold)
//!     }
//! }
//!
//! busbar_sdk::filter!(BigOrders);
//! ```
//!
//! The traits take and return plain Rust types ([`Event`], [`Config`],
//! [`http::Request`]), and the WIT glue is compiled only for
//! `target_arch = "wasm32"`, so plugin logic is unit-tested natively with
//! `cargo test`; [`testing`] provides a fake HTTP client and captures logs.
//! Build the component with `cargo build --target wasm32-wasip2 --release`.
//!
//! The SDK owns the plugin WIT (`busbar:plugin@0.1.0`, vendored in the
//! crate's own `wit/` directory, a copy of the repository's `wit/` that the
//! test command keeps identical, so the crate builds wherever it is copied)
//! and the `wit_bindgen` bindings; plugin authors never touch either.

pub mod config;
mod context;
pub mod error;
pub mod event;
pub mod http;
pub mod log;
pub mod testing;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __private;

pub use config::Config;
pub use context::Context;
pub use error::{DeliveryError, PluginError};
pub use event::{Event, EventBuilder};

/// The bindings generator, re-exported so that generated code and the export
/// macros resolve it through this crate. Only in the component build: natively
/// there is no WIT glue to generate.
#[cfg(target_arch = "wasm32")]
pub use wit_bindgen;

/// `serde`, re-exported for plugins that only need `serde_json::Value`.
pub use serde;
/// `serde_json`, re-exported: event data is JSON most of the time.
pub use serde_json;

/// Everything a plugin usually needs: `use busbar_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::http::{HttpClient, HttpError, Request, Response};
    pub use crate::{
        Config, Connector, Context, DeliveryError, Event, EventBuilder, Filter, PluginError,
        Transformer,
    };
    pub use crate::{debug, error, info, trace, warn};
    pub use serde_json::{Value, json};
}

/// A filter plugin: decides whether an event goes on to a rule's targets.
///
/// Export an implementation with [`filter!`](crate::filter).
///
/// ```
/// use busbar_sdk::prelude::*;
///
/// /// Passes events of the `orders` source only.
/// struct OrdersOnly;
///
/// impl Filter for OrdersOnly {
///     fn filter(event: &Event, _cx: &Context) -> Result<bool, PluginError> {
///         Ok(event.source == "orders")
///     }
/// }
///
/// let cx = Context::default();
/// assert!(OrdersOnly::filter(&Event::new("1", "orders", "created"), &cx).unwrap());
/// ```
pub trait Filter {
    /// Returns `Ok(true)` to let `event` through, `Ok(false)` to drop it.
    ///
    /// Return [`PluginError::InvalidEvent`] for an event this filter cannot
    /// judge and [`PluginError::InvalidConfig`] for an unusable
    /// configuration; the host then drops the event and records the error.
    fn filter(event: &Event, cx: &Context) -> Result<bool, PluginError>;
}

/// A transformer plugin: rewrites one event into zero or more events.
///
/// Export an implementation with [`transformer!`](crate::transformer).
///
/// ```
/// use busbar_sdk::prelude::*;
///
/// /// Tags every event with the configured `team` extension.
/// struct Tag;
///
/// impl Transformer for Tag {
///     fn transform(mut event: Event, cx: &Context) -> Result<Vec<Event>, PluginError> {
///         event.set_extension("team", cx.config().require("team")?);
///         Ok(vec![event])
///     }
/// }
///
/// let cx = Context::new(Config::from_pairs([("team", "payments")]));
/// let out = Tag::transform(Event::new("1", "orders", "created"), &cx).unwrap();
/// assert_eq!(out[0].extension("team"), Some("payments"));
/// ```
pub trait Transformer {
    /// Returns the events that replace `event`: none drops it, one rewrites
    /// it, several split it.
    ///
    /// Output ids should be derived deterministically from the input (see
    /// [`Event::derive`]) so that a redelivered event yields the same ids.
    fn transform(event: Event, cx: &Context) -> Result<Vec<Event>, PluginError>;
}

/// A target connector plugin: delivers events to an external system,
/// usually over HTTP through [`Context::http`].
///
/// Export an implementation with [`connector!`](crate::connector).
///
/// ```
/// use busbar_sdk::prelude::*;
///
/// /// POSTs each event's data to the configured `url`.
/// struct Post;
///
/// impl Connector for Post {
///     fn validate_config(config: &Config) -> Result<(), PluginError> {
///         config.require("url").map(|_| ())
///     }
///
///     fn deliver(event: &Event, cx: &Context) -> Result<(), DeliveryError> {
///         let url = cx.config().require("url")?;
///         let request = Request::post(url).body(event.data.clone().unwrap_or_default());
///         cx.http().send(&request)?.error_for_status()
///     }
/// }
///
/// let http = busbar_sdk::testing::FakeHttp::new();
/// let cx = Context::new(Config::from_pairs([("url", "https://example.com/in")]))
///     .with_http(http.clone());
/// assert_eq!(Post::deliver(&Event::new("1", "s", "t"), &cx), Ok(()));
/// assert_eq!(http.requests()[0].url, "https://example.com/in");
/// ```
pub trait Connector {
    /// Checks the target's configuration when the target is created or
    /// changed, without contacting any system. The default accepts any
    /// configuration.
    fn validate_config(config: &Config) -> Result<(), PluginError> {
        let _ = config;
        Ok(())
    }

    /// Delivers one event. [`DeliveryError::Retryable`] asks the host to try
    /// again later; [`DeliveryError::Permanent`] dead-letters the event.
    fn deliver(event: &Event, cx: &Context) -> Result<(), DeliveryError>;

    /// Delivers a batch and returns one outcome per event, in order. The
    /// default calls [`Connector::deliver`] for each event; override it to
    /// send a batch in one request.
    fn deliver_batch(events: &[Event], cx: &Context) -> Vec<Result<(), DeliveryError>> {
        events
            .iter()
            .map(|event| Self::deliver(event, cx))
            .collect()
    }
}

/// Exports a [`Filter`] implementation as the component's
/// `busbar:plugin/filter` interface.
///
/// Natively (for `cargo test`) it only checks that the type implements
/// [`Filter`].
///
/// ```
/// # use busbar_sdk::prelude::*;
/// struct KeepAll;
/// impl Filter for KeepAll {
///     fn filter(_: &Event, _: &Context) -> Result<bool, PluginError> { Ok(true) }
/// }
/// busbar_sdk::filter!(KeepAll);
/// ```
#[macro_export]
macro_rules! filter {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __BusbarFilter = $crate::__private::FilterExport<$ty>;
            $crate::__export_filter_plugin_impl!(
                __BusbarFilter with_types_in $crate::__private::filter_bindings
            );
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            const fn implements_filter<T: $crate::Filter>() {}
            implements_filter::<$ty>()
        };
    };
}

/// Exports a [`Transformer`] implementation as the component's
/// `busbar:plugin/transformer` interface.
///
/// Natively it only checks that the type implements [`Transformer`].
///
/// ```
/// # use busbar_sdk::prelude::*;
/// struct Identity;
/// impl Transformer for Identity {
///     fn transform(e: Event, _: &Context) -> Result<Vec<Event>, PluginError> { Ok(vec![e]) }
/// }
/// busbar_sdk::transformer!(Identity);
/// ```
#[macro_export]
macro_rules! transformer {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __BusbarTransformer = $crate::__private::TransformerExport<$ty>;
            $crate::__export_transformer_plugin_impl!(
                __BusbarTransformer with_types_in $crate::__private::transformer_bindings
            );
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            const fn implements_transformer<T: $crate::Transformer>() {}
            implements_transformer::<$ty>()
        };
    };
}

/// Exports a [`Connector`] implementation as the component's
/// `busbar:plugin/connector` interface.
///
/// Natively it only checks that the type implements [`Connector`].
///
/// ```
/// # use busbar_sdk::prelude::*;
/// struct Discard;
/// impl Connector for Discard {
///     fn deliver(_: &Event, _: &Context) -> Result<(), DeliveryError> { Ok(()) }
/// }
/// busbar_sdk::connector!(Discard);
/// ```
#[macro_export]
macro_rules! connector {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __BusbarConnector = $crate::__private::ConnectorExport<$ty>;
            $crate::__export_connector_plugin_impl!(
                __BusbarConnector with_types_in $crate::__private::connector_bindings
            );
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            const fn implements_connector<T: $crate::Connector>() {}
            implements_connector::<$ty>()
        };
    };
}
