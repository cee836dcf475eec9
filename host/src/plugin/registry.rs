//! Tenants' plugins as the bus sees them: named, versioned, bound to rules.
//!
//! A plugin is a name owned by one tenant with immutable versions (each a
//! content-addressed component) and a current version. Rules bind plugins by
//! `name` (whatever is current at invocation time) or `name@version` (pinned),
//! so uploading a version or rolling back takes effect at the next invocation
//! without touching rules or in-flight events.
//!
//! [`PluginHost`] resolves a binding, runs it in the sandbox, turns failures
//! into the bus's error codes, and pauses a version that keeps crashing.

use super::{
    ConnectorPlugin, DeliveryResult, FailureKind, FilterPlugin, InvokeContext, KindLimits,
    PluginFailure, PluginHandle, PluginKind, PluginLimits, PluginRuntime, TransformerPlugin,
};
use crate::catalog::Catalog;
use crate::deliver::{Failure, Outcome};
use crate::event::Event;
use crate::store::AttemptError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Consecutive crashes (trap, out of memory, deadline) after which a version is paused.
pub const PAUSE_AFTER_CRASHES: u32 = 5;

/// One immutable version of a plugin.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PluginVersion {
    /// 1, 2, 3, … per plugin.
    pub version: u32,
    /// SHA-256 of the component (hex); the key of the compiled artifact.
    pub sha256: String,
    /// Component size in bytes.
    pub size: usize,
    /// Upload time (ms since epoch).
    pub created_ms: i64,
}

/// A tenant's plugin: what kind it is, its versions and the current one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PluginRecord {
    /// Plugin name, unique per tenant.
    pub name: String,
    /// Filter, transformer or connector (fixed by the first version).
    pub kind: PluginKind,
    /// The version rules without `@version` use.
    pub current: u32,
    /// All versions, oldest first.
    pub versions: Vec<PluginVersion>,
}

impl PluginRecord {
    /// A version by number.
    pub fn version(&self, v: u32) -> Option<&PluginVersion> {
        self.versions.iter().find(|x| x.version == v)
    }
}

/// What uploading a prepared component under a name amounts to.
#[derive(Debug)]
pub enum Registration {
    /// These exact bytes are already that version: nothing to store.
    Unchanged(u32),
    /// A record with the component added as the new current version.
    Added(PluginRecord),
}

/// Adds a prepared component to a plugin's versions (or starts a new plugin).
/// Refuses a component of another kind than the plugin's.
pub fn register(
    existing: Option<PluginRecord>,
    name: &str,
    prepared: &super::Prepared,
    now_ms: i64,
) -> Result<Registration, String> {
    let version = |v: u32| PluginVersion {
        version: v,
        sha256: prepared.sha256.clone(),
        size: prepared.size,
        created_ms: now_ms,
    };
    match existing {
        Some(r) if r.kind != prepared.kind => Err(format!(
            "plugin {name:?} is a {}; this component is a {}: use another name",
            r.kind.as_str(),
            prepared.kind.as_str()
        )),
        Some(r) => match r.versions.iter().find(|v| v.sha256 == prepared.sha256) {
            Some(v) => Ok(Registration::Unchanged(v.version)),
            None => {
                let mut r = r;
                let next = r.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
                r.versions.push(version(next));
                r.current = next;
                Ok(Registration::Added(r))
            }
        },
        None => Ok(Registration::Added(PluginRecord {
            name: name.to_owned(),
            kind: prepared.kind,
            current: 1,
            versions: vec![version(1)],
        })),
    }
}

/// Persists a plugin record, then makes it visible.
pub async fn save(
    store: &dyn crate::store::Store,
    catalog: &Catalog,
    tenant: &str,
    record: &PluginRecord,
) -> Result<(), crate::store::StoreError> {
    let spec =
        serde_json::to_value(record).map_err(|e| crate::store::StoreError::Backend(e.into()))?;
    let resource = crate::store::Resource {
        tenant: tenant.to_owned(),
        kind: crate::store::ResourceKind::Plugin,
        name: record.name.clone(),
        spec,
        updated_ms: crate::clock::now_ms(),
    };
    store.put_resource(resource).await?;
    catalog.put_plugin(tenant, record.clone());
    Ok(())
}

/// How a rule or target refers to a plugin, with the configuration it passes.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginBinding {
    /// Plugin name.
    pub name: String,
    /// A pinned version, or None for the current one.
    pub version: Option<u32>,
    /// Key-values the plugin reads through its `config` import.
    pub config: BTreeMap<String, String>,
}

impl PluginBinding {
    /// Parses `name` or `name@version`.
    pub fn parse_ref(text: &str) -> Result<(String, Option<u32>), String> {
        let (name, version) = match text.split_once('@') {
            None => (text, None),
            Some((name, v)) => {
                let v: u32 = v
                    .parse()
                    .ok()
                    .filter(|v| *v > 0)
                    .ok_or_else(|| format!("version in {text:?} must be a positive integer"))?;
                (name, Some(v))
            }
        };
        if !crate::route::valid_name(name) {
            return Err(format!(
                "plugin name {name:?} must be 1-64 characters of A-Z a-z 0-9 . _ -"
            ));
        }
        Ok((name.to_owned(), version))
    }

    /// Reads a binding from a rule: `"name[@v]"` or `{"plugin": "name[@v]", "config": {...}}`.
    /// Config values that are not strings are passed as their JSON text.
    pub fn from_json(value: &Value, allowed: &[&str]) -> Result<Self, (String, String)> {
        match value {
            Value::String(s) => {
                let (name, version) = Self::parse_ref(s).map_err(|e| (String::new(), e))?;
                Ok(Self {
                    name,
                    version,
                    config: BTreeMap::new(),
                })
            }
            Value::Object(obj) => {
                for key in obj.keys() {
                    if key != "plugin" && key != "config" && !allowed.contains(&key.as_str()) {
                        return Err((key.clone(), "unknown field".into()));
                    }
                }
                let Some(Value::String(r)) = obj.get("plugin") else {
                    return Err((
                        "plugin".into(),
                        "missing: name or name@version of a plugin".into(),
                    ));
                };
                let (name, version) = Self::parse_ref(r).map_err(|e| ("plugin".into(), e))?;
                let config = config_map(obj.get("config")).map_err(|e| ("config".into(), e))?;
                Ok(Self {
                    name,
                    version,
                    config,
                })
            }
            _ => Err((
                String::new(),
                "must be \"name\", \"name@version\" or {\"plugin\", \"config\"}".into(),
            )),
        }
    }

    /// `name` or `name@version`, as written.
    pub fn reference(&self) -> String {
        match self.version {
            Some(v) => format!("{}@{v}", self.name),
            None => self.name.clone(),
        }
    }
}

/// Flattens a JSON config object into the string key-values the WIT `config` import serves.
pub fn config_map(value: Option<&Value>) -> Result<BTreeMap<String, String>, String> {
    match value {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(obj)) => Ok(obj
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect()),
        Some(_) => Err("must be an object of key-values".into()),
    }
}

/// Runs tenants' plugins on behalf of the router and the delivery engine.
pub struct PluginHost {
    /// The sandbox.
    pub runtime: Arc<PluginRuntime>,
    catalog: Arc<Catalog>,
    /// The server's limits per kind; the admin's overrides for a tenant
    /// (kept in the catalog) apply on top.
    pub defaults: KindLimits,
    /// Consecutive crashes per (tenant, plugin, version).
    crashes: Mutex<HashMap<(String, String, u32), u32>>,
    /// Invocations in progress per tenant, so one tenant's slow plugins cannot
    /// take every sandbox instance.
    tenant_slots: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Plugin invocations one tenant may have running at once.
pub const TENANT_CONCURRENCY: usize = 8;

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost").finish_non_exhaustive()
    }
}

/// Why a plugin could not run or failed.
fn error(code: impl Into<String>, message: impl Into<String>) -> AttemptError {
    AttemptError {
        code: code.into(),
        message: message.into(),
        status: None,
    }
}

/// The error code recorded for a sandbox failure (`plugin_deadline`, ...).
pub fn failure_code(kind: FailureKind) -> String {
    format!("plugin_{}", kind.as_str())
}

impl PluginHost {
    /// Builds the host.
    pub fn new(runtime: Arc<PluginRuntime>, catalog: Arc<Catalog>, defaults: KindLimits) -> Self {
        Self {
            runtime,
            catalog,
            defaults,
            crashes: Mutex::new(HashMap::new()),
            tenant_slots: Mutex::new(HashMap::new()),
        }
    }

    /// The limits `tenant`'s plugins of `kind` run under: the server's, with
    /// the admin's overrides for the tenant. Read per invocation, so a change
    /// applies from the next one.
    pub fn limits(&self, tenant: &str, kind: PluginKind) -> PluginLimits {
        match self.catalog.plugin_limits(tenant) {
            Some(overrides) => overrides.apply(&self.defaults, kind),
            None => self.defaults.get(kind).clone(),
        }
    }

    /// Waits for one of the tenant's invocation slots.
    pub async fn tenant_slot(&self, tenant: &str) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut slots = self.tenant_slots.lock().unwrap_or_else(|p| p.into_inner());
            slots
                .entry(tenant.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(TENANT_CONCURRENCY)))
                .clone()
        };
        semaphore.acquire_owned().await.ok()
    }

    /// Whether a version is paused after repeated crashes.
    pub fn is_paused(&self, tenant: &str, name: &str, version: u32) -> bool {
        let crashes = self.crashes.lock().unwrap_or_else(|p| p.into_inner());
        crashes
            .get(&(tenant.to_owned(), name.to_owned(), version))
            .is_some_and(|n| *n >= PAUSE_AFTER_CRASHES)
    }

    /// Clears a version's crash count (e.g. when it becomes current again).
    pub fn resume(&self, tenant: &str, name: &str, version: u32) {
        let mut crashes = self.crashes.lock().unwrap_or_else(|p| p.into_inner());
        crashes.remove(&(tenant.to_owned(), name.to_owned(), version));
    }

    fn record(&self, tenant: &str, name: &str, version: u32, crashed: bool) {
        let mut crashes = self.crashes.lock().unwrap_or_else(|p| p.into_inner());
        let key = (tenant.to_owned(), name.to_owned(), version);
        if crashed {
            let n = crashes.entry(key).or_insert(0);
            *n += 1;
            if *n == PAUSE_AFTER_CRASHES {
                tracing::warn!(
                    tenant,
                    plugin = name,
                    version,
                    "plugin version paused after repeated crashes"
                );
            }
        } else {
            crashes.remove(&key);
        }
    }

    /// Finds the version a binding means right now and loads it.
    fn resolve<P: PluginHandle>(
        &self,
        tenant: &str,
        binding: &PluginBinding,
    ) -> Result<(u32, P), AttemptError> {
        let kind = P::KIND;
        let record = self.catalog.plugin(tenant, &binding.name).ok_or_else(|| {
            error(
                "plugin_missing",
                format!("plugin {:?} no longer exists", binding.name),
            )
        })?;
        if record.kind != kind {
            return Err(error(
                "plugin_kind",
                format!(
                    "plugin {:?} is a {}, not a {}",
                    binding.name,
                    record.kind.as_str(),
                    kind.as_str()
                ),
            ));
        }
        let version = binding.version.unwrap_or(record.current);
        let v = record.version(version).ok_or_else(|| {
            error(
                "plugin_missing",
                format!("plugin {} has no version {version}", binding.name),
            )
        })?;
        if self.is_paused(tenant, &binding.name, version) {
            return Err(error(
                "plugin_paused",
                format!(
                    "{}@{version} is paused after {PAUSE_AFTER_CRASHES} consecutive crashes; upload a fix or roll back, then redrive",
                    binding.name
                ),
            ));
        }
        let loaded = self.runtime.load_as(&v.sha256).map_err(|e| {
            error(
                "plugin_load",
                format!("cannot load {}@{version}: {e}", binding.name),
            )
        })?;
        Ok((version, loaded))
    }

    fn context<'a>(
        &'a self,
        tenant: &'a str,
        binding: &'a PluginBinding,
        version: u32,
        event_id: &'a str,
        limits: &'a PluginLimits,
        allowed_hosts: &'a [String],
    ) -> InvokeContext<'a> {
        InvokeContext {
            tenant,
            plugin: &binding.name,
            version,
            event_id,
            config: &binding.config,
            limits,
            allowed_hosts,
        }
    }

    fn failed(
        &self,
        tenant: &str,
        binding: &PluginBinding,
        version: u32,
        f: PluginFailure,
    ) -> AttemptError {
        let crashed = matches!(
            f.kind,
            FailureKind::Trap | FailureKind::OutOfMemory | FailureKind::Deadline
        );
        self.record(tenant, &binding.name, version, crashed);
        error(
            failure_code(f.kind),
            format!("{}@{version}: {}", binding.name, f.message),
        )
    }

    /// Runs a filter; `Ok(true)` lets the event through.
    pub async fn filter(
        &self,
        tenant: &str,
        binding: &PluginBinding,
        event: &Event,
    ) -> Result<bool, AttemptError> {
        let (version, plugin) = self.resolve::<FilterPlugin>(tenant, binding)?;
        let limits = self.limits(tenant, PluginKind::Filter);
        let cx = self.context(tenant, binding, version, event.id(), &limits, &[]);
        match self.runtime.filter(&plugin, &cx, event).await {
            Ok(inv) => {
                self.record(tenant, &binding.name, version, false);
                Ok(inv.value)
            }
            Err(f) => Err(self.failed(tenant, binding, version, f)),
        }
    }

    /// Runs a transformer: zero or more events out.
    pub async fn transform(
        &self,
        tenant: &str,
        binding: &PluginBinding,
        event: &Event,
    ) -> Result<Vec<Event>, AttemptError> {
        let (version, plugin) = self.resolve::<TransformerPlugin>(tenant, binding)?;
        let limits = self.limits(tenant, PluginKind::Transformer);
        let cx = self.context(tenant, binding, version, event.id(), &limits, &[]);
        match self.runtime.transform(&plugin, &cx, event).await {
            Ok(inv) => {
                self.record(tenant, &binding.name, version, false);
                Ok(inv.value)
            }
            Err(f) => Err(self.failed(tenant, binding, version, f)),
        }
    }

    /// Checks a connector's configuration at deploy time.
    pub async fn validate_connector(
        &self,
        tenant: &str,
        binding: &PluginBinding,
        allowed_hosts: &[String],
    ) -> Result<(), AttemptError> {
        let (version, plugin) = self.resolve::<ConnectorPlugin>(tenant, binding)?;
        let limits = self.limits(tenant, PluginKind::Connector);
        let cx = self.context(tenant, binding, version, "", &limits, allowed_hosts);
        self.runtime
            .validate_config(&plugin, &cx)
            .await
            .map(|_| ())
            .map_err(|f| {
                error(
                    failure_code(f.kind),
                    format!("{}@{version}: {}", binding.name, f.message),
                )
            })
    }

    /// Delivers one event through a connector.
    pub async fn deliver(
        &self,
        tenant: &str,
        binding: &PluginBinding,
        allowed_hosts: &[String],
        event: &Event,
    ) -> Outcome {
        let (version, plugin) = match self.resolve::<ConnectorPlugin>(tenant, binding) {
            Ok(v) => v,
            // Paused or missing plugins may be fixed by the tenant: keep retrying until the limits run out.
            Err(e) if e.code == "plugin_paused" || e.code == "plugin_load" => {
                return Outcome::Retry(failure(e));
            }
            Err(e) => return Outcome::Permanent(failure(e)),
        };
        let limits = self.limits(tenant, PluginKind::Connector);
        let cx = self.context(tenant, binding, version, event.id(), &limits, allowed_hosts);
        let _slot = self.tenant_slot(tenant).await;
        match self
            .runtime
            .deliver(&plugin, &cx, std::slice::from_ref(event))
            .await
        {
            Ok(inv) => {
                self.record(tenant, &binding.name, version, false);
                match inv.value.into_iter().next() {
                    Some(DeliveryResult::Delivered) => Outcome::Delivered { status: 200 },
                    Some(DeliveryResult::Retryable {
                        message,
                        retry_after,
                    }) => Outcome::Retry(Failure {
                        code: "connector_retryable".into(),
                        message,
                        status: None,
                        retry_after,
                    }),
                    Some(DeliveryResult::Permanent(message)) => {
                        Outcome::Permanent(Failure::new("connector_permanent", message))
                    }
                    None => Outcome::Retry(Failure::new(
                        "plugin_invalid_output",
                        "the connector returned no outcome",
                    )),
                }
            }
            Err(f) => {
                let permanent = matches!(
                    f.kind,
                    FailureKind::InvalidEvent | FailureKind::InvalidConfig
                );
                let e = self.failed(tenant, binding, version, f);
                if permanent {
                    Outcome::Permanent(failure(e))
                } else {
                    Outcome::Retry(failure(e))
                }
            }
        }
    }
}

fn failure(e: AttemptError) -> Failure {
    Failure {
        code: e.code,
        message: e.message,
        status: None,
        retry_after: None::<Duration>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_parse_with_and_without_versions() {
        assert_eq!(
            PluginBinding::parse_ref("big-spender@3"),
            Ok(("big-spender".into(), Some(3)))
        );
        assert_eq!(
            PluginBinding::parse_ref("redact"),
            Ok(("redact".into(), None))
        );
        assert!(PluginBinding::parse_ref("x@0").is_err());
        assert!(PluginBinding::parse_ref("x@latest").is_err());
        assert!(PluginBinding::parse_ref("bad/name").is_err());
    }

    #[test]
    fn bindings_carry_config_as_strings() {
        let b = PluginBinding::from_json(
            &json!({"plugin": "f@2", "config": {"threshold": 100, "field": "/total"}}),
            &[],
        )
        .unwrap();
        assert_eq!(b.version, Some(2));
        assert_eq!(b.config["threshold"], "100");
        assert_eq!(b.config["field"], "/total");
        let err = PluginBinding::from_json(&json!({"plugin": "f", "extra": 1}), &[]).unwrap_err();
        assert_eq!(err.0, "extra");
    }
}
