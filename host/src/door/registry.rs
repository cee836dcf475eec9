//! The schema registry: each bus's registered schemas, which events each
//! applies to, and their compiled validators.
//!
//! The store holds every version ([`SchemaStore`]); this keeps the newest
//! version of each schema in memory, indexed by what selects it (`dataschema`
//! URI, or `source` and `type`), so finding an event's schema is two hash
//! lookups under a read lock. Compiled validators live in a bounded
//! [`moka`] cache keyed by a number unique to each version in this
//! process: a version is compiled once, when it is registered or loaded,
//! and again only if the cache evicted it. A new version replaces the old
//! one in the index, so it applies from the next event on.

use super::DoorError;
use super::compat;
use super::schema::{self, Compatibility, SchemaSpec, Selector};
use crate::clock::{Millis, SharedClock};
use crate::event::Event;
use crate::resource::Problems;
use crate::store::{SchemaStore, SchemaVersion, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Compiled validators kept (each a few KB to a few hundred KB).
const COMPILED_CACHE: u64 = 10_000;

/// The newest version of one registered schema.
#[derive(Clone, Debug)]
pub struct Registered {
    /// The schema's name.
    pub name: String,
    /// Its newest version.
    pub version: u32,
    /// That version as written.
    pub spec: SchemaSpec,
    /// When that version was added.
    pub created_ms: Millis,
    /// Unique to this version in this process (the compiled cache's key).
    uid: u64,
}

impl Registered {
    /// `name@version`, as the `schemaviolation` extension and logs say it.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// One bus's schemas.
#[derive(Debug, Default)]
struct BusSchemas {
    by_name: BTreeMap<String, Arc<Registered>>,
    /// dataschema URI → schema name.
    by_dataschema: HashMap<String, String>,
    /// source → type → schema name.
    by_source_type: HashMap<String, HashMap<String, String>>,
}

impl BusSchemas {
    fn with(&self, registered: Option<Arc<Registered>>, without: Option<&str>) -> Self {
        let mut by_name = self.by_name.clone();
        if let Some(name) = without {
            by_name.remove(name);
        }
        if let Some(r) = registered {
            by_name.insert(r.name.clone(), r);
        }
        Self::of(by_name)
    }

    /// The schemas `by_name`, indexed by what selects them.
    fn of(by_name: BTreeMap<String, Arc<Registered>>) -> Self {
        let mut out = Self {
            by_name,
            ..Self::default()
        };
        for (name, r) in &out.by_name {
            match &r.spec.selector {
                Selector::DataSchema(uri) => {
                    out.by_dataschema.insert(uri.clone(), name.clone());
                }
                Selector::SourceType { source, event_type } => {
                    out.by_source_type
                        .entry(source.clone())
                        .or_default()
                        .insert(event_type.clone(), name.clone());
                }
            }
        }
        out
    }

    fn select(&self, event: &Event) -> Option<&Arc<Registered>> {
        let name = event
            .str_attr("dataschema")
            .and_then(|uri| self.by_dataschema.get(uri))
            .or_else(|| {
                self.by_source_type
                    .get(event.source())?
                    .get(event.event_type())
            })?;
        self.by_name.get(name)
    }

    fn holder_of(&self, selector: &Selector) -> Option<&str> {
        let name = match selector {
            Selector::DataSchema(uri) => self.by_dataschema.get(uri),
            Selector::SourceType { source, event_type } => {
                self.by_source_type.get(source)?.get(event_type)
            }
        }?;
        Some(name)
    }
}

/// What an event's schema says about it.
#[derive(Debug)]
pub struct Verdict {
    /// The schema version that applies.
    pub schema: Arc<Registered>,
    /// Every violation (empty: the event conforms).
    pub violations: Vec<schema::Violation>,
}

/// The registry. Shared as part of the door.
pub struct Registry {
    store: Arc<dyn SchemaStore>,
    clock: SharedClock,
    /// tenant → bus → schemas (replaced whole on change).
    buses: RwLock<HashMap<String, HashMap<String, Arc<BusSchemas>>>>,
    compiled: moka::sync::Cache<u64, Arc<jsonschema::Validator>>,
    next_uid: AtomicU64,
    /// Serialises this node's changes (the store's version check catches
    /// other nodes').
    writing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// An empty registry over `store` (see [`Registry::load`]).
    pub fn new(store: Arc<dyn SchemaStore>, clock: SharedClock) -> Self {
        Self {
            store,
            clock,
            buses: RwLock::new(HashMap::new()),
            compiled: moka::sync::Cache::new(COMPILED_CACHE),
            next_uid: AtomicU64::new(1),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    fn bus(&self, tenant: &str, bus: &str) -> Option<Arc<BusSchemas>> {
        let buses = self.buses.read().unwrap_or_else(|p| p.into_inner());
        buses.get(tenant)?.get(bus).cloned()
    }

    fn replace(&self, tenant: &str, bus: &str, schemas: BusSchemas) {
        let mut buses = self.buses.write().unwrap_or_else(|p| p.into_inner());
        let tenant_buses = buses.entry(tenant.to_owned()).or_default();
        if schemas.by_name.is_empty() {
            tenant_buses.remove(bus);
        } else {
            tenant_buses.insert(bus.to_owned(), Arc::new(schemas));
        }
    }

    fn registered(&self, stored: &SchemaVersion) -> Result<Arc<Registered>, Problems> {
        let spec = SchemaSpec::parse(&stored.spec)?;
        let validator = schema::compile(&spec.schema)?;
        let uid = self.next_uid.fetch_add(1, Ordering::Relaxed);
        self.compiled.insert(uid, Arc::new(validator));
        Ok(Arc::new(Registered {
            name: stored.name.clone(),
            version: stored.version,
            spec,
            created_ms: stored.created_ms,
            uid,
        }))
    }

    /// Loads the newest version of every schema (at start-up): a refresh
    /// of the empty registry. A version that no longer compiles is logged
    /// and skipped.
    pub async fn load(&self) -> Result<(), StoreError> {
        self.refresh().await
    }

    /// Brings the registry in line with the store: the newest stored
    /// version of every schema, keeping (not compiling again) the versions
    /// it already has, and forgetting deleted schemas. Nodes that share a
    /// store run it every moment, so a schema registered, changed or
    /// deleted on another node applies here too; with a store only this
    /// process uses, every change goes through this registry anyway.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        // Held from the read to the swap: a change made here meanwhile
        // could otherwise be undone by an older listing.
        let _writing = self.writing.lock().await;
        let stored = self.store.latest_schema_versions().await?;
        let mut next: HashMap<String, HashMap<String, BTreeMap<String, Arc<Registered>>>> =
            HashMap::new();
        for s in stored {
            let current = self
                .get(&s.tenant, &s.bus, &s.name)
                .filter(|c| c.version == s.version && c.created_ms == s.created_ms);
            let registered = match current {
                Some(c) => c,
                None => match self.registered(&s) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(tenant = %s.tenant, bus = %s.bus, schema = %s.name, error = %e, "stored schema no longer compiles; skipped");
                        continue;
                    }
                },
            };
            next.entry(s.tenant)
                .or_default()
                .entry(s.bus)
                .or_default()
                .insert(s.name, registered);
        }
        let kept: std::collections::HashSet<u64> = next
            .values()
            .flat_map(|buses| buses.values())
            .flat_map(|by_name| by_name.values().map(|r| r.uid))
            .collect();
        let mut buses = self.buses.write().unwrap_or_else(|p| p.into_inner());
        for gone in buses
            .values()
            .flat_map(|b| b.values())
            .flat_map(|b| b.by_name.values())
            .filter(|r| !kept.contains(&r.uid))
        {
            self.compiled.invalidate(&gone.uid);
        }
        *buses = next
            .into_iter()
            .map(|(tenant, of_tenant)| {
                let of_tenant = of_tenant
                    .into_iter()
                    .map(|(bus, by_name)| (bus, Arc::new(BusSchemas::of(by_name))))
                    .collect();
                (tenant, of_tenant)
            })
            .collect();
        Ok(())
    }

    /// Whether any schema is registered on the bus (the hot path's first question).
    pub fn has_schemas(&self, tenant: &str, bus: &str) -> bool {
        self.bus(tenant, bus).is_some()
    }

    /// Checks an event against the schema that applies to it, if any (and
    /// its mode is not `off`).
    pub fn check(&self, tenant: &str, bus: &str, event: &Event) -> Option<Verdict> {
        let schemas = self.bus(tenant, bus)?;
        let registered = schemas.select(event)?;
        if registered.spec.mode == schema::Mode::Off {
            return None;
        }
        let validator = match self.compiled.get(&registered.uid) {
            Some(v) => v,
            None => match schema::compile(&registered.spec.schema) {
                Ok(v) => {
                    let v = Arc::new(v);
                    self.compiled.insert(registered.uid, v.clone());
                    v
                }
                Err(e) => {
                    // It compiled when registered; the same crate cannot disagree now.
                    tracing::error!(schema = %registered.label(), error = %e, "a registered schema does not compile; not checked");
                    return None;
                }
            },
        };
        Some(Verdict {
            violations: schema::check(&validator, event),
            schema: registered.clone(),
        })
    }

    /// Adds a version (the first one creates the schema): checks that no
    /// other schema of the bus selects the same events and, when
    /// compatibility is asked for (in `spec`, else as the previous version
    /// said), that the change is compatible. Returns the new version and
    /// whether the schema was created.
    pub async fn put(
        &self,
        tenant: &str,
        bus: &str,
        name: &str,
        spec: SchemaSpec,
    ) -> Result<(Arc<Registered>, bool), DoorError> {
        let _writing = self.writing.lock().await;
        let schemas = self.bus(tenant, bus).unwrap_or_default();
        if let Some(other) = schemas.holder_of(&spec.selector)
            && other != name
        {
            return Err(DoorError::Conflict {
                message: format!(
                    "schema {other:?} already applies to events with {}",
                    spec.selector
                ),
                field: Some(match spec.selector {
                    Selector::DataSchema(_) => "dataschema".into(),
                    Selector::SourceType { .. } => "source".into(),
                }),
            });
        }
        let versions = self.store.schema_versions(tenant, bus, name).await?;
        let previous = versions.last();
        if let Some(previous) = previous {
            let before =
                SchemaSpec::parse(&previous.spec).map_err(|problems| DoorError::Invalid {
                    code: "invalid_record",
                    problems,
                })?;
            let level = spec
                .compatibility
                .or(before.compatibility)
                .unwrap_or(Compatibility::None);
            if let Err(problems) = compat::check(&before.schema, &spec.schema, level) {
                return Err(DoorError::Incompatible {
                    previous: previous.version,
                    problems,
                });
            }
        }
        let stored = SchemaVersion {
            tenant: tenant.to_owned(),
            bus: bus.to_owned(),
            name: name.to_owned(),
            version: previous.map_or(1, |p| p.version + 1),
            spec: spec.to_json(),
            created_ms: self.clock.now_ms(),
        };
        let registered = self
            .registered(&stored)
            .map_err(|problems| DoorError::Invalid {
                code: "invalid_schema",
                problems,
            })?;
        self.store
            .add_schema_version(stored)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => DoorError::Conflict {
                    message: format!(
                        "schema {name:?} changed at the same time; send the PUT again"
                    ),
                    field: None,
                },
                e => DoorError::Store(e),
            })?;
        let schemas = self.bus(tenant, bus).unwrap_or_default();
        if let Some(old) = schemas.by_name.get(name) {
            self.compiled.invalidate(&old.uid);
        }
        self.replace(tenant, bus, schemas.with(Some(registered.clone()), None));
        Ok((registered, previous.is_none()))
    }

    /// The newest version of every schema of a bus.
    pub fn list(&self, tenant: &str, bus: &str) -> Vec<Arc<Registered>> {
        self.bus(tenant, bus)
            .map(|s| s.by_name.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The newest version of one schema.
    pub fn get(&self, tenant: &str, bus: &str, name: &str) -> Option<Arc<Registered>> {
        self.bus(tenant, bus)?.by_name.get(name).cloned()
    }

    /// Every version of one schema, oldest first.
    pub async fn versions(
        &self,
        tenant: &str,
        bus: &str,
        name: &str,
    ) -> Result<Vec<SchemaVersion>, StoreError> {
        self.store.schema_versions(tenant, bus, name).await
    }

    /// Deletes a schema with every version; false if it did not exist.
    pub async fn delete(&self, tenant: &str, bus: &str, name: &str) -> Result<bool, StoreError> {
        let _writing = self.writing.lock().await;
        let existed = self.store.delete_schema(tenant, bus, name).await?;
        if let Some(schemas) = self.bus(tenant, bus)
            && let Some(old) = schemas.by_name.get(name)
        {
            self.compiled.invalidate(&old.uid);
            self.replace(tenant, bus, schemas.with(None, Some(name)));
        }
        Ok(existed)
    }

    /// Forgets a deleted bus's schemas (the store's records included).
    pub async fn forget_bus(&self, tenant: &str, bus: &str) -> Result<(), StoreError> {
        let _writing = self.writing.lock().await;
        self.store.delete_bus_schemas(tenant, bus).await?;
        if let Some(schemas) = self.bus(tenant, bus) {
            for r in schemas.by_name.values() {
                self.compiled.invalidate(&r.uid);
            }
            self.replace(tenant, bus, BusSchemas::default());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::memory::MemoryStore;
    use serde_json::json;

    fn spec(maximum: u32) -> SchemaSpec {
        SchemaSpec::parse(
            &json!({"source": "shop", "type": "order", "mode": "enforce",
            "schema": {"type": "object", "properties": {"data": {"type": "object",
                "properties": {"qty": {"type": "integer", "maximum": maximum}}}}}}),
        )
        .unwrap()
    }

    /// Two nodes' registries over one store: what one changes, the other
    /// picks up on its next refresh, compiling only what changed.
    #[tokio::test]
    async fn refresh_follows_changes_made_through_another_registry() {
        let clock: SharedClock = Arc::new(ManualClock::new(1_000));
        let store = Arc::new(MemoryStore::new(clock.clone()));
        let a = Registry::new(store.clone(), clock.clone());
        let b = Registry::new(store, clock);
        a.put("acme", "orders", "order", spec(5)).await.unwrap();
        assert!(!b.has_schemas("acme", "orders"));
        b.refresh().await.unwrap();
        let first = b.get("acme", "orders", "order").unwrap();
        assert_eq!(first.version, 1);
        b.refresh().await.unwrap();
        let again = b.get("acme", "orders", "order").unwrap();
        assert!(Arc::ptr_eq(&first, &again), "an unchanged version is kept");

        a.put("acme", "orders", "order", spec(9)).await.unwrap();
        b.refresh().await.unwrap();
        assert_eq!(b.get("acme", "orders", "order").unwrap().version, 2);
        assert!(
            b.compiled.get(&first.uid).is_none(),
            "the old validator is dropped"
        );

        assert!(a.delete("acme", "orders", "order").await.unwrap());
        b.refresh().await.unwrap();
        assert!(!b.has_schemas("acme", "orders"));
        assert!(b.list("acme", "orders").is_empty());
    }
}
