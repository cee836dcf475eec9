//! The in-memory cache of loaded plugin versions (compiled component plus
//! its pre-instantiation), keyed by the component's sha256.

use super::LoadedPlugin;

/// Loaded plugins, least recently used evicted beyond the capacity. A
/// [`LoadedPlugin`] is cheap to clone (shared compiled code).
pub struct PluginCache(moka::sync::Cache<String, LoadedPlugin>);

impl PluginCache {
    /// A cache holding at most `capacity` versions.
    pub fn new(capacity: u64) -> Self {
        Self(moka::sync::Cache::new(capacity.max(1)))
    }

    /// The loaded plugin with this digest, if cached.
    pub fn get(&self, sha256: &str) -> Option<LoadedPlugin> {
        self.0.get(sha256)
    }

    /// Caches a loaded plugin.
    pub fn insert(&self, sha256: String, plugin: LoadedPlugin) {
        self.0.insert(sha256, plugin);
    }

    /// Drops a version (e.g. when the plugin is deleted).
    pub fn remove(&self, sha256: &str) {
        self.0.invalidate(sha256);
    }
}
