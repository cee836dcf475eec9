//! Busbar's integration tests: one test binary, one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

mod bus;
mod crash;
mod plugin_runtime;
