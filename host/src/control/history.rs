//! Archives (configuration) and per-bus trace settings, for the control
//! plane and the catalog.
//!
//! An archive is a [`ResourceKind::Archive`] resource named `bus/archive`
//! whose stored spec is what the tenant sent plus the two things the bus
//! decides: the archive's store `id` (so a re-created archive starts
//! empty) and its `created` time. Its pattern is compiled like a rule's
//! (EventBridge aliases), joined with `replayname: [{"exists": false}]` so
//! that replayed events are never archived again.

use super::{Catalog, ControlError, ControlPlane, ControlResult};
use crate::history::{ArchiveEntry, BusHistory, HistoryTable};
use crate::pattern::{Pattern, RuleSet};
use crate::resource::{Fields, Problems};
use crate::route::eventbridge_aliases;
use crate::store::traces::REPLAY_EXTENSION;
use crate::store::{Resource, ResourceKind};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

/// Longest retention an archive may have, in days (ten years).
pub const MAX_RETENTION_DAYS: u32 = 3650;

/// An archive body as sent.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchiveSpec {
    /// The pattern (`None`: every event).
    pub pattern: Option<Value>,
    /// Days to keep events (0: forever).
    pub retention_days: u32,
    /// Free text.
    pub description: Option<String>,
}

impl ArchiveSpec {
    /// Reads an archive body; every problem is reported.
    pub fn parse(value: &Value) -> Result<Self, Problems> {
        let mut problems = Problems::new();
        let mut spec = Self {
            pattern: None,
            retention_days: 0,
            description: None,
        };
        if let Some(mut f) = Fields::of(value, "", "an archive body", &mut problems) {
            f.deny_unknown(&["pattern", "retention_days", "description"]);
            match f.raw("pattern") {
                None | Some(Value::Null) => {}
                Some(p @ Value::Object(_)) => spec.pattern = Some(p.clone()),
                Some(_) => f.problem("pattern", "must be an event pattern object or null"),
            }
            match f.raw("retention_days") {
                None => {}
                Some(v) => match v.as_u64() {
                    Some(d) if d <= u64::from(MAX_RETENTION_DAYS) => spec.retention_days = d as u32,
                    _ => f.problem(
                        "retention_days",
                        format!("must be a whole number of days from 0 (forever) to {MAX_RETENTION_DAYS}"),
                    ),
                },
            }
            spec.description = f.optional::<String>("description");
        }
        problems.finish().map(|()| spec)
    }
}

/// Compiles an archive's pattern: aliases applied, replayed events refused.
pub fn archive_pattern(
    pattern: Option<&Value>,
    limits: &crate::pattern::PatternLimits,
) -> Result<Pattern, Problems> {
    let mut value = match pattern {
        Some(p) => eventbridge_aliases(p),
        None => json!({}),
    };
    let Value::Object(map) = &mut value else {
        return Err(Problems::one(
            "pattern",
            "must be an event pattern object or null",
        ));
    };
    if map.contains_key(REPLAY_EXTENSION) {
        return Err(Problems::one(
            "pattern.replay-name",
            "archives never hold replayed events; a pattern cannot test replay-name",
        ));
    }
    map.insert(REPLAY_EXTENSION.to_owned(), json!([{"exists": false}]));
    Pattern::from_value(&value, limits)
        .map_err(|e| Problems::one(crate::resource::join_path("pattern", &e.path), e.reason))
}

/// One bus's history settings, and its archives' compiled patterns (kept to
/// rebuild the matcher when one archive changes).
#[derive(Debug)]
struct Entry {
    history: Arc<BusHistory>,
    patterns: BTreeMap<String, Pattern>,
}

/// The history settings of every bus, as the catalog keeps them.
#[derive(Debug, Default)]
pub struct HistoryIndex {
    buses: RwLock<HashMap<(String, String), Entry>>,
}

impl HistoryIndex {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<(String, String), Entry>> {
        self.buses.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Rebuilds one bus's entry with `change` applied (a new immutable value).
    fn change(
        &self,
        tenant: &str,
        bus: &str,
        change: impl FnOnce(&mut bool, &mut BTreeMap<String, (ArchiveEntry, Pattern)>),
    ) {
        let mut buses = self.buses.write().unwrap_or_else(|p| p.into_inner());
        let key = (tenant.to_owned(), bus.to_owned());
        let (mut traced, mut archives) = match buses.get(&key) {
            Some(e) => (
                e.history.traced,
                e.history
                    .archives
                    .iter()
                    .filter_map(|(name, a)| {
                        e.patterns
                            .get(name)
                            .map(|p| (name.clone(), (a.clone(), p.clone())))
                    })
                    .collect(),
            ),
            None => (true, BTreeMap::new()),
        };
        change(&mut traced, &mut archives);
        let mut matcher = RuleSet::new();
        for (entry, pattern) in archives.values() {
            matcher.insert(entry.id.clone(), pattern.clone());
        }
        let patterns = archives
            .iter()
            .map(|(k, (_, p))| (k.clone(), p.clone()))
            .collect();
        let unconditional = archives
            .values()
            .all(|(entry, _)| entry.pattern.is_none())
            .then(|| archives.values().map(|(e, _)| e.id.clone()).collect());
        let whole_bus = archives
            .values()
            .filter(|(entry, _)| entry.pattern.is_none())
            .map(|(e, _)| e.id.clone())
            .collect();
        let history = BusHistory {
            traced,
            unconditional,
            whole_bus,
            archives: archives.into_iter().map(|(k, (e, _))| (k, e)).collect(),
            matcher,
        };
        buses.insert(
            key,
            Entry {
                history: Arc::new(history),
                patterns,
            },
        );
    }

    /// Sets whether a bus traces (creating its entry).
    pub(super) fn set_traced(&self, tenant: &str, bus: &str, traced: bool) {
        self.change(tenant, bus, |t, _| *t = traced);
    }

    /// Adds or replaces an archive.
    pub(super) fn put_archive(
        &self,
        tenant: &str,
        bus: &str,
        entry: ArchiveEntry,
        pattern: Pattern,
    ) {
        self.change(tenant, bus, |_, a| {
            a.insert(entry.name.clone(), (entry, pattern));
        });
    }

    /// Removes an archive.
    pub(super) fn delete_archive(&self, tenant: &str, bus: &str, name: &str) {
        self.change(tenant, bus, |_, a| {
            a.remove(name);
        });
    }

    /// Forgets a bus.
    pub(super) fn delete_bus(&self, tenant: &str, bus: &str) {
        let mut buses = self.buses.write().unwrap_or_else(|p| p.into_inner());
        buses.remove(&(tenant.to_owned(), bus.to_owned()));
    }
}

impl HistoryTable for Catalog {
    fn bus_history(&self, tenant: &str, bus: &str) -> Option<Arc<BusHistory>> {
        self.history
            .read()
            .get(&(tenant.to_owned(), bus.to_owned()))
            .map(|e| e.history.clone())
    }

    fn all_archives(&self) -> Vec<(String, String, ArchiveEntry)> {
        self.history
            .read()
            .iter()
            .flat_map(|((tenant, bus), e)| {
                e.history
                    .archives
                    .values()
                    .map(|a| (tenant.clone(), bus.clone(), a.clone()))
            })
            .collect()
    }
}

/// Persisted name of an archive resource.
fn archive_key(bus: &str, archive: &str) -> String {
    format!("{bus}/{archive}")
}

fn invalid(problems: Problems) -> ControlError {
    ControlError::Invalid {
        code: "invalid_archive",
        problems,
    }
}

impl ControlPlane {
    /// Makes a stored archive live in the catalog.
    pub(super) fn publish_archive(&self, r: &Resource) -> ControlResult<()> {
        let Some((bus, name)) = r.name.split_once('/') else {
            return Err(ControlError::not_found("archive", &r.name));
        };
        // The stored spec carries what the bus decided (`id`, `created`) too.
        let mut sent = r.spec.clone();
        if let Value::Object(m) = &mut sent {
            m.remove("id");
            m.remove("created");
        }
        let spec = ArchiveSpec::parse(&sent).map_err(invalid)?;
        let pattern =
            archive_pattern(spec.pattern.as_ref(), &self.pattern_limits).map_err(invalid)?;
        let id = r.spec.get("id").and_then(Value::as_str).unwrap_or_default();
        let created_ms = r
            .spec
            .get("created")
            .and_then(Value::as_i64)
            .unwrap_or(r.updated_ms);
        let entry = ArchiveEntry {
            name: name.to_owned(),
            id: id.to_owned(),
            pattern: spec.pattern,
            retention_days: spec.retention_days,
            description: spec.description,
            created_ms,
        };
        self.catalog
            .history
            .put_archive(&r.tenant, bus, entry, pattern);
        Ok(())
    }

    /// Creates or replaces an archive; true when it was created. A replaced
    /// archive keeps its contents and its creation time.
    pub async fn put_archive(
        &self,
        tenant: &str,
        bus: &str,
        name: &str,
        body: &Value,
    ) -> ControlResult<(ArchiveEntry, bool)> {
        if !self.catalog.has_bus(tenant, bus) {
            return Err(ControlError::not_found("bus", bus));
        }
        let spec = ArchiveSpec::parse(body).map_err(invalid)?;
        archive_pattern(spec.pattern.as_ref(), &self.pattern_limits).map_err(invalid)?;
        let existing = self.archive(tenant, bus, name);
        let created = existing.is_none();
        let (id, created_ms) = match existing {
            Some(a) => (a.id, a.created_ms),
            None => (format!("ar_{}", uuid::Uuid::now_v7().simple()), self.now()),
        };
        let mut stored = json!({
            "pattern": spec.pattern,
            "retention_days": spec.retention_days,
            "id": id,
            "created": created_ms,
        });
        if let Some(d) = &spec.description {
            stored["description"] = json!(d);
        }
        let resource = Resource {
            tenant: tenant.to_owned(),
            kind: ResourceKind::Archive,
            name: archive_key(bus, name),
            spec: stored,
            updated_ms: self.now(),
        };
        self.config.put_resource(resource.clone()).await?;
        self.publish_archive(&resource)?;
        let entry = self
            .archive(tenant, bus, name)
            .ok_or_else(|| ControlError::not_found("bus", bus))?;
        Ok((entry, created))
    }

    /// One archive of a bus.
    pub fn archive(&self, tenant: &str, bus: &str, name: &str) -> Option<ArchiveEntry> {
        self.catalog
            .bus_history(tenant, bus)?
            .archives
            .get(name)
            .cloned()
    }

    /// Deletes an archive; its contents are removed in the background.
    pub async fn delete_archive(&self, tenant: &str, bus: &str, name: &str) -> ControlResult<()> {
        if !self.catalog.has_bus(tenant, bus) {
            return Err(ControlError::not_found("bus", bus));
        }
        if self.archive(tenant, bus, name).is_none() {
            return Err(ControlError::not_found("archive", name));
        }
        self.config
            .delete_resource(tenant, ResourceKind::Archive, &archive_key(bus, name))
            .await?;
        self.catalog.history.delete_archive(tenant, bus, name);
        Ok(())
    }

    /// Deletes every archive of a bus (the bus is being deleted).
    pub(super) async fn delete_archives_of(&self, tenant: &str, bus: &str) -> ControlResult<()> {
        let names: Vec<String> = self
            .catalog
            .bus_history(tenant, bus)
            .map(|h| h.archives.keys().cloned().collect())
            .unwrap_or_default();
        for name in names {
            self.config
                .delete_resource(tenant, ResourceKind::Archive, &archive_key(bus, &name))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_bodies_are_checked_member_by_member() {
        let spec = ArchiveSpec::parse(&json!({"pattern": {"source": ["s"]}, "retention_days": 30}))
            .unwrap();
        assert_eq!(spec.retention_days, 30);
        assert_eq!(ArchiveSpec::parse(&json!({})).unwrap().pattern, None);
        let p =
            ArchiveSpec::parse(&json!({"retention_days": 3651, "pattern": 5, "x": 1})).unwrap_err();
        let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["x", "pattern", "retention_days"]);
        assert!(ArchiveSpec::parse(&json!({"retention_days": -1})).is_err());
    }

    #[test]
    fn archive_patterns_refuse_replayed_events() {
        let limits = crate::pattern::PatternLimits::default();
        let p = archive_pattern(Some(&json!({"detail-type": ["t"]})), &limits).unwrap();
        assert!(p.matches(&json!({"type": "t"})));
        assert!(!p.matches(&json!({"type": "t", "replayname": "r"})));
        let all = archive_pattern(None, &limits).unwrap();
        assert!(all.matches(&json!({"id": "1"})));
        assert!(!all.matches(&json!({"replayname": "r"})));
        let err = archive_pattern(Some(&json!({"replay-name": [{"exists": true}]})), &limits)
            .unwrap_err();
        assert_eq!(err.first().unwrap().field, "pattern.replay-name");
        let err = archive_pattern(Some(&json!({"source": "x"})), &limits).unwrap_err();
        assert!(err.first().unwrap().field.starts_with("pattern"));
    }

    /// Archives without patterns stamp events without parsing them, and
    /// still refuse replayed ones however the attribute is spelled.
    #[test]
    fn archives_without_patterns_take_every_event_but_replayed_ones() {
        let limits = crate::pattern::PatternLimits::default();
        let index = HistoryIndex::default();
        let entry = |name: &str, pattern: Option<Value>| ArchiveEntry {
            name: name.into(),
            id: format!("id-{name}"),
            pattern,
            retention_days: 0,
            description: None,
            created_ms: 0,
        };
        let put = |name: &str, pattern: Option<Value>| {
            let compiled = archive_pattern(pattern.as_ref(), &limits).unwrap();
            index.put_archive("acme", "orders", entry(name, pattern), compiled);
        };
        put("all", None);
        put("also", None);
        let history = || {
            index
                .read()
                .get(&("acme".to_owned(), "orders".to_owned()))
                .map(|e| e.history.clone())
                .unwrap()
        };
        let stamp = |body: &str| {
            let mut ids = history().archives_for(body.as_bytes());
            ids.sort();
            ids
        };
        assert!(history().unconditional.is_some());
        let plain = r#"{"id":"1","source":"s","type":"t"}"#;
        assert_eq!(stamp(plain), ["id-all", "id-also"]);
        assert!(stamp(r#"{"id":"1","replayname":"r"}"#).is_empty());
        assert!(stamp(r#"{"id":"1","replay\u006eame":"r"}"#).is_empty());
        // Named in the data only: still archived (the full matcher decides).
        assert_eq!(
            stamp(r#"{"id":"1","data":{"replayname":"r"}}"#),
            ["id-all", "id-also"]
        );
        put("some", Some(json!({"source": ["s"]})));
        assert!(history().unconditional.is_none());
        assert_eq!(stamp(plain), ["id-all", "id-also", "id-some"]);
        assert_eq!(
            stamp(r#"{"id":"1","source":"other"}"#),
            ["id-all", "id-also"]
        );
        // Those without a pattern take every event of the bus: the store
        // is told which (it may keep them as a range of its log).
        let mut e = crate::store::NewEvent {
            body: bytes::Bytes::from(plain),
            ..Default::default()
        };
        history().stamp_archives(&mut e);
        e.bus_archives.sort();
        assert_eq!(e.bus_archives, ["id-all", "id-also"]);
        assert_eq!(e.archives, ["id-some"]);
    }
}
