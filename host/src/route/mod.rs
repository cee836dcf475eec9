//! Rules: from the JSON a tenant sends to the compiled runtime object the router uses.
//!
//! A rule body is first checked field by field (every problem is reported with
//! its path), then compiled: the pattern into a matcher, the transform into a
//! renderer, each target into a ready-to-use delivery object. A compiled
//! [`Rule`] cannot be invalid.

pub mod router;

use crate::deliver::http::{HttpClient, HttpTarget, HttpTargetSpec};
use crate::deliver::retry::RetryPolicy;
use crate::pattern::{Pattern, PatternLimits};
use crate::plugin::PluginKind;
use crate::plugin::registry::{PluginBinding, PluginRecord};
use crate::transform::{Transform, TransformSpec};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::sync::Arc;

/// Most targets one rule may have.
pub const MAX_TARGETS: usize = 100;

/// One problem in a request body, with the JSON path at fault.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FieldError {
    /// JSON path, e.g. `targets[1].url`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    /// Builds a field error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// Rule name, unique within its bus.
    pub name: String,
    /// Bus the rule belongs to.
    pub bus: String,
    /// Disabled rules match nothing.
    pub enabled: bool,
    /// The compiled pattern (after the `detail`/`detail-type` aliases are applied).
    pub pattern: Pattern,
    /// A filter plugin that must also accept the event.
    pub filter: Option<PluginBinding>,
    /// The transform, if any.
    pub transform: Option<RuleTransform>,
    /// Where matched events go.
    pub targets: Vec<Target>,
    /// Whether undeliverable events are kept in the dead-letter queue.
    pub dead_letter: bool,
    /// The body as the tenant sent it (what `GET` returns).
    pub spec: Value,
}

/// How a rule reshapes matched events.
#[derive(Debug)]
pub enum RuleTransform {
    /// The built-in input transformer: one rendered text per event.
    Builtin(Transform),
    /// A transformer plugin: zero or more events per event.
    Plugin(PluginBinding),
}

impl Rule {
    /// Names of the plugins the rule uses.
    pub fn plugins(&self) -> impl Iterator<Item = &str> {
        let filter = self.filter.iter().map(|b| b.name.as_str());
        let transform = match &self.transform {
            Some(RuleTransform::Plugin(b)) => Some(b.name.as_str()),
            _ => None,
        };
        let targets = self.targets.iter().filter_map(|t| match &t.kind {
            TargetKind::Wasm(w) => Some(w.binding.name.as_str()),
            _ => None,
        });
        filter.chain(transform).chain(targets)
    }
}

/// A Wasm connector target.
#[derive(Debug)]
pub struct WasmTarget {
    /// The connector plugin and its configuration.
    pub binding: PluginBinding,
    /// Hosts the connector may call (exact, or `*.suffix`).
    pub allowed_hosts: Vec<String>,
}

/// A compiled target.
#[derive(Debug)]
pub struct Target {
    /// Target id, unique within the rule.
    pub id: String,
    /// Retry policy (the target's own, else the rule's, else the default).
    pub retry: RetryPolicy,
    /// What kind of target, ready to deliver.
    pub kind: TargetKind,
}

/// The kinds of target.
#[derive(Debug)]
pub enum TargetKind {
    /// An HTTP webhook.
    Http(Arc<HttpTarget>),
    /// Another bus of the same tenant.
    Bus {
        /// The destination bus.
        bus: String,
    },
    /// A durable pull queue of the same tenant.
    Queue {
        /// The destination queue.
        queue: String,
    },
    /// A connector plugin.
    Wasm(WasmTarget),
}

/// What compiling a rule needs from its surroundings.
pub struct CompileContext<'a> {
    /// The shared HTTP client for webhook targets.
    pub http: &'a HttpClient,
    /// Pattern limits.
    pub pattern_limits: &'a PatternLimits,
    /// Looks up the tenant's plugins by name.
    pub plugins: &'a (dyn Fn(&str) -> Option<PluginRecord> + Sync),
}

/// Checks that a binding names an existing plugin (and version) of the right kind.
fn check_binding(
    binding: &PluginBinding,
    kind: PluginKind,
    field: &str,
    ctx: &CompileContext<'_>,
    errors: &mut Vec<FieldError>,
) {
    match (ctx.plugins)(&binding.name) {
        None => errors.push(FieldError::new(
            field,
            format!("plugin {:?} does not exist", binding.name),
        )),
        Some(record) if record.kind != kind => errors.push(FieldError::new(
            field,
            format!(
                "plugin {:?} is a {}, not a {}",
                binding.name,
                record.kind.as_str(),
                kind.as_str()
            ),
        )),
        Some(record) => {
            if let Some(v) = binding.version
                && record.version(v).is_none()
            {
                errors.push(FieldError::new(
                    field,
                    format!("plugin {:?} has no version {v}", binding.name),
                ));
            }
        }
    }
}

fn binding_error(base: &str, (sub, message): (String, String)) -> FieldError {
    FieldError::new(
        if sub.is_empty() {
            base.to_owned()
        } else {
            format!("{base}.{sub}")
        },
        message,
    )
}

/// Compiles a rule body; on failure returns every problem found.
pub fn compile_rule(
    bus: &str,
    name: &str,
    spec: &Value,
    ctx: &CompileContext<'_>,
) -> Result<Rule, Vec<FieldError>> {
    let mut errors = Vec::new();
    let Some(obj) = spec.as_object() else {
        return Err(vec![FieldError::new("", "a rule must be a JSON object")]);
    };
    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "pattern"
                | "enabled"
                | "filter"
                | "transform"
                | "targets"
                | "retry_policy"
                | "dead_letter"
                | "description"
        ) {
            errors.push(FieldError::new(key.clone(), "unknown field"));
        }
    }

    let pattern = match obj.get("pattern") {
        None => {
            errors.push(FieldError::new(
                "pattern",
                "missing: every rule needs an event pattern",
            ));
            None
        }
        Some(p) => match Pattern::from_value(&eventbridge_aliases(p), ctx.pattern_limits) {
            Ok(p) => Some(p),
            Err(e) => {
                let field = if e.path.is_empty() {
                    "pattern".to_owned()
                } else {
                    format!("pattern.{}", e.path)
                };
                errors.push(FieldError::new(field, e.reason));
                None
            }
        },
    };

    let enabled = match obj.get("enabled") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.push(FieldError::new("enabled", "must be true or false"));
            true
        }
    };

    let filter = match obj.get("filter") {
        None | Some(Value::Null) => None,
        Some(f) => match PluginBinding::from_json(f, &[]) {
            Ok(b) => {
                check_binding(&b, PluginKind::Filter, "filter", ctx, &mut errors);
                Some(b)
            }
            Err(e) => {
                errors.push(binding_error("filter", e));
                None
            }
        },
    };
    if let Some(d) = obj.get("description")
        && !d.is_string()
    {
        errors.push(FieldError::new("description", "must be a string"));
    }

    let transform = match obj.get("transform") {
        None | Some(Value::Null) => None,
        Some(t) if t.get("plugin").is_some() => match PluginBinding::from_json(t, &[]) {
            Ok(b) => {
                check_binding(
                    &b,
                    PluginKind::Transformer,
                    "transform.plugin",
                    ctx,
                    &mut errors,
                );
                Some(RuleTransform::Plugin(b))
            }
            Err(e) => {
                errors.push(binding_error("transform", e));
                None
            }
        },
        Some(t) => match serde_json::from_value::<TransformSpec>(t.clone()) {
            Err(e) => {
                errors.push(FieldError::new("transform", e.to_string()));
                None
            }
            Ok(spec) => match spec.compile() {
                Ok(t) => Some(RuleTransform::Builtin(t)),
                Err(e) => {
                    let field = if e.field.is_empty() {
                        "transform".to_owned()
                    } else {
                        format!("transform.{}", e.field)
                    };
                    errors.push(FieldError::new(field, e.reason));
                    None
                }
            },
        },
    };

    let rule_retry = match obj.get("retry_policy") {
        None | Some(Value::Null) => RetryPolicy::default(),
        Some(r) => parse_retry(r, "retry_policy", &mut errors),
    };

    let dead_letter = match obj.get("dead_letter") {
        None | Some(Value::Null) => true,
        Some(Value::Object(d)) => {
            for key in d.keys().filter(|k| k.as_str() != "enabled") {
                errors.push(FieldError::new(
                    format!("dead_letter.{key}"),
                    "unknown field",
                ));
            }
            match d.get("enabled") {
                None => true,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    errors.push(FieldError::new(
                        "dead_letter.enabled",
                        "must be true or false",
                    ));
                    true
                }
            }
        }
        Some(_) => {
            errors.push(FieldError::new(
                "dead_letter",
                "must be an object like {\"enabled\": true}",
            ));
            true
        }
    };

    let mut targets = Vec::new();
    match obj.get("targets") {
        None => errors.push(FieldError::new(
            "targets",
            "missing: a rule needs at least one target",
        )),
        Some(Value::Array(list)) if list.is_empty() => {
            errors.push(FieldError::new("targets", "must list at least one target"))
        }
        Some(Value::Array(list)) if list.len() > MAX_TARGETS => errors.push(FieldError::new(
            "targets",
            format!("at most {MAX_TARGETS} targets per rule"),
        )),
        Some(Value::Array(list)) => {
            let mut seen = HashSet::new();
            for (i, t) in list.iter().enumerate() {
                let path = format!("targets[{i}]");
                if let Some(target) = compile_target(t, &path, &rule_retry, ctx, &mut errors) {
                    if !seen.insert(target.id.clone()) {
                        errors.push(FieldError::new(
                            format!("{path}.id"),
                            format!("duplicate target id {:?}", target.id),
                        ));
                    }
                    targets.push(target);
                }
            }
        }
        Some(_) => errors.push(FieldError::new("targets", "must be an array")),
    }

    match (errors.is_empty(), pattern) {
        (true, Some(pattern)) => Ok(Rule {
            name: name.to_owned(),
            bus: bus.to_owned(),
            enabled,
            pattern,
            filter,
            transform,
            targets,
            dead_letter,
            spec: spec.clone(),
        }),
        _ => Err(errors),
    }
}

fn parse_retry(value: &Value, path: &str, errors: &mut Vec<FieldError>) -> RetryPolicy {
    match serde_json::from_value::<RetryPolicy>(value.clone()) {
        Err(e) => {
            errors.push(FieldError::new(path, e.to_string()));
            RetryPolicy::default()
        }
        Ok(policy) => {
            if let Err(e) = policy.validate() {
                errors.push(FieldError::new(format!("{path}.{}", e.field), e.reason));
            }
            policy
        }
    }
}

fn compile_target(
    value: &Value,
    path: &str,
    rule_retry: &RetryPolicy,
    ctx: &CompileContext<'_>,
    errors: &mut Vec<FieldError>,
) -> Option<Target> {
    let Some(obj) = value.as_object() else {
        errors.push(FieldError::new(path, "a target must be an object"));
        return None;
    };
    let mut rest: Map<String, Value> = obj.clone();
    let id = match rest.remove("id") {
        Some(Value::String(id)) if valid_name(&id) => id,
        Some(_) => {
            errors.push(FieldError::new(
                format!("{path}.id"),
                "must be 1-64 characters of A-Z a-z 0-9 . _ -",
            ));
            return None;
        }
        None => {
            errors.push(FieldError::new(
                format!("{path}.id"),
                "missing: every target needs an id",
            ));
            return None;
        }
    };
    let retry = match rest.remove("retry_policy") {
        None | Some(Value::Null) => rule_retry.clone(),
        Some(r) => parse_retry(&r, &format!("{path}.retry_policy"), errors),
    };
    let kind = match rest.remove("type") {
        Some(Value::String(kind)) => kind,
        _ => {
            errors.push(FieldError::new(
                format!("{path}.type"),
                "missing: one of http, bus, queue, wasm",
            ));
            return None;
        }
    };
    let kind = match kind.as_str() {
        "http" => {
            let spec = match serde_json::from_value::<HttpTargetSpec>(Value::Object(rest)) {
                Ok(spec) => spec,
                Err(e) => {
                    errors.push(FieldError::new(path, e.to_string()));
                    return None;
                }
            };
            match HttpTarget::new(spec, ctx.http.clone()) {
                Ok(t) => TargetKind::Http(Arc::new(t)),
                Err(e) => {
                    errors.push(FieldError::new(format!("{path}.{}", e.field), e.reason));
                    return None;
                }
            }
        }
        "bus" => TargetKind::Bus {
            bus: single_name(rest, "bus", path, errors)?,
        },
        "queue" => TargetKind::Queue {
            queue: single_name(rest, "queue", path, errors)?,
        },
        "wasm" => {
            let allowed_hosts = match rest.remove("allowed_hosts") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(hosts)) => {
                    let mut out = Vec::new();
                    for (i, h) in hosts.iter().enumerate() {
                        match h.as_str() {
                            Some(h) if valid_host_pattern(h) => out.push(h.to_ascii_lowercase()),
                            _ => errors.push(FieldError::new(
                                format!("{path}.allowed_hosts[{i}]"),
                                "must be a host name, host:port, an IP address, or *.suffix",
                            )),
                        }
                    }
                    out
                }
                Some(_) => {
                    errors.push(FieldError::new(
                        format!("{path}.allowed_hosts"),
                        "must be an array of host names",
                    ));
                    Vec::new()
                }
            };
            match PluginBinding::from_json(&Value::Object(rest), &[]) {
                Ok(binding) => {
                    let field = format!("{path}.plugin");
                    check_binding(&binding, PluginKind::Connector, &field, ctx, errors);
                    TargetKind::Wasm(WasmTarget {
                        binding,
                        allowed_hosts,
                    })
                }
                Err(e) => {
                    errors.push(binding_error(path, e));
                    return None;
                }
            }
        }
        other => {
            errors.push(FieldError::new(
                format!("{path}.type"),
                format!("unknown target type {other:?}: expected http, bus, queue or wasm"),
            ));
            return None;
        }
    };
    Some(Target { id, retry, kind })
}

/// Reads the one required name field of `bus`/`queue` targets and rejects anything else.
fn single_name(
    mut rest: Map<String, Value>,
    key: &str,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let name = rest.remove(key);
    for other in rest.keys() {
        errors.push(FieldError::new(format!("{path}.{other}"), "unknown field"));
    }
    match name {
        Some(Value::String(n)) if valid_name(&n) => Some(n),
        Some(_) => {
            errors.push(FieldError::new(
                format!("{path}.{key}"),
                "must be 1-64 characters of A-Z a-z 0-9 . _ -",
            ));
            None
        }
        None => {
            errors.push(FieldError::new(format!("{path}.{key}"), "missing"));
            None
        }
    }
}

/// Whether `h` is an allowed-host entry: a host name, an IP literal, or `*.suffix`.
fn valid_host_pattern(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// Whether `name` is a valid resource name: 1–64 of `A-Z a-z 0-9 . _ -`, not starting with `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Lets EventBridge patterns work unchanged: top-level `detail` means `data`
/// and `detail-type` means `type` (also inside a top-level `$or`).
pub fn eventbridge_aliases(pattern: &Value) -> Value {
    let Value::Object(obj) = pattern else {
        return pattern.clone();
    };
    let mut out = Map::with_capacity(obj.len());
    for (k, v) in obj {
        let key = match k.as_str() {
            "detail" if !obj.contains_key("data") => "data",
            "detail-type" if !obj.contains_key("type") => "type",
            _ => k.as_str(),
        };
        let value = match (key, v) {
            ("$or", Value::Array(alts)) => {
                Value::Array(alts.iter().map(eventbridge_aliases).collect())
            }
            _ => v.clone(),
        };
        out.insert(key.to_owned(), value);
    }
    Value::Object(out)
}

/// The pattern a tester should compile for `event`: EventBridge's aliases
/// apply (as on the bus) unless the sample event itself is EventBridge-shaped
/// (has a top-level `detail` or `detail-type`), so both kinds of sample work.
pub fn pattern_for_sample(pattern: &Value, event: &Value) -> Value {
    let eventbridge_shaped = event.get("detail").is_some() || event.get("detail-type").is_some();
    if eventbridge_shaped {
        pattern.clone()
    } else {
        eventbridge_aliases(pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn aliases_rewrite_top_level_only() {
        let p = json!({"detail-type": ["a"], "detail": {"detail": [1]}, "$or": [{"detail": {"x": [1]}}]});
        assert_eq!(
            eventbridge_aliases(&p),
            json!({"type": ["a"], "data": {"detail": [1]}, "$or": [{"data": {"x": [1]}}]})
        );
    }

    #[test]
    fn names() {
        assert!(valid_name("orders-2024.v1_x"));
        assert!(!valid_name(""));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
