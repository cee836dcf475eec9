//! Routing: rules and the router that applies them.
//!
//! - [`rule`]: a rule's JSON → [`RuleSpec`] (every problem reported) →
//!   compiled [`Rule`] (pattern matcher, transform, bound targets);
//! - [`table`]: a bus's compiled rules ([`BusRoutes`]) and the
//!   [`RouteTable`] the router reads them from;
//! - [`router`]: follows the event log, matches, runs filter and
//!   transformer steps, and hands deliveries to the delivery engine;
//! - [`progress`]: acknowledges log entries once all their work is done or
//!   persisted, by guards that release themselves.

pub mod progress;
pub mod router;
pub mod rule;
pub mod table;

pub use self::rule::{
    MAX_TARGETS, Rule, RuleContext, RuleSpec, RuleTransform, TransformChoice, compile_rule,
    eventbridge_aliases, pattern_for_sample,
};
pub use self::table::{BusRoutes, RouteTable};
