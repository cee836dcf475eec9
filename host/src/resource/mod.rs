//! The bus's nouns, at the bottom of the module graph: resource names, the
//! one [`Problems`] type every validator reports with, and plugin records
//! and bindings. Everything above (ingest, store, plugin, deliver, route,
//! control, api) may use these; this module uses none of them.

mod name;
pub mod plugin;
mod problems;

pub use self::name::{NAME_RULE, valid_name};
pub use self::plugin::{
    PluginBinding, PluginKind, PluginRecord, PluginVersion, Registration, Upload, config_map,
};
pub use self::problems::{Fields, Problem, Problems, join_path};
