//! Tenants' plugins as the bus records them: named, versioned, bound to rules.
//!
//! A plugin is a name owned by one tenant with immutable versions (each a
//! content-addressed component) and a current version. Rules bind plugins by
//! `name` (whatever is current at invocation time) or `name@version`
//! (pinned), so uploading a version or rolling back takes effect at the next
//! invocation without touching rules or in-flight events. What runs them is
//! the `plugin` module; this is only the record keeping.

use super::name::{NAME_RULE, valid_name};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// What a plugin does, told from the interface it exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginKind {
    /// Decides whether an event goes on (`busbar:plugin/filter`).
    Filter,
    /// Rewrites an event into zero or more events (`busbar:plugin/transformer`).
    Transformer,
    /// Delivers batches of events to an external system (`busbar:plugin/connector`).
    Connector,
}

impl PluginKind {
    /// Every kind.
    pub const ALL: [PluginKind; 3] = [Self::Filter, Self::Transformer, Self::Connector];

    /// The kind's name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Filter => "filter",
            Self::Transformer => "transformer",
            Self::Connector => "connector",
        }
    }
}

/// One immutable version of a plugin.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
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
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
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

    /// The newest version older than the current one (what a rollback
    /// without a version number goes back to).
    pub fn previous(&self) -> Option<u32> {
        self.versions
            .iter()
            .map(|v| v.version)
            .filter(|v| *v < self.current)
            .max()
    }

    /// Checks that `binding` can run on this plugin as a `kind`; the reason otherwise.
    pub fn check_binding(&self, binding: &PluginBinding, kind: PluginKind) -> Result<(), String> {
        if self.kind != kind {
            return Err(format!(
                "plugin {:?} is a {}, not a {}",
                self.name,
                self.kind.as_str(),
                kind.as_str()
            ));
        }
        match binding.version {
            Some(v) if self.version(v).is_none() => {
                Err(format!("plugin {:?} has no version {v}", self.name))
            }
            _ => Ok(()),
        }
    }
}

/// What uploading a component under a name amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Registration {
    /// These exact bytes are already that version: nothing to store.
    Unchanged(u32),
    /// A record with the component added as the new current version.
    Added(PluginRecord),
}

/// The component an upload brings, as the sandbox described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upload<'a> {
    /// The kind told from its exports.
    pub kind: PluginKind,
    /// Its sha256 (hex).
    pub sha256: &'a str,
    /// Its size in bytes.
    pub size: usize,
}

impl Registration {
    /// Adds an uploaded component to a plugin's versions (or starts a new
    /// plugin). Refuses a component of another kind than the plugin's.
    pub fn of(
        existing: Option<PluginRecord>,
        name: &str,
        upload: Upload<'_>,
        now_ms: i64,
    ) -> Result<Self, String> {
        let version = |v: u32| PluginVersion {
            version: v,
            sha256: upload.sha256.to_owned(),
            size: upload.size,
            created_ms: now_ms,
        };
        match existing {
            Some(r) if r.kind != upload.kind => Err(format!(
                "plugin {name:?} is a {}; this component is a {}: use another name",
                r.kind.as_str(),
                upload.kind.as_str()
            )),
            Some(r) => match r.versions.iter().find(|v| v.sha256 == upload.sha256) {
                Some(v) => Ok(Self::Unchanged(v.version)),
                None => {
                    let mut r = r;
                    let next = r.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
                    r.versions.push(version(next));
                    r.current = next;
                    Ok(Self::Added(r))
                }
            },
            None => Ok(Self::Added(PluginRecord {
                name: name.to_owned(),
                kind: upload.kind,
                current: 1,
                versions: vec![version(1)],
            })),
        }
    }
}

/// How a rule or target refers to a plugin, with the configuration it passes.
#[derive(Clone, Debug, PartialEq, Eq)]
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
        if !valid_name(name) {
            return Err(format!("plugin name {name:?} {NAME_RULE}"));
        }
        Ok((name.to_owned(), version))
    }

    /// Reads a binding from a rule: `"name[@v]"` or `{"plugin": "name[@v]",
    /// "config": {...}}` (plus the members in `allowed`, which the caller
    /// reads). Config values that are not strings are passed as their JSON
    /// text. On failure: (member path relative to the binding, reason).
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

    #[test]
    fn registration_adds_versions_and_refuses_another_kind() {
        let up = |sha: &'static str, kind| Upload {
            kind,
            sha256: sha,
            size: 10,
        };
        let Registration::Added(r) =
            Registration::of(None, "f", up("a", PluginKind::Filter), 1).unwrap()
        else {
            panic!("first upload adds")
        };
        assert_eq!((r.current, r.versions.len()), (1, 1));
        assert_eq!(
            Registration::of(Some(r.clone()), "f", up("a", PluginKind::Filter), 2),
            Ok(Registration::Unchanged(1))
        );
        let Registration::Added(r2) =
            Registration::of(Some(r.clone()), "f", up("b", PluginKind::Filter), 3).unwrap()
        else {
            panic!("new bytes add a version")
        };
        assert_eq!((r2.current, r2.previous()), (2, Some(1)));
        assert!(Registration::of(Some(r), "f", up("c", PluginKind::Connector), 4).is_err());
    }
}
