//! Busbar: a multi-tenant event bus whose rules use EventBridge's event-pattern
//! language and whose filters, transformers and connectors can be sandboxed
//! WebAssembly components.
//!
//! The modules follow the data flow: [`pattern`] decides which rules an event
//! matches, and [`transform`] reshapes a matched event for its target.

/// The crate version, as reported by `busbar --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod deliver;
pub mod event;
pub mod ingest;
pub mod pattern;
pub mod transform;
