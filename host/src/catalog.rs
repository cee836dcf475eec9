//! The in-memory view of tenants, keys, buses, rules and queues.
//!
//! The store is the source of truth; the catalog is what the hot paths read
//! (authentication on every request, rule lookup for every event). Writers
//! persist first, then update the catalog, so a change is visible to the very
//! next request once its `PUT` has answered.
//!
//! A bus's compiled rules live in an immutable [`BusRoutes`] behind an `Arc`:
//! a rule change builds a new one and swaps it in, so the router never waits
//! on a lock while matching.

use crate::pattern::RuleSet;
use crate::plugin::LimitsOverrides;
use crate::plugin::registry::PluginRecord;
use crate::route::Rule;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

/// The compiled rules of one bus, immutable once built.
#[derive(Debug, Default)]
pub struct BusRoutes {
    /// The bus's own settings as sent by the tenant.
    pub spec: Value,
    /// Rules by name.
    pub rules: BTreeMap<String, Arc<Rule>>,
    /// All enabled rules' patterns, indexed for matching.
    pub index: RuleSet<String>,
}

impl BusRoutes {
    fn rebuilt(spec: Value, rules: BTreeMap<String, Arc<Rule>>) -> Self {
        let mut index = RuleSet::new();
        for (name, rule) in &rules {
            if rule.enabled {
                index.insert(name.clone(), rule.pattern.clone());
            }
        }
        Self { spec, rules, index }
    }
}

/// One tenant's resources.
#[derive(Debug, Default)]
struct TenantState {
    created_ms: i64,
    buses: BTreeMap<String, Arc<BusRoutes>>,
    queues: BTreeMap<String, Value>,
    keys: BTreeMap<String, i64>,
    plugins: BTreeMap<String, PluginRecord>,
    /// The admin's overrides of this tenant's plugin limits.
    plugin_limits: Option<Arc<LimitsOverrides>>,
}

#[derive(Debug, Default)]
struct State {
    tenants: BTreeMap<String, TenantState>,
    /// Key hash → (tenant, key id).
    keys: HashMap<String, (String, String)>,
}

/// Thread-safe catalog.
#[derive(Debug, Default)]
pub struct Catalog {
    state: RwLock<State>,
}

/// A summary of a tenant for the admin API.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TenantSummary {
    /// Tenant name.
    pub name: String,
    /// Creation time (ms since epoch).
    pub created_ms: i64,
    /// Ids of its live API keys.
    pub key_ids: Vec<String>,
    /// Its buses.
    pub buses: Vec<String>,
}

impl Catalog {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The tenant a key hash belongs to.
    pub fn authenticate(&self, key_hash: &str) -> Option<String> {
        self.read()
            .keys
            .get(key_hash)
            .map(|(tenant, _)| tenant.clone())
    }

    /// Whether the tenant exists.
    pub fn has_tenant(&self, tenant: &str) -> bool {
        self.read().tenants.contains_key(tenant)
    }

    /// Adds a tenant (no-op if present).
    pub fn add_tenant(&self, tenant: &str, created_ms: i64) {
        self.write()
            .tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| TenantState {
                created_ms,
                ..Default::default()
            });
    }

    /// Sets (or with `None` clears) the admin's overrides of a tenant's
    /// plugin limits; they apply from the next invocation.
    pub fn set_plugin_limits(&self, tenant: &str, overrides: Option<LimitsOverrides>) {
        if let Some(t) = self.write().tenants.get_mut(tenant) {
            t.plugin_limits = overrides.map(Arc::new);
        }
    }

    /// The admin's overrides of a tenant's plugin limits, if any.
    pub fn plugin_limits(&self, tenant: &str) -> Option<Arc<LimitsOverrides>> {
        self.read()
            .tenants
            .get(tenant)
            .and_then(|t| t.plugin_limits.clone())
    }

    /// All tenants.
    pub fn tenants(&self) -> Vec<TenantSummary> {
        self.read()
            .tenants
            .iter()
            .map(|(name, t)| TenantSummary {
                name: name.clone(),
                created_ms: t.created_ms,
                key_ids: t.keys.keys().cloned().collect(),
                buses: t.buses.keys().cloned().collect(),
            })
            .collect()
    }

    /// Registers a key.
    pub fn add_key(&self, tenant: &str, key_id: &str, hash: &str, created_ms: i64) {
        let mut state = self.write();
        state
            .keys
            .insert(hash.to_owned(), (tenant.to_owned(), key_id.to_owned()));
        if let Some(t) = state.tenants.get_mut(tenant) {
            t.keys.insert(key_id.to_owned(), created_ms);
        }
    }

    /// Forgets a key.
    pub fn remove_key(&self, tenant: &str, key_id: &str) {
        let mut state = self.write();
        state
            .keys
            .retain(|_, (t, id)| !(t == tenant && id == key_id));
        if let Some(t) = state.tenants.get_mut(tenant) {
            t.keys.remove(key_id);
        }
    }

    /// The compiled rules of a bus, if the bus exists.
    pub fn bus(&self, tenant: &str, bus: &str) -> Option<Arc<BusRoutes>> {
        self.read().tenants.get(tenant)?.buses.get(bus).cloned()
    }

    /// The tenant's bus names.
    pub fn buses(&self, tenant: &str) -> Vec<(String, Value)> {
        self.read()
            .tenants
            .get(tenant)
            .map(|t| {
                t.buses
                    .iter()
                    .map(|(n, b)| (n.clone(), b.spec.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Creates or updates a bus's settings, keeping its rules.
    pub fn put_bus(&self, tenant: &str, bus: &str, spec: Value) {
        let mut state = self.write();
        let Some(t) = state.tenants.get_mut(tenant) else {
            return;
        };
        let rules = t
            .buses
            .get(bus)
            .map(|b| b.rules.clone())
            .unwrap_or_default();
        t.buses
            .insert(bus.to_owned(), Arc::new(BusRoutes::rebuilt(spec, rules)));
    }

    /// Removes a bus and its rules.
    pub fn delete_bus(&self, tenant: &str, bus: &str) -> bool {
        let mut state = self.write();
        state
            .tenants
            .get_mut(tenant)
            .is_some_and(|t| t.buses.remove(bus).is_some())
    }

    /// Adds or replaces a rule on an existing bus.
    pub fn put_rule(&self, tenant: &str, rule: Rule) -> bool {
        let mut state = self.write();
        let Some(t) = state.tenants.get_mut(tenant) else {
            return false;
        };
        let Some(bus) = t.buses.get(&rule.bus) else {
            return false;
        };
        let mut rules = bus.rules.clone();
        let bus_name = rule.bus.clone();
        rules.insert(rule.name.clone(), Arc::new(rule));
        let rebuilt = BusRoutes::rebuilt(bus.spec.clone(), rules);
        t.buses.insert(bus_name, Arc::new(rebuilt));
        true
    }

    /// Removes a rule.
    pub fn delete_rule(&self, tenant: &str, bus: &str, rule: &str) -> bool {
        let mut state = self.write();
        let Some(t) = state.tenants.get_mut(tenant) else {
            return false;
        };
        let Some(routes) = t.buses.get(bus) else {
            return false;
        };
        if !routes.rules.contains_key(rule) {
            return false;
        }
        let mut rules = routes.rules.clone();
        rules.remove(rule);
        let rebuilt = BusRoutes::rebuilt(routes.spec.clone(), rules);
        t.buses.insert(bus.to_owned(), Arc::new(rebuilt));
        true
    }

    /// Whether the tenant has the queue.
    pub fn has_queue(&self, tenant: &str, queue: &str) -> bool {
        self.read()
            .tenants
            .get(tenant)
            .is_some_and(|t| t.queues.contains_key(queue))
    }

    /// The tenant's queues.
    pub fn queues(&self, tenant: &str) -> Vec<(String, Value)> {
        self.read()
            .tenants
            .get(tenant)
            .map(|t| {
                t.queues
                    .iter()
                    .map(|(n, s)| (n.clone(), s.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Creates or updates a queue.
    pub fn put_queue(&self, tenant: &str, queue: &str, spec: Value) {
        if let Some(t) = self.write().tenants.get_mut(tenant) {
            t.queues.insert(queue.to_owned(), spec);
        }
    }

    /// Removes a queue.
    pub fn delete_queue(&self, tenant: &str, queue: &str) -> bool {
        self.write()
            .tenants
            .get_mut(tenant)
            .is_some_and(|t| t.queues.remove(queue).is_some())
    }

    /// A tenant's plugin.
    pub fn plugin(&self, tenant: &str, name: &str) -> Option<PluginRecord> {
        self.read().tenants.get(tenant)?.plugins.get(name).cloned()
    }

    /// A tenant's plugins.
    pub fn plugins(&self, tenant: &str) -> Vec<PluginRecord> {
        self.read()
            .tenants
            .get(tenant)
            .map(|t| t.plugins.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Creates or replaces a plugin record.
    pub fn put_plugin(&self, tenant: &str, record: PluginRecord) {
        if let Some(t) = self.write().tenants.get_mut(tenant) {
            t.plugins.insert(record.name.clone(), record);
        }
    }

    /// Removes a plugin record.
    pub fn delete_plugin(&self, tenant: &str, name: &str) -> bool {
        self.write()
            .tenants
            .get_mut(tenant)
            .is_some_and(|t| t.plugins.remove(name).is_some())
    }

    /// Rules (as `bus/rule`) that use the plugin as filter, transform or connector.
    pub fn rules_using_plugin(&self, tenant: &str, plugin: &str) -> Vec<String> {
        let state = self.read();
        let Some(t) = state.tenants.get(tenant) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (bus_name, routes) in &t.buses {
            for (rule_name, rule) in &routes.rules {
                if rule.plugins().any(|p| p == plugin) {
                    out.push(format!("{bus_name}/{rule_name}"));
                }
            }
        }
        out
    }

    /// Rules (on any bus of the tenant) with a target that sends to `kind`/`name`.
    pub fn referencing_rules(
        &self,
        tenant: &str,
        queue: Option<&str>,
        bus: Option<&str>,
    ) -> Vec<String> {
        let state = self.read();
        let Some(t) = state.tenants.get(tenant) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (bus_name, routes) in &t.buses {
            for (rule_name, rule) in &routes.rules {
                let uses = rule.targets.iter().any(|target| match &target.kind {
                    crate::route::TargetKind::Queue { queue: q } => Some(q.as_str()) == queue,
                    crate::route::TargetKind::Bus { bus: b } => Some(b.as_str()) == bus,
                    crate::route::TargetKind::Http(_) | crate::route::TargetKind::Wasm(_) => false,
                });
                if uses {
                    out.push(format!("{bus_name}/{rule_name}"));
                }
            }
        }
        out
    }
}
