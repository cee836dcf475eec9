//! Busbar's integration tests: one test binary, one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

mod bus;
mod cli;
mod crash;
mod door;
mod egress;
mod failover;
mod fifo;
mod history;
mod http_edge;
mod http_target;
mod ingest;
mod nodes;
mod openapi;
mod pattern_conformance;
mod pattern_explain;
mod pattern_properties;
mod plugin_runtime;
mod plugins_bus;
mod targets;
mod transform_conformance;
