//! Busbar's integration tests: one test binary, one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

mod bus;
mod cli;
mod crash;
mod egress;
mod history;
mod http_target;
mod ingest;
mod openapi;
mod pattern_conformance;
mod pattern_explain;
mod pattern_properties;
mod plugin_runtime;
mod plugins_bus;
mod transform_conformance;
