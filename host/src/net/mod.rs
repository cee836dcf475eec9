//! Outbound networking rules shared by every path that leaves the bus
//! (webhook targets in `deliver`, connectors' `wasi:http` in `plugin`).
//!
//! [`special`] decides once which addresses are not public; [`egress`]
//! turns the operator's `[egress]` section into per-tenant allow-lists and
//! resolves destinations to the addresses a request may connect to. This is
//! a bottom module: it depends on nothing else in the crate.

pub mod cidr;
pub mod egress;
pub mod special;

pub use cidr::Cidr;
pub use egress::{
    AllowList, EgressConfig, EgressConfigError, EgressPolicy, Entry, Forbidden, ResolveError,
};
