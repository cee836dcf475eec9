//! Busbar: a multi-tenant event bus whose rules use EventBridge's event-pattern
//! language and whose filters, transformers and connectors can be sandboxed
//! WebAssembly components.
//!
//! The modules follow the data flow: [`api`] (HTTP edge) → [`ingest`]
//! (validate, normalise to CloudEvents) → [`store`] (durable log, cursor,
//! jobs, dead letters, queues) → [`route`] (rules: [`pattern`], [`transform`])
//! → [`deliver`] (targets, retries, dead-lettering) — plus [`config`],
//! [`catalog`] (the in-memory view of tenants and rules), [`telemetry`] and
//! [`server`] (wiring and shutdown). At the bottom, used by the others and
//! using nothing but [`event`]: [`binding`] (the CloudEvents HTTP binding and
//! media types, for ingest and delivery alike) and [`net`] (the egress
//! policy every outbound request follows).

/// The crate version, as reported by `busbar --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod api;
pub mod binding;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod deliver;
pub mod event;
pub mod ingest;
pub mod net;
pub mod pattern;
pub mod plugin;
pub mod route;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod transform;
