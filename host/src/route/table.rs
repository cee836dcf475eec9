//! The rules the router runs, per bus, and where it finds them.

use super::rule::Rule;
use crate::pattern::RuleSet;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The compiled rules of one bus, immutable once built: a rule change
/// builds a new one and swaps it in, so the router never waits on a lock
/// while matching.
#[derive(Debug, Default)]
pub struct BusRoutes {
    /// Rules by name.
    pub rules: BTreeMap<String, Arc<Rule>>,
    /// All enabled rules' patterns, indexed for matching.
    pub index: RuleSet<String>,
}

impl BusRoutes {
    /// Indexes `rules`.
    pub fn new(rules: BTreeMap<String, Arc<Rule>>) -> Self {
        let mut index = RuleSet::new();
        for (name, rule) in &rules {
            if rule.enabled {
                index.insert(name.clone(), rule.pattern.clone());
            }
        }
        Self { rules, index }
    }

    /// A copy with `rule` added or replaced.
    pub fn with(&self, rule: Arc<Rule>) -> Self {
        let mut rules = self.rules.clone();
        rules.insert(rule.name.clone(), rule);
        Self::new(rules)
    }

    /// A copy without rule `name`.
    pub fn without(&self, name: &str) -> Self {
        let mut rules = self.rules.clone();
        rules.remove(name);
        Self::new(rules)
    }
}

/// Where the router finds a bus's current rules (the control plane's
/// catalog implements it).
pub trait RouteTable: Send + Sync + 'static {
    /// The rules of `tenant`'s bus `bus`, if the bus exists.
    fn routes(&self, tenant: &str, bus: &str) -> Option<Arc<BusRoutes>>;
}
