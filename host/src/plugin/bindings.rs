//! Host bindings for the plugin worlds in `wit/plugin.wit`, generated once
//! per world. The filter world owns the shared `types`, `log` and `config`
//! interfaces; the other worlds reuse them with `with:`, so an event or a log
//! level is one Rust type whatever the plugin kind.

pub(crate) mod filter {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "busbar:plugin/filter-plugin",
        exports: { default: async },
    });
}

pub(crate) mod transformer {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "busbar:plugin/transformer-plugin",
        exports: { default: async },
        with: {
            "busbar:plugin/types": super::filter::busbar::plugin::types,
            "busbar:plugin/log": super::filter::busbar::plugin::log,
            "busbar:plugin/config": super::filter::busbar::plugin::config,
        },
    });
}

pub(crate) mod connector {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "busbar:plugin/connector-plugin",
        exports: { default: async },
        with: {
            "busbar:plugin/types": super::filter::busbar::plugin::types,
            "busbar:plugin/log": super::filter::busbar::plugin::log,
            "busbar:plugin/config": super::filter::busbar::plugin::config,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        },
    });
}

pub(crate) use filter::busbar::plugin::{config, log, types};
