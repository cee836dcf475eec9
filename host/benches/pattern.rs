//! Pattern-matching benchmarks (placeholder).
#![allow(missing_docs)]

fn main() {}
