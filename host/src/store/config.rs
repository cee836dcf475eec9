//! Configuration: tenants, API keys, named resources and store-wide settings.
//!
//! Resources are stored as the JSON the tenant sent (validated before it gets
//! here), so the store needs no knowledge of what a rule or a plugin is. The
//! in-memory catalog is rebuilt from a [`ConfigSnapshot`] at start-up.

use super::{Millis, StoreResult};
use async_trait::async_trait;

/// A tenant's identity record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantRecord {
    /// Unique, URL-safe name; also the tenant's id.
    pub name: String,
    /// Creation time.
    pub created_ms: Millis,
}

/// A tenant API key; only its hash is ever stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    /// Public identifier, used to revoke the key.
    pub id: String,
    /// Tenant the key acts for.
    pub tenant: String,
    /// Hex SHA-256 of the secret key.
    pub hash: String,
    /// Creation time.
    pub created_ms: Millis,
}

/// Kinds of named, tenant-owned configuration the store persists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    /// An event bus.
    Bus,
    /// A rule; its name is `bus/rule`.
    Rule,
    /// A pull queue.
    Queue,
    /// A Wasm plugin's versions (the spec is its plugin record).
    Plugin,
    /// The admin's overrides of a tenant's plugin limits (one per tenant,
    /// named `plugin_limits`).
    PluginLimits,
    /// An archive of a bus; its name is `bus/archive` (its contents are
    /// data, in [`Archives`](super::Archives)).
    Archive,
}

impl ResourceKind {
    /// Every kind, in the order a catalog should load them (what others
    /// refer to comes first: rules name buses, queues and plugins).
    pub const LOAD_ORDER: [ResourceKind; 6] = [
        Self::PluginLimits,
        Self::Plugin,
        Self::Queue,
        Self::Bus,
        Self::Rule,
        Self::Archive,
    ];

    /// The stored name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bus => "bus",
            Self::Rule => "rule",
            Self::Queue => "queue",
            Self::Plugin => "plugin",
            Self::PluginLimits => "plugin_limits",
            Self::Archive => "archive",
        }
    }

    /// The kind with this stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::LOAD_ORDER.into_iter().find(|k| k.as_str() == s)
    }
}

/// A persisted configuration resource (its spec is the JSON the user sent).
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    /// Owning tenant.
    pub tenant: String,
    /// What it is.
    pub kind: ResourceKind,
    /// Name, unique per tenant and kind.
    pub name: String,
    /// The validated spec as JSON.
    pub spec: serde_json::Value,
    /// Last change.
    pub updated_ms: Millis,
}

/// Everything the bus needs in memory at start-up.
#[derive(Clone, Debug, Default)]
pub struct ConfigSnapshot {
    /// All tenants.
    pub tenants: Vec<TenantRecord>,
    /// All live (unrevoked) keys.
    pub keys: Vec<KeyRecord>,
    /// All resources.
    pub resources: Vec<Resource>,
}

/// One committed configuration change, as a [`ConfigWatch`] reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigChange {
    /// A tenant was created.
    Tenant(TenantRecord),
    /// A key was stored.
    Key(KeyRecord),
    /// A key was revoked.
    KeyRevoked {
        /// Owning tenant.
        tenant: String,
        /// The key's id.
        id: String,
    },
    /// A resource was created or replaced.
    Resource(Resource),
    /// A resource was deleted.
    ResourceDeleted {
        /// Owning tenant.
        tenant: String,
        /// What it was.
        kind: ResourceKind,
        /// Its name.
        name: String,
    },
    /// A setting was written.
    Setting {
        /// The setting's key.
        key: String,
        /// Its new value.
        value: String,
    },
}

/// The configuration changes committed after the watch began, by any
/// node, this one included, in commit order (so a node applies every
/// change, its own as well, idempotently). Changes of one key may be
/// coalesced: a key changed twice before the watcher read the first change
/// may report only the second (the latest state is what matters). To miss
/// nothing, a node opens the watch *before* [`ConfigStore::load`], then
/// applies what the watch reports on top of the snapshot.
///
/// A node also changes its own view as it writes (so its next request sees
/// the change at once). A change another node made just before may then
/// arrive after this node's newer write of the same key; applying it would
/// undo the newer one until the watch reports that too. So the applier asks
/// [`ConfigWatch::superseded`] before applying, while holding the same lock
/// as the node's own writes.
#[async_trait]
pub trait ConfigWatch: Send {
    /// The next change, waiting for one. An error means changes may have
    /// been missed: the caller reloads and watches anew.
    async fn next(&mut self) -> StoreResult<ConfigChange>;

    /// Whether the change [`next`](Self::next) returned last is no newer
    /// than a write of the same key through this same store handle — one
    /// the caller has applied already, so applying this change would go
    /// back in time. Only meaningful while the caller keeps its own writes
    /// out (it holds the lock they take).
    fn superseded(&self) -> bool {
        false
    }
}

/// Tenants, keys, resources and settings.
#[async_trait]
pub trait ConfigStore: Send + Sync + 'static {
    /// Loads every tenant, live key and resource.
    async fn load(&self) -> StoreResult<ConfigSnapshot>;
    /// Creates a tenant; [`Conflict`](super::StoreError::Conflict) if the name is taken.
    async fn create_tenant(&self, tenant: TenantRecord) -> StoreResult<()>;
    /// Stores a new key.
    async fn put_key(&self, key: KeyRecord) -> StoreResult<()>;
    /// Revokes a key; false if the tenant has no such live key.
    async fn revoke_key(&self, tenant: &str, key_id: &str) -> StoreResult<bool>;
    /// Creates or replaces a resource.
    async fn put_resource(&self, resource: Resource) -> StoreResult<()>;
    /// Deletes a resource; false if absent.
    async fn delete_resource(
        &self,
        tenant: &str,
        kind: ResourceKind,
        name: &str,
    ) -> StoreResult<bool>;
    /// Reads a store-wide setting (e.g. the admin key hash).
    async fn setting(&self, key: &str) -> StoreResult<Option<String>>;
    /// Writes a store-wide setting.
    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()>;

    /// Watches for changes made by other nodes sharing this store. `None`
    /// for a backend that only one process uses (SQLite, memory): there,
    /// every change goes through this process's control plane anyway.
    async fn watch(&self) -> StoreResult<Option<Box<dyn ConfigWatch>>> {
        Ok(None)
    }
}
