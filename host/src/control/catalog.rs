//! The in-memory view of tenants, keys, buses, rules, queues and plugins.
//!
//! The store is the source of truth; the catalog is what the hot paths read
//! (authentication on every request, rule lookup for every event). Only the
//! control plane writes it, after persisting, so a change is visible to the
//! very next request once its `PUT` has answered.
//!
//! A bus's compiled rules live in an immutable [`BusRoutes`] behind an
//! `Arc`: a rule change builds a new one and swaps it in, so the router
//! never waits on a lock while matching.

use crate::deliver::{BoundTarget, Reference, TargetDirectory};
use crate::door::{BusDirectory, DoorSettings};
use crate::plugin::LimitsOverrides;
use crate::plugin::registry::PluginDirectory;
use crate::resource::PluginRecord;
use crate::route::{BusRoutes, RouteTable, Rule};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

/// One bus: its settings as the tenant sent them, and its rules.
#[derive(Debug, Clone)]
struct BusEntry {
    settings: Value,
    /// What the ingest door reads of the settings, parsed once.
    door: DoorSettings,
    routes: Arc<BusRoutes>,
}

/// One tenant's resources.
#[derive(Debug, Default)]
struct TenantState {
    created_ms: i64,
    buses: BTreeMap<String, BusEntry>,
    queues: BTreeMap<String, Value>,
    keys: BTreeMap<String, i64>,
    plugins: BTreeMap<String, PluginRecord>,
    /// The admin's overrides of this tenant's plugin limits.
    plugin_limits: Option<Arc<LimitsOverrides>>,
}

#[derive(Debug, Default)]
struct Tenants {
    tenants: BTreeMap<String, TenantState>,
    /// Key hash → (tenant, key id).
    keys: HashMap<String, (String, String)>,
}

/// Thread-safe catalog.
#[derive(Debug, Default)]
pub struct Catalog {
    state: RwLock<Tenants>,
    /// Per bus: tracing and archives (see [`super::history`]).
    pub(super) history: super::history::HistoryIndex,
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

/// A bus as the API shows it.
#[derive(Clone, Debug)]
pub struct BusView {
    /// Its settings as sent.
    pub settings: Value,
    /// Its rules.
    pub routes: Arc<BusRoutes>,
}

impl Catalog {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tenants> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tenants> {
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
    pub(super) fn add_tenant(&self, tenant: &str, created_ms: i64) {
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
    pub(super) fn set_plugin_limits(&self, tenant: &str, overrides: Option<LimitsOverrides>) {
        if let Some(t) = self.write().tenants.get_mut(tenant) {
            t.plugin_limits = overrides.map(Arc::new);
        }
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
    pub(super) fn add_key(&self, tenant: &str, key_id: &str, hash: &str, created_ms: i64) {
        let mut state = self.write();
        state
            .keys
            .insert(hash.to_owned(), (tenant.to_owned(), key_id.to_owned()));
        if let Some(t) = state.tenants.get_mut(tenant) {
            t.keys.insert(key_id.to_owned(), created_ms);
        }
    }

    /// Forgets a key.
    pub(super) fn remove_key(&self, tenant: &str, key_id: &str) {
        let mut state = self.write();
        state
            .keys
            .retain(|_, (t, id)| !(t == tenant && id == key_id));
        if let Some(t) = state.tenants.get_mut(tenant) {
            t.keys.remove(key_id);
        }
    }

    /// A bus's settings and rules, if the bus exists.
    pub fn bus(&self, tenant: &str, bus: &str) -> Option<BusView> {
        let state = self.read();
        let entry = state.tenants.get(tenant)?.buses.get(bus)?;
        Some(BusView {
            settings: entry.settings.clone(),
            routes: entry.routes.clone(),
        })
    }

    /// Whether the tenant has the bus.
    pub fn has_bus(&self, tenant: &str, bus: &str) -> bool {
        self.read()
            .tenants
            .get(tenant)
            .is_some_and(|t| t.buses.contains_key(bus))
    }

    /// The tenant's buses and their settings.
    pub fn buses(&self, tenant: &str) -> Vec<(String, Value)> {
        self.read()
            .tenants
            .get(tenant)
            .map(|t| {
                t.buses
                    .iter()
                    .map(|(n, b)| (n.clone(), b.settings.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Creates or updates a bus's settings, keeping its rules.
    pub(super) fn put_bus(&self, tenant: &str, bus: &str, settings: Value) {
        let mut state = self.write();
        let Some(t) = state.tenants.get_mut(tenant) else {
            return;
        };
        let routes = t
            .buses
            .get(bus)
            .map(|b| b.routes.clone())
            .unwrap_or_default();
        let parsed = super::BusSettings::parse(&settings).unwrap_or_default();
        let door = parsed.door();
        t.buses.insert(
            bus.to_owned(),
            BusEntry {
                settings,
                door,
                routes,
            },
        );
        self.history.set_traced(tenant, bus, parsed.trace);
    }

    /// Removes a bus and its rules.
    pub(super) fn delete_bus(&self, tenant: &str, bus: &str) -> bool {
        let mut state = self.write();
        self.history.delete_bus(tenant, bus);
        state
            .tenants
            .get_mut(tenant)
            .is_some_and(|t| t.buses.remove(bus).is_some())
    }

    /// Adds or replaces a rule on an existing bus; false if the bus is gone.
    pub(super) fn put_rule(&self, tenant: &str, rule: Arc<Rule>) -> bool {
        let mut state = self.write();
        let Some(entry) = state
            .tenants
            .get_mut(tenant)
            .and_then(|t| t.buses.get_mut(&rule.bus))
        else {
            return false;
        };
        entry.routes = Arc::new(entry.routes.with(rule));
        true
    }

    /// Removes a rule.
    pub(super) fn delete_rule(&self, tenant: &str, bus: &str, rule: &str) -> bool {
        let mut state = self.write();
        let Some(entry) = state
            .tenants
            .get_mut(tenant)
            .and_then(|t| t.buses.get_mut(bus))
        else {
            return false;
        };
        if !entry.routes.rules.contains_key(rule) {
            return false;
        }
        entry.routes = Arc::new(entry.routes.without(rule));
        true
    }

    /// Whether the tenant has the queue.
    pub fn has_queue(&self, tenant: &str, queue: &str) -> bool {
        self.read()
            .tenants
            .get(tenant)
            .is_some_and(|t| t.queues.contains_key(queue))
    }

    /// A queue's settings.
    pub fn queue(&self, tenant: &str, queue: &str) -> Option<Value> {
        self.read().tenants.get(tenant)?.queues.get(queue).cloned()
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
    pub(super) fn put_queue(&self, tenant: &str, queue: &str, settings: Value) {
        if let Some(t) = self.write().tenants.get_mut(tenant) {
            t.queues.insert(queue.to_owned(), settings);
        }
    }

    /// Removes a queue.
    pub(super) fn delete_queue(&self, tenant: &str, queue: &str) -> bool {
        self.write()
            .tenants
            .get_mut(tenant)
            .is_some_and(|t| t.queues.remove(queue).is_some())
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
    pub(super) fn put_plugin(&self, tenant: &str, record: PluginRecord) {
        if let Some(t) = self.write().tenants.get_mut(tenant) {
            t.plugins.insert(record.name.clone(), record);
        }
    }

    /// Removes a plugin record.
    pub(super) fn delete_plugin(&self, tenant: &str, name: &str) -> bool {
        self.write()
            .tenants
            .get_mut(tenant)
            .is_some_and(|t| t.plugins.remove(name).is_some())
    }

    /// Rules (as `bus/rule`) that use the plugin as filter, transform or connector.
    pub fn rules_using_plugin(&self, tenant: &str, plugin: &str) -> Vec<String> {
        self.rules_where(tenant, |rule| rule.plugins().iter().any(|p| p == plugin))
    }

    /// Rules (as `bus/rule`, on any bus of the tenant) with a target that
    /// sends to `reference`.
    pub fn rules_referencing(&self, tenant: &str, reference: &Reference) -> Vec<String> {
        self.rules_where(tenant, |rule| {
            rule.references().any(|(_, r)| &r == reference)
        })
    }

    fn rules_where(&self, tenant: &str, pred: impl Fn(&Rule) -> bool) -> Vec<String> {
        let state = self.read();
        let Some(t) = state.tenants.get(tenant) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (bus_name, entry) in &t.buses {
            for (rule_name, rule) in &entry.routes.rules {
                if pred(rule) {
                    out.push(format!("{bus_name}/{rule_name}"));
                }
            }
        }
        out
    }
}

impl RouteTable for Catalog {
    fn routes(&self, tenant: &str, bus: &str) -> Option<Arc<BusRoutes>> {
        let state = self.read();
        Some(state.tenants.get(tenant)?.buses.get(bus)?.routes.clone())
    }
}

impl BusDirectory for Catalog {
    fn door_settings(&self, tenant: &str, bus: &str) -> Option<DoorSettings> {
        Some(self.read().tenants.get(tenant)?.buses.get(bus)?.door)
    }
}

impl TargetDirectory for Catalog {
    fn bound_target(
        &self,
        tenant: &str,
        bus: &str,
        rule: &str,
        target: &str,
    ) -> Option<Arc<BoundTarget>> {
        let routes = self.routes(tenant, bus)?;
        let rule = routes.rules.get(rule)?;
        rule.targets.iter().find(|t| t.id == target).cloned()
    }
}

impl PluginDirectory for Catalog {
    fn plugin(&self, tenant: &str, name: &str) -> Option<PluginRecord> {
        self.read().tenants.get(tenant)?.plugins.get(name).cloned()
    }

    fn plugin_limits(&self, tenant: &str) -> Option<Arc<LimitsOverrides>> {
        self.read()
            .tenants
            .get(tenant)
            .and_then(|t| t.plugin_limits.clone())
    }
}
