//! Following the changes other nodes commit (a shared store only).
//!
//! [`ControlPlane::follow`] reads the store's change feed and applies each
//! change with [`ControlPlane::apply`], the step start-up uses for every
//! stored record, so a rule, plugin, tenant, key or limit changed on one
//! node is live on every node moments later. Each change is applied in the
//! node's publishing turn, and skipped if this node has written the same
//! record since (its own write is newer and already live).
//!
//! If the feed fails (the cluster was out of reach long enough for changes
//! to be missed), the follower opens a new feed and then reloads the whole
//! configuration: every stored record is applied again, and whatever the
//! catalog still has that the store no longer has is taken out.

use super::ControlPlane;
use crate::store::{ConfigChange, ConfigSnapshot, ConfigWatch, ResourceKind};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Longest pause between two attempts to reopen a failed feed.
const REOPEN_MAX: Duration = Duration::from_secs(2);

impl ControlPlane {
    /// Applies the changes `feed` reports until shutdown. The feed must have
    /// been opened before the start-up [`load`](Self::load), so that no
    /// change falls between the two.
    pub async fn follow(
        self: Arc<Self>,
        mut feed: Box<dyn ConfigWatch>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let change = tokio::select! {
                change = feed.next() => change,
                _ = shutdown.changed() => return,
            };
            match change {
                Ok(change) => self.apply_followed(feed.as_mut(), change).await,
                Err(e) => {
                    tracing::warn!(error = %e, "the configuration feed failed; reopening it and reloading");
                    match self.reopen(&mut shutdown).await {
                        Some(reopened) => feed = reopened,
                        None => return,
                    }
                }
            }
        }
    }

    async fn apply_followed(&self, feed: &mut dyn ConfigWatch, change: ConfigChange) {
        let _turn = self.turn().await;
        if feed.superseded() {
            return;
        }
        // A plugin version uploaded elsewhere: fetch and compile it now
        // rather than when the first event needs it.
        let fetch = match &change {
            ConfigChange::Resource(r) if r.kind == ResourceKind::Plugin => r
                .spec
                .get("versions")
                .and_then(|v| v.as_array())
                .and_then(|versions| {
                    let current = r.spec.get("current")?;
                    versions.iter().find(|v| v.get("version") == Some(current))
                })
                .and_then(|v| v.get("sha256"))
                .and_then(|s| s.as_str())
                .map(str::to_owned),
            _ => None,
        };
        let what = format!("{change:?}");
        match self.apply(change).await {
            Ok(()) => {
                tracing::debug!(change = %what, "applied a change from the store");
                if let Some(sha256) = fetch {
                    self.plugins.prefetch(&sha256);
                }
            }
            Err(e) => {
                tracing::error!(change = %what, error = %e, "a change from the store does not load here; skipped");
            }
        }
    }

    /// Opens a new feed (retrying until shutdown), then reloads.
    async fn reopen(&self, shutdown: &mut watch::Receiver<bool>) -> Option<Box<dyn ConfigWatch>> {
        let mut pause = Duration::from_millis(100);
        loop {
            match self.config.watch().await {
                Ok(Some(feed)) => match self.reload().await {
                    Ok(()) => {
                        tracing::info!("configuration reloaded; following changes again");
                        return Some(feed);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot reload the configuration"),
                },
                Ok(None) => return None,
                Err(e) => tracing::warn!(error = %e, "cannot reopen the configuration feed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => return None,
            }
            pause = (pause * 2).min(REOPEN_MAX);
        }
    }

    /// Applies the stored configuration anew and takes out of the catalog
    /// what the store no longer has.
    async fn reload(&self) -> super::ControlResult<()> {
        let snapshot = self.config.load().await?;
        let _turn = self.turn().await;
        self.apply_snapshot(&snapshot).await;
        for change in self.gone(&snapshot) {
            self.apply(change).await?;
        }
        Ok(())
    }

    /// Deletions that bring the catalog in line with `snapshot`.
    fn gone(&self, snapshot: &ConfigSnapshot) -> Vec<ConfigChange> {
        let keys: HashSet<(&str, &str)> = snapshot
            .keys
            .iter()
            .map(|k| (k.tenant.as_str(), k.id.as_str()))
            .collect();
        let resources: HashSet<(&str, ResourceKind, &str)> = snapshot
            .resources
            .iter()
            .map(|r| (r.tenant.as_str(), r.kind, r.name.as_str()))
            .collect();
        let mut gone = Vec::new();
        let mut deleted = |tenant: &str, kind: ResourceKind, name: String| {
            if !resources.contains(&(tenant, kind, name.as_str())) {
                gone.push(ConfigChange::ResourceDeleted {
                    tenant: tenant.to_owned(),
                    kind,
                    name,
                });
            }
        };
        let mut revoked = Vec::new();
        for tenant in self.catalog.tenants() {
            let t = tenant.name.as_str();
            for id in &tenant.key_ids {
                if !keys.contains(&(t, id.as_str())) {
                    revoked.push(ConfigChange::KeyRevoked {
                        tenant: t.to_owned(),
                        id: id.clone(),
                    });
                }
            }
            for bus in &tenant.buses {
                if let Some(view) = self.catalog.bus(t, bus) {
                    for rule in view.routes.rules.keys() {
                        deleted(t, ResourceKind::Rule, super::rule_key(bus, rule));
                    }
                }
                deleted(t, ResourceKind::Bus, bus.clone());
            }
            for (queue, _) in self.catalog.queues(t) {
                deleted(t, ResourceKind::Queue, queue);
            }
            for plugin in self.catalog.plugins(t) {
                deleted(t, ResourceKind::Plugin, plugin.name);
            }
            if crate::plugin::registry::PluginDirectory::plugin_limits(&*self.catalog, t).is_some()
            {
                deleted(
                    t,
                    ResourceKind::PluginLimits,
                    super::PLUGIN_LIMITS.to_owned(),
                );
            }
        }
        gone.extend(revoked);
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, SharedClock};
    use crate::control::Catalog;
    use crate::deliver::TargetServices;
    use crate::plugin::registry::PluginHost;
    use crate::plugin::{KindLimits, PluginLimits, PluginRuntime, RuntimeConfig};
    use crate::route::RouteTable;
    use crate::store::memory::MemoryStore;
    use crate::store::{ConfigStore, Resource, StoreResult};
    use async_trait::async_trait;
    use serde_json::json;
    use std::collections::VecDeque;

    fn control(store: &MemoryStore, clock: SharedClock) -> Arc<ControlPlane> {
        let catalog = Arc::new(Catalog::default());
        let dir = std::env::temp_dir().join("busbar-follow-tests");
        let runtime = Arc::new(PluginRuntime::new(RuntimeConfig::new(dir)).unwrap());
        let plugins = Arc::new(PluginHost::new(
            runtime,
            catalog.clone(),
            KindLimits::uniform(&PluginLimits::default()),
        ));
        let services = TargetServices {
            http: crate::deliver::http::HttpClient::new(&crate::net::EgressPolicy::default())
                .unwrap(),
            queues: Arc::new(store.clone()),
            queue_signals: Arc::default(),
            log: Arc::new(store.clone()),
            max_hops: 8,
            clock,
            plugins,
        };
        Arc::new(ControlPlane::new(
            Arc::new(store.clone()),
            Arc::new(store.clone()),
            catalog,
            services,
            crate::pattern::PatternLimits::default(),
        ))
    }

    fn rule(source: &str) -> serde_json::Value {
        json!({"pattern": {"source": [source]}, "targets": [{"id": "q", "type": "queue", "queue": "q"}]})
    }

    /// Changes played back in order; each says whether this node has since
    /// overwritten it. Then nothing more, ever.
    struct Scripted(VecDeque<(ConfigChange, bool)>, bool);

    #[async_trait]
    impl ConfigWatch for Scripted {
        async fn next(&mut self) -> StoreResult<ConfigChange> {
            match self.0.pop_front() {
                Some((change, superseded)) => {
                    self.1 = superseded;
                    Ok(change)
                }
                None => std::future::pending().await,
            }
        }

        fn superseded(&self) -> bool {
            self.1
        }
    }

    fn resource(kind: ResourceKind, name: &str, spec: serde_json::Value) -> Resource {
        Resource {
            tenant: "acme".into(),
            kind,
            name: name.into(),
            spec,
            updated_ms: 0,
        }
    }

    #[tokio::test]
    async fn followed_changes_go_live_unless_this_node_wrote_something_newer() {
        let clock: SharedClock = Arc::new(ManualClock::new(1_000));
        let store = MemoryStore::new(clock.clone());
        let control = control(&store, clock);
        control.ensure_tenant("acme").await.unwrap();
        control.put_queue("acme", "q", &json!({})).await.unwrap();
        let feed = Scripted(
            VecDeque::from([
                // Another node's older write of a rule this node has rewritten.
                (
                    ConfigChange::Resource(resource(ResourceKind::Rule, "default/old", rule("x"))),
                    true,
                ),
                (
                    ConfigChange::Resource(resource(ResourceKind::Bus, "orders", json!({}))),
                    false,
                ),
                (
                    ConfigChange::Resource(resource(ResourceKind::Rule, "orders/new", rule("y"))),
                    false,
                ),
                (
                    ConfigChange::ResourceDeleted {
                        tenant: "acme".into(),
                        kind: ResourceKind::Queue,
                        name: "gone".into(),
                    },
                    false,
                ),
            ]),
            false,
        );
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(control.clone().follow(Box::new(feed), stopped));
        let catalog = control.catalog().clone();
        for _ in 0..500 {
            if catalog
                .routes("acme", "orders")
                .is_some_and(|r| r.rules.contains_key("new"))
            {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            catalog
                .routes("acme", "orders")
                .unwrap()
                .rules
                .contains_key("new")
        );
        assert!(
            !catalog
                .routes("acme", "default")
                .unwrap()
                .rules
                .contains_key("old")
        );
        stop.send_replace(true);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_reload_brings_the_catalog_in_line_with_the_store() {
        let clock: SharedClock = Arc::new(ManualClock::new(1_000));
        let store = MemoryStore::new(clock.clone());
        let control = control(&store, clock);
        let issued = control.create_tenant("acme").await.unwrap();
        control.put_queue("acme", "q", &json!({})).await.unwrap();
        control.put_queue("acme", "old", &json!({})).await.unwrap();
        control.put_bus("acme", "orders", &json!({})).await.unwrap();
        control
            .put_rule("acme", "orders", "r", &rule("s"))
            .await
            .unwrap();
        // Meanwhile (while this node missed the feed) others changed the store.
        store
            .delete_resource("acme", ResourceKind::Rule, "orders/r")
            .await
            .unwrap();
        store
            .delete_resource("acme", ResourceKind::Bus, "orders")
            .await
            .unwrap();
        store
            .delete_resource("acme", ResourceKind::Queue, "old")
            .await
            .unwrap();
        store.revoke_key("acme", &issued.key_id).await.unwrap();
        store
            .put_resource(resource(ResourceKind::Rule, "default/added", rule("t")))
            .await
            .unwrap();

        control.reload().await.unwrap();
        let catalog = control.catalog();
        assert!(!catalog.has_bus("acme", "orders"));
        assert!(!catalog.has_queue("acme", "old"));
        assert!(catalog.has_queue("acme", "q"));
        assert!(
            catalog
                .routes("acme", "default")
                .unwrap()
                .rules
                .contains_key("added")
        );
        assert_eq!(
            catalog.authenticate(&crate::control::hash_key(&issued.api_key)),
            None
        );
    }
}
