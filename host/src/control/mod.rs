//! The control plane: every change to tenants, keys, buses, rules, queues,
//! plugins and limits goes through [`ControlPlane`], which validates it,
//! persists it, and only then publishes it to the in-memory [`Catalog`]
//! the data plane reads. The HTTP API, `--plugins-dir` and start-up (which
//! replays the stored configuration) all use the same calls, so
//! "persist, then publish" is written once.
//!
//! On a store several nodes share, each node also follows the store's
//! change feed ([`ControlPlane::follow`], in `follow`) and applies what the
//! others commit through [`ControlPlane::apply`] — the step start-up uses
//! for every stored record — so a change made on one node is live on all
//! of them within moments.

pub mod catalog;
pub mod dev_dir;
mod follow;
pub mod history;
mod keys;
mod settings;

pub use self::catalog::{BusView, Catalog, TenantSummary};
pub use self::keys::{generate_key, hash_key};
pub use self::settings::{BusSettings, QueueSettings};

use crate::clock::SharedClock;
use crate::deliver::{BuildContext, Reference, TargetServices};
use crate::pattern::PatternLimits;
use crate::plugin::registry::{PluginDirectory, PluginHost};
use crate::plugin::{LimitsOverride, LimitsOverrides};
use crate::resource::{PluginRecord, Problems, Registration, Upload};
use crate::route::{Rule, RuleContext, compile_rule};
use crate::store::{
    ConfigChange, ConfigSnapshot, ConfigStore, KeyRecord, Queues, Resource, ResourceKind,
    StoreError, TenantRecord,
};
use serde_json::{Value, json};
use std::sync::Arc;

/// The bus every tenant has, which cannot be deleted.
pub const DEFAULT_BUS: &str = "default";

/// The name of the one `plugin_limits` resource of a tenant.
const PLUGIN_LIMITS: &str = "plugin_limits";

/// Settings key of the admin key's hash.
const ADMIN_KEY_HASH: &str = "admin_key_hash";

/// Why a control-plane call did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Something the call names does not exist (for this tenant).
    #[error("{what} {name:?} does not exist")]
    NotFound {
        /// What kind of thing.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// The call conflicts with the current state (exists already, in use).
    #[error("{message}")]
    Conflict {
        /// What is in the way.
        message: String,
        /// The input at fault, if one is.
        field: Option<String>,
    },
    /// The input is malformed; every problem is listed.
    #[error("{problems}")]
    Invalid {
        /// The error code (`invalid_rule`, `invalid_field`, ...).
        code: &'static str,
        /// What is wrong where.
        problems: Problems,
    },
    /// The input is well-formed but names things that are not there, or a
    /// target's far end refused it (HTTP 422).
    #[error("{problems}")]
    Unresolved {
        /// The error code.
        code: &'static str,
        /// What is wrong where.
        problems: Problems,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ControlError {
    fn not_found(what: &'static str, name: &str) -> Self {
        Self::NotFound {
            what,
            name: name.to_owned(),
        }
    }

    fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict {
            message: message.into(),
            field: None,
        }
    }
}

/// Result alias for control-plane calls.
pub type ControlResult<T> = Result<T, ControlError>;

/// A key as issued: the secret is shown once and never stored.
#[derive(Clone, Debug)]
pub struct IssuedKey {
    /// The tenant it acts for.
    pub tenant: String,
    /// Its public id (for revoking).
    pub key_id: String,
    /// The secret.
    pub api_key: String,
}

/// The control plane. Shared as `Arc<ControlPlane>`.
pub struct ControlPlane {
    config: Arc<dyn ConfigStore>,
    queues: Arc<dyn Queues>,
    catalog: Arc<Catalog>,
    services: TargetServices,
    plugins: Arc<PluginHost>,
    pattern_limits: PatternLimits,
    clock: SharedClock,
    /// Taken by each of this node's writes from before it is stored until it
    /// is published, and by the follower for each change it applies, so a
    /// change another node made earlier can never land on top of a newer
    /// write of this node (see [`crate::store::ConfigWatch::superseded`]).
    publishing: tokio::sync::Mutex<()>,
}

/// Held while a change is stored and published (see `ControlPlane::publishing`).
type Turn<'a> = tokio::sync::MutexGuard<'a, ()>;

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane").finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Builds the control plane over the store and the catalog it publishes to.
    pub fn new(
        config: Arc<dyn ConfigStore>,
        queues: Arc<dyn Queues>,
        catalog: Arc<Catalog>,
        services: TargetServices,
        pattern_limits: PatternLimits,
    ) -> Self {
        Self {
            plugins: services.plugins.clone(),
            clock: services.clock.clone(),
            config,
            queues,
            catalog,
            services,
            pattern_limits,
            publishing: tokio::sync::Mutex::new(()),
        }
    }

    /// Waits for this node's turn to store and publish a change.
    async fn turn(&self) -> Turn<'_> {
        self.publishing.lock().await
    }

    /// The catalog this control plane publishes to.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The plugin host (for the sandbox and crash state).
    pub fn plugins(&self) -> &Arc<PluginHost> {
        &self.plugins
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Replays the stored configuration into the catalog (at start-up).
    /// Resources that no longer load (e.g. a rule naming a plugin deleted
    /// by hand) are logged and skipped, so one bad record cannot keep the
    /// bus from starting.
    pub async fn load(&self) -> ControlResult<()> {
        let snapshot = self.config.load().await?;
        self.apply_snapshot(&snapshot).await;
        Ok(())
    }

    /// Applies every record of a snapshot, what others refer to first.
    async fn apply_snapshot(&self, snapshot: &ConfigSnapshot) {
        for t in &snapshot.tenants {
            let _ = self.apply(ConfigChange::Tenant(t.clone())).await;
        }
        for k in &snapshot.keys {
            let _ = self.apply(ConfigChange::Key(k.clone())).await;
        }
        for kind in ResourceKind::LOAD_ORDER {
            for r in snapshot.resources.iter().filter(|r| r.kind == kind) {
                if let Err(e) = self.apply(ConfigChange::Resource(r.clone())).await {
                    tracing::error!(tenant = %r.tenant, kind = kind.as_str(), name = %r.name, error = %e, "stored resource no longer loads; skipped");
                }
            }
        }
    }

    /// Makes one committed change live in the catalog: what start-up does
    /// for every stored record, and what a node following the store does
    /// for each change another node commits. Idempotent.
    pub async fn apply(&self, change: ConfigChange) -> ControlResult<()> {
        match change {
            ConfigChange::Tenant(t) => self.catalog.add_tenant(&t.name, t.created_ms),
            ConfigChange::Key(k) => self
                .catalog
                .add_key(&k.tenant, &k.id, &k.hash, k.created_ms),
            ConfigChange::KeyRevoked { tenant, id } => self.catalog.remove_key(&tenant, &id),
            ConfigChange::Resource(r) => self.publish(&r).await?,
            ConfigChange::ResourceDeleted { tenant, kind, name } => {
                self.unpublish(&tenant, kind, &name)
            }
            // Settings are read where they are used (the admin key at start-up).
            ConfigChange::Setting { .. } => {}
        }
        Ok(())
    }

    /// Takes a deleted resource out of the catalog.
    fn unpublish(&self, tenant: &str, kind: ResourceKind, name: &str) {
        match kind {
            ResourceKind::Bus => {
                self.catalog.delete_bus(tenant, name);
            }
            ResourceKind::Rule => {
                if let Some((bus, rule)) = name.split_once('/') {
                    self.catalog.delete_rule(tenant, bus, rule);
                }
            }
            ResourceKind::Queue => {
                self.catalog.delete_queue(tenant, name);
            }
            ResourceKind::Plugin => {
                self.catalog.delete_plugin(tenant, name);
            }
            ResourceKind::PluginLimits => self.catalog.set_plugin_limits(tenant, None),
            ResourceKind::Archive => {
                if let Some((bus, archive)) = name.split_once('/') {
                    self.catalog.history.delete_archive(tenant, bus, archive);
                }
            }
        }
    }

    /// Makes a stored resource live in the catalog.
    async fn publish(&self, r: &Resource) -> ControlResult<()> {
        let invalid = |e: serde_json::Error| ControlError::Invalid {
            code: "invalid_record",
            problems: Problems::one("", e.to_string()),
        };
        match r.kind {
            ResourceKind::Bus => self.catalog.put_bus(&r.tenant, &r.name, r.spec.clone()),
            ResourceKind::Queue => self.catalog.put_queue(&r.tenant, &r.name, r.spec.clone()),
            ResourceKind::Plugin => {
                let record: PluginRecord =
                    serde_json::from_value(r.spec.clone()).map_err(invalid)?;
                self.catalog.put_plugin(&r.tenant, record);
            }
            ResourceKind::PluginLimits => {
                let overrides: LimitsOverrides =
                    serde_json::from_value(r.spec.clone()).map_err(invalid)?;
                self.catalog.set_plugin_limits(&r.tenant, Some(overrides));
            }
            ResourceKind::Rule => {
                let Some((bus, name)) = r.name.split_once('/') else {
                    return Err(ControlError::not_found("rule", &r.name));
                };
                let rule = self.compile(&r.tenant, bus, name, &r.spec)?;
                self.catalog.put_rule(&r.tenant, Arc::new(rule));
            }
            ResourceKind::Archive => self.publish_archive(r)?,
        }
        Ok(())
    }

    async fn persist(
        &self,
        tenant: &str,
        kind: ResourceKind,
        name: &str,
        spec: Value,
    ) -> ControlResult<()> {
        let resource = Resource {
            tenant: tenant.to_owned(),
            kind,
            name: name.to_owned(),
            spec,
            updated_ms: self.now(),
        };
        self.config.put_resource(resource).await?;
        Ok(())
    }

    fn require_tenant(&self, tenant: &str) -> ControlResult<()> {
        if self.catalog.has_tenant(tenant) {
            Ok(())
        } else {
            Err(ControlError::not_found("tenant", tenant))
        }
    }

    // ---- admin key, tenants and keys -------------------------------------

    /// Decides the admin key hash: the configured key wins; else the stored
    /// hash; else a new key is generated and returned so it can be shown once.
    pub async fn admin_key(
        &self,
        configured: Option<&str>,
    ) -> ControlResult<(String, Option<String>)> {
        if let Some(key) = configured {
            let hash = hash_key(key);
            self.config.put_setting(ADMIN_KEY_HASH, &hash).await?;
            return Ok((hash, None));
        }
        if let Some(hash) = self.config.setting(ADMIN_KEY_HASH).await? {
            return Ok((hash, None));
        }
        let key = generate_key();
        let hash = hash_key(&key);
        self.config.put_setting(ADMIN_KEY_HASH, &hash).await?;
        Ok((hash, Some(key)))
    }

    /// Creates a tenant with its `default` bus and a first API key.
    pub async fn create_tenant(&self, name: &str) -> ControlResult<IssuedKey> {
        if !crate::resource::valid_name(name) {
            return Err(ControlError::Invalid {
                code: "invalid_name",
                problems: Problems::one(
                    "name",
                    format!("tenant name {name:?} {}", crate::resource::NAME_RULE),
                ),
            });
        }
        if self.catalog.has_tenant(name) {
            return Err(ControlError::Conflict {
                message: format!("tenant {name:?} already exists"),
                field: Some("name".into()),
            });
        }
        self.ensure_tenant(name).await?;
        self.issue_key(name).await
    }

    /// Creates a tenant (with its `default` bus) unless it exists.
    pub async fn ensure_tenant(&self, name: &str) -> ControlResult<()> {
        if self.catalog.has_tenant(name) {
            return Ok(());
        }
        let _turn = self.turn().await;
        let created_ms = self.now();
        self.config
            .create_tenant(TenantRecord {
                name: name.to_owned(),
                created_ms,
            })
            .await?;
        self.catalog.add_tenant(name, created_ms);
        self.persist(name, ResourceKind::Bus, DEFAULT_BUS, json!({}))
            .await?;
        self.catalog.put_bus(name, DEFAULT_BUS, json!({}));
        tracing::info!(tenant = %name, "tenant created");
        Ok(())
    }

    /// Issues a new API key for a tenant, persisting only its hash.
    pub async fn issue_key(&self, tenant: &str) -> ControlResult<IssuedKey> {
        self.require_tenant(tenant)?;
        let key = generate_key();
        let hash = hash_key(&key);
        let key_id = format!("key_{}", &hash[..16]);
        let _turn = self.turn().await;
        let created_ms = self.now();
        self.config
            .put_key(KeyRecord {
                id: key_id.clone(),
                tenant: tenant.to_owned(),
                hash: hash.clone(),
                created_ms,
            })
            .await?;
        self.catalog.add_key(tenant, &key_id, &hash, created_ms);
        Ok(IssuedKey {
            tenant: tenant.to_owned(),
            key_id,
            api_key: key,
        })
    }

    /// Revokes a key.
    pub async fn revoke_key(&self, tenant: &str, key_id: &str) -> ControlResult<()> {
        let _turn = self.turn().await;
        if !self.config.revoke_key(tenant, key_id).await? {
            return Err(ControlError::not_found("key", key_id));
        }
        self.catalog.remove_key(tenant, key_id);
        Ok(())
    }

    // ---- buses and rules ---------------------------------------------------

    /// Creates or updates a bus's settings; true when it was created.
    pub async fn put_bus(&self, tenant: &str, bus: &str, settings: &Value) -> ControlResult<bool> {
        BusSettings::parse(settings).map_err(|problems| ControlError::Invalid {
            code: "invalid_field",
            problems,
        })?;
        let _turn = self.turn().await;
        let created = !self.catalog.has_bus(tenant, bus);
        self.persist(tenant, ResourceKind::Bus, bus, settings.clone())
            .await?;
        self.catalog.put_bus(tenant, bus, settings.clone());
        Ok(created)
    }

    /// Deletes a bus and its rules (not the default bus, nor one that rules send to).
    pub async fn delete_bus(&self, tenant: &str, bus: &str) -> ControlResult<()> {
        let view = self
            .catalog
            .bus(tenant, bus)
            .ok_or_else(|| ControlError::not_found("bus", bus))?;
        if bus == DEFAULT_BUS {
            return Err(ControlError::Conflict {
                message: "the default bus cannot be deleted".into(),
                field: Some("bus".into()),
            });
        }
        let users = self
            .catalog
            .rules_referencing(tenant, &Reference::Bus(bus.to_owned()));
        if !users.is_empty() {
            return Err(ControlError::conflict(format!(
                "bus is the target of rules {users:?}; change them first"
            )));
        }
        let _turn = self.turn().await;
        for rule in view.routes.rules.keys() {
            self.config
                .delete_resource(tenant, ResourceKind::Rule, &rule_key(bus, rule))
                .await?;
        }
        self.delete_archives_of(tenant, bus).await?;
        self.config
            .delete_resource(tenant, ResourceKind::Bus, bus)
            .await?;
        self.catalog.delete_bus(tenant, bus);
        Ok(())
    }

    fn compile(&self, tenant: &str, bus: &str, name: &str, body: &Value) -> ControlResult<Rule> {
        let lookup = |plugin: &str| self.catalog.plugin(tenant, plugin);
        let targets = BuildContext {
            tenant,
            services: &self.services,
            plugin: &lookup,
        };
        let cx = RuleContext {
            pattern_limits: &self.pattern_limits,
            targets: &targets,
        };
        compile_rule(bus, name, body, &cx).map_err(|problems| ControlError::Invalid {
            code: "invalid_rule",
            problems,
        })
    }

    /// Creates or replaces a rule; true when it was created. Takes effect
    /// at once: an event accepted after this returns is routed by the rule.
    pub async fn put_rule(
        &self,
        tenant: &str,
        bus: &str,
        name: &str,
        body: &Value,
    ) -> ControlResult<(Arc<Rule>, bool)> {
        let view = self
            .catalog
            .bus(tenant, bus)
            .ok_or_else(|| ControlError::not_found("bus", bus))?;
        let rule = self.compile(tenant, bus, name, body)?;
        // Targets must name resources the tenant has, and far ends that check
        // their configuration (connectors) must accept it.
        let mut missing = Problems::new();
        for (i, target) in rule.targets.iter().enumerate() {
            for (member, reference) in target.target.references() {
                let exists = match &reference {
                    Reference::Bus(b) => self.catalog.has_bus(tenant, b),
                    Reference::Queue(q) => self.catalog.has_queue(tenant, q),
                    Reference::Plugin(p) => self.catalog.plugin(tenant, p).is_some(),
                };
                if !exists {
                    let (what, name) = match &reference {
                        Reference::Bus(b) => ("bus", b),
                        Reference::Queue(q) => ("queue", q),
                        Reference::Plugin(p) => ("plugin", p),
                    };
                    missing.add(
                        format!("targets[{i}].{member}"),
                        format!("{what} {name:?} does not exist"),
                    );
                }
            }
            if let Err(p) = target.target.check().await {
                missing.extend_within(&format!("targets[{i}]"), p);
            }
        }
        if !missing.is_empty() {
            return Err(ControlError::Unresolved {
                code: "invalid_rule",
                problems: missing,
            });
        }
        let _turn = self.turn().await;
        let created = !view.routes.rules.contains_key(name);
        self.persist(
            tenant,
            ResourceKind::Rule,
            &rule_key(bus, name),
            body.clone(),
        )
        .await?;
        let rule = Arc::new(rule);
        if !self.catalog.put_rule(tenant, rule.clone()) {
            return Err(ControlError::not_found("bus", bus));
        }
        Ok((rule, created))
    }

    /// Deletes a rule.
    pub async fn delete_rule(&self, tenant: &str, bus: &str, name: &str) -> ControlResult<()> {
        let view = self
            .catalog
            .bus(tenant, bus)
            .ok_or_else(|| ControlError::not_found("bus", bus))?;
        if !view.routes.rules.contains_key(name) {
            return Err(ControlError::not_found("rule", name));
        }
        let _turn = self.turn().await;
        self.config
            .delete_resource(tenant, ResourceKind::Rule, &rule_key(bus, name))
            .await?;
        self.catalog.delete_rule(tenant, bus, name);
        Ok(())
    }

    // ---- queues ------------------------------------------------------------

    /// Creates or updates a queue; true when it was created.
    pub async fn put_queue(
        &self,
        tenant: &str,
        queue: &str,
        settings: &Value,
    ) -> ControlResult<bool> {
        QueueSettings::parse(settings).map_err(|problems| ControlError::Invalid {
            code: "invalid_field",
            problems,
        })?;
        let _turn = self.turn().await;
        let created = !self.catalog.has_queue(tenant, queue);
        self.persist(tenant, ResourceKind::Queue, queue, settings.clone())
            .await?;
        self.catalog.put_queue(tenant, queue, settings.clone());
        Ok(created)
    }

    /// Deletes a queue and its messages (not one that rules send to).
    pub async fn delete_queue(&self, tenant: &str, queue: &str) -> ControlResult<()> {
        if !self.catalog.has_queue(tenant, queue) {
            return Err(ControlError::not_found("queue", queue));
        }
        let users = self
            .catalog
            .rules_referencing(tenant, &Reference::Queue(queue.to_owned()));
        if !users.is_empty() {
            return Err(ControlError::conflict(format!(
                "queue is the target of rules {users:?}; change them first"
            )));
        }
        self.queues.queue_purge(tenant, queue).await?;
        let _turn = self.turn().await;
        self.config
            .delete_resource(tenant, ResourceKind::Queue, queue)
            .await?;
        self.catalog.delete_queue(tenant, queue);
        Ok(())
    }

    // ---- plugins -----------------------------------------------------------

    /// Registers an uploaded (already prepared) component under `name`.
    pub async fn register_plugin(
        &self,
        tenant: &str,
        name: &str,
        upload: Upload<'_>,
    ) -> ControlResult<Registration> {
        let existing = self.catalog.plugin(tenant, name);
        let sha256 = upload.sha256.to_owned();
        let registration =
            Registration::of(existing, name, upload, self.now()).map_err(|message| {
                ControlError::Conflict {
                    message,
                    field: Some("body".into()),
                }
            })?;
        if let Registration::Added(record) = &registration {
            // Other nodes must be able to fetch the component once they see the record.
            self.plugins.share(&sha256).await?;
            self.save_plugin(tenant, record).await?;
        }
        Ok(registration)
    }

    async fn save_plugin(&self, tenant: &str, record: &PluginRecord) -> ControlResult<()> {
        let _turn = self.turn().await;
        let spec = serde_json::to_value(record).map_err(|e| StoreError::Backend(e.into()))?;
        self.persist(tenant, ResourceKind::Plugin, &record.name, spec)
            .await?;
        self.catalog.put_plugin(tenant, record.clone());
        Ok(())
    }

    /// Makes an older version current again (`version`, or the one before
    /// the current one) and lifts a pause on it.
    pub async fn rollback_plugin(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
    ) -> ControlResult<PluginRecord> {
        let mut record = self
            .catalog
            .plugin(tenant, name)
            .ok_or_else(|| ControlError::not_found("plugin", name))?;
        let target = match version {
            Some(v) => {
                record
                    .version(v)
                    .map(|v| v.version)
                    .ok_or_else(|| ControlError::Invalid {
                        code: "invalid_field",
                        problems: Problems::one(
                            "version",
                            format!("plugin {name:?} has no version {v}"),
                        ),
                    })?
            }
            None => record.previous().ok_or_else(|| {
                ControlError::conflict(format!(
                    "plugin {name:?} has no version before {}",
                    record.current
                ))
            })?,
        };
        record.current = target;
        self.save_plugin(tenant, &record).await?;
        self.plugins.resume(tenant, name, target);
        Ok(record)
    }

    /// Deletes a plugin that no rule uses.
    pub async fn delete_plugin(&self, tenant: &str, name: &str) -> ControlResult<()> {
        if self.catalog.plugin(tenant, name).is_none() {
            return Err(ControlError::not_found("plugin", name));
        }
        let users = self.catalog.rules_using_plugin(tenant, name);
        if !users.is_empty() {
            return Err(ControlError::conflict(format!(
                "plugin is used by rules {users:?}; change them first"
            )));
        }
        let _turn = self.turn().await;
        self.config
            .delete_resource(tenant, ResourceKind::Plugin, name)
            .await?;
        self.catalog.delete_plugin(tenant, name);
        Ok(())
    }

    /// Sets the admin's overrides of a tenant's plugin limits; refuses
    /// overrides whose effective limits are invalid, naming each problem
    /// after the override that caused it.
    pub async fn set_plugin_limits(
        &self,
        tenant: &str,
        overrides: LimitsOverrides,
    ) -> ControlResult<()> {
        self.require_tenant(tenant)?;
        if let Err(problems) = self.plugins.defaults.with(&overrides).validate() {
            return Err(ControlError::Invalid {
                code: "invalid_limits",
                problems: limit_problems(&overrides, problems),
            });
        }
        let spec = serde_json::to_value(&overrides).map_err(|e| StoreError::Backend(e.into()))?;
        let _turn = self.turn().await;
        self.persist(tenant, ResourceKind::PluginLimits, PLUGIN_LIMITS, spec)
            .await?;
        self.catalog.set_plugin_limits(tenant, Some(overrides));
        tracing::info!(%tenant, "plugin limits changed");
        Ok(())
    }

    /// Removes the admin's overrides of a tenant's plugin limits.
    pub async fn clear_plugin_limits(&self, tenant: &str) -> ControlResult<()> {
        self.require_tenant(tenant)?;
        let _turn = self.turn().await;
        self.config
            .delete_resource(tenant, ResourceKind::PluginLimits, PLUGIN_LIMITS)
            .await?;
        self.catalog.set_plugin_limits(tenant, None);
        Ok(())
    }

    /// A tenant's plugin limits: the admin's overrides and what each kind
    /// effectively runs under.
    pub fn plugin_limits(&self, tenant: &str) -> ControlResult<Value> {
        self.require_tenant(tenant)?;
        let overrides = self.catalog.plugin_limits(tenant).unwrap_or_default();
        Ok(json!({
            "tenant": tenant,
            "overrides": *overrides,
            "effective": self.plugins.defaults.with(&overrides),
        }))
    }
}

/// Persisted name of a rule resource.
fn rule_key(bus: &str, rule: &str) -> String {
    format!("{bus}/{rule}")
}

/// Names a problem of the effective limits after the override that caused
/// it (`all.cpu_ms` rather than `filter.cpu_ms` when `all` set it).
fn limit_problems(
    overrides: &LimitsOverrides,
    problems: Vec<crate::plugin::limits::LimitError>,
) -> Problems {
    let sets = |o: &LimitsOverride, field: &str| {
        serde_json::to_value(o).is_ok_and(|v| v.get(field).is_some())
    };
    let mut out = Problems::new();
    for p in problems {
        let (kind, field) = p.field.split_once('.').unwrap_or(("all", &p.field));
        let own = match kind {
            "filter" => &overrides.filter,
            "transformer" => &overrides.transformer,
            _ => &overrides.connector,
        };
        let path = if !sets(own, field) && sets(&overrides.all, field) {
            format!("all.{field}")
        } else {
            p.field.clone()
        };
        if !out.iter().any(|e| e.field == path) {
            out.add(path, p.message);
        }
    }
    out
}
