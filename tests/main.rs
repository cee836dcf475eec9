//! Busbar's integration tests: one test binary, one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[test]
fn binary_is_linkable() {
    assert!(!busbar::VERSION.is_empty());
}

mod pattern_conformance;
mod pattern_properties;
