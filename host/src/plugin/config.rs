//! The `busbar:plugin/config` capability: the key-values the rule (filters,
//! transformers) or target (connectors) gives the plugin.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::HasData;

use super::bindings::config as wit;

/// The configuration of one invocation; read-only for the guest.
#[derive(Clone, Debug, Default)]
pub struct PluginConfig(Arc<BTreeMap<String, String>>);

impl PluginConfig {
    /// Wraps the key-values.
    pub fn new(values: BTreeMap<String, String>) -> Self {
        Self(Arc::new(values))
    }
}

/// [`HasData`] marker for linking `busbar:plugin/config` to a [`PluginConfig`].
pub struct Config;

impl HasData for Config {
    type Data<'a> = &'a mut PluginConfig;
}

impl wit::Host for PluginConfig {
    fn get(&mut self, key: String) -> Option<String> {
        self.0.get(&key).cloned()
    }

    fn get_all(&mut self) -> Vec<(String, String)> {
        // A BTreeMap iterates sorted by key, as the interface promises.
        self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Adds `busbar:plugin/config` to a linker.
pub fn add_to_linker<T: 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> &mut PluginConfig,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, Config>(linker, get)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wit::Host;

    #[test]
    fn get_and_get_all_sorted() {
        let mut c = PluginConfig::new(BTreeMap::from([
            ("b".to_owned(), "2".to_owned()),
            ("a".to_owned(), "1".to_owned()),
        ]));
        assert_eq!(c.get("a".into()).as_deref(), Some("1"));
        assert_eq!(c.get("z".into()), None);
        assert_eq!(c.get_all()[0].0, "a");
    }
}
