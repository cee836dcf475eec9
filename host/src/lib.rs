//! Busbar: a multi-tenant event bus whose rules use EventBridge's event-pattern
//! language and whose filters, transformers and connectors can be sandboxed
//! WebAssembly components.
//!
//! The modules follow the data flow: [`api`] (HTTP edge) → [`ingest`]
//! (validate, normalise to CloudEvents) → [`door`] (schemas, discovery,
//! deduplication) → [`store`] (event log, delivery
//! jobs, dead letters, queues, configuration) → [`route`] (rules:
//! [`pattern`], [`transform`]) → [`plugin`] (the Wasm sandbox) → [`deliver`]
//! (targets, retries, dead-lettering). [`control`] is the control plane
//! (every configuration change, and the in-memory catalog the data plane
//! reads); [`resource`] holds the nouns everything shares (names,
//! validation problems, plugin records); [`config`], [`telemetry`],
//! [`clock`] and [`server`] (wiring and shutdown) stand beside. At the
//! bottom, used by the others and using nothing but [`event`]: [`binding`]
//! (the CloudEvents HTTP binding and media types, for ingest and delivery
//! alike) and [`net`] (the egress policy every outbound request follows).

/// The crate version, as reported by `busbar --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod api;
pub mod binding;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod deliver;
pub mod door;
pub mod event;
pub mod history;
pub mod ingest;
pub mod net;
pub mod pattern;
pub mod plugin;
pub mod resource;
pub mod route;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod transform;
