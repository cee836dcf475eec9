//! Rules: from the JSON a tenant sends to the compiled object the router runs.
//!
//! [`RuleSpec::parse`] reads the body member by member (every problem is
//! reported with its path, not only the first), then [`RuleSpec::compile`]
//! turns it into a [`Rule`]: the pattern into a matcher, the transform into
//! a renderer or a plugin binding, each target into a ready
//! [`BoundTarget`]. A compiled rule cannot be invalid.

use crate::deliver::retry::RetryPolicy;
use crate::deliver::{BoundTarget, BuildContext, TargetSpec};
use crate::pattern::{Pattern, PatternLimits};
use crate::resource::{Fields, PluginBinding, PluginKind, PluginRecord, Problems};
use crate::transform::{Transform, TransformSpec};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::sync::Arc;

/// Most targets one rule may have.
pub const MAX_TARGETS: usize = 100;

/// How a rule reshapes matched events, as written.
#[derive(Clone, Debug, PartialEq)]
pub enum TransformChoice {
    /// The built-in input transformer.
    Builtin(TransformSpec),
    /// A transformer plugin.
    Plugin(PluginBinding),
}

/// `dead_letter` as written.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct DeadLetterSpec {
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

/// A rule body, read but not compiled.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleSpec {
    /// The event pattern (EventBridge's `detail`/`detail-type` aliases not
    /// yet applied); `null` only in a spec read with problems.
    pub pattern: Value,
    /// Disabled rules match nothing.
    pub enabled: bool,
    /// A filter plugin that must also accept the event.
    pub filter: Option<PluginBinding>,
    /// How matched events are reshaped.
    pub transform: Option<TransformChoice>,
    /// Where matched events go.
    pub targets: Vec<TargetSpec>,
    /// The policy of targets that have none of their own.
    pub retry_policy: Option<RetryPolicy>,
    /// Whether undeliverable events are kept in the dead-letter queue.
    pub dead_letter: bool,
    /// Free text.
    pub description: Option<String>,
    /// Whether deliveries keep ingest order per partition key.
    pub ordering: Ordering,
}

/// Whether a rule's deliveries keep order (`"ordering"` in a rule).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// Deliveries go out as they can (the default).
    #[default]
    None,
    /// Events carrying the CloudEvents `partitionkey` extension reach each
    /// target one at a time per key, in ingest order, retries included;
    /// events without one are unordered.
    PartitionKey,
}

/// The members a rule may have.
const MEMBERS: &[&str] = &[
    "pattern",
    "enabled",
    "filter",
    "transform",
    "targets",
    "retry_policy",
    "dead_letter",
    "description",
    "ordering",
];

/// Reads a plugin binding member, recording problems under its path.
fn binding(f: &mut Fields<'_>, name: &str, allowed: &[&str]) -> Option<PluginBinding> {
    let value = f.raw(name)?;
    match PluginBinding::from_json(value, allowed) {
        Ok(b) => Some(b),
        Err((sub, message)) => {
            let field = crate::resource::join_path(&f.path_of(name), &sub);
            f.problems().add(field, message);
            None
        }
    }
}

impl RuleSpec {
    /// Reads a rule body; every problem of shape is reported.
    pub fn parse(value: &Value) -> Result<Self, Problems> {
        let mut problems = Problems::new();
        let spec = Self::read(value, &mut problems);
        match spec {
            Some(spec) if problems.is_empty() => Ok(spec),
            _ => Err(problems),
        }
    }

    fn read(value: &Value, problems: &mut Problems) -> Option<Self> {
        let mut f = Fields::of(value, "", "a rule", problems)?;
        f.deny_unknown(MEMBERS);
        let pattern = f.raw("pattern").cloned().unwrap_or(Value::Null);
        if pattern.is_null() {
            f.problem("pattern", "missing: every rule needs an event pattern");
        }
        let enabled = match f.raw("enabled") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                f.problem("enabled", "must be true or false");
                true
            }
        };
        let filter = binding(&mut f, "filter", &[]);
        let transform = match f.raw("transform") {
            None => None,
            Some(t) if t.get("plugin").is_some() => {
                binding(&mut f, "transform", &[]).map(TransformChoice::Plugin)
            }
            Some(_) => f
                .optional::<TransformSpec>("transform")
                .map(TransformChoice::Builtin),
        };
        let retry_policy: Option<RetryPolicy> = f.optional("retry_policy");
        if let Some(policy) = &retry_policy
            && let Err(e) = policy.validate()
        {
            f.problems().extend_within("retry_policy", e.into());
        }
        let dead_letter = match f.raw("dead_letter") {
            None => true,
            Some(Value::Object(_)) => f
                .optional::<DeadLetterSpec>("dead_letter")
                .is_none_or(|d| d.enabled),
            Some(_) => {
                f.problem("dead_letter", "must be an object like {\"enabled\": true}");
                true
            }
        };
        let description = match f.raw("description") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                f.problem("description", "must be a string");
                None
            }
        };
        let ordering = match f.raw("ordering") {
            None => Ordering::None,
            Some(_) => f.optional::<Ordering>("ordering").unwrap_or_default(),
        };
        let mut targets = Vec::new();
        match f.raw("targets") {
            None => f.problem("targets", "missing: a rule needs at least one target"),
            Some(Value::Array(list)) if list.is_empty() => {
                f.problem("targets", "must list at least one target")
            }
            Some(Value::Array(list)) if list.len() > MAX_TARGETS => {
                f.problem("targets", format!("at most {MAX_TARGETS} targets per rule"))
            }
            Some(Value::Array(list)) => {
                let mut seen = HashSet::new();
                for (i, t) in list.iter().enumerate() {
                    let path = format!("targets[{i}]");
                    if let Some(target) = TargetSpec::parse(t, &path, f.problems()) {
                        if !seen.insert(target.id.clone()) {
                            f.problems().add(
                                format!("{path}.id"),
                                format!("duplicate target id {:?}", target.id),
                            );
                        }
                        targets.push(target);
                    }
                }
            }
            Some(_) => f.problem("targets", "must be an array"),
        }
        Some(Self {
            pattern,
            enabled,
            filter,
            transform,
            targets,
            retry_policy,
            dead_letter,
            description,
            ordering,
        })
    }

    /// Compiles the rule named `name` on bus `bus`; every problem is reported.
    pub fn compile(&self, bus: &str, name: &str, cx: &RuleContext<'_>) -> Result<Rule, Problems> {
        let mut problems = Problems::new();
        match self.compile_into(bus, name, cx, &mut problems) {
            Some(rule) if problems.is_empty() => Ok(rule),
            _ => Err(problems),
        }
    }

    /// Compiles what can be compiled, recording every problem, so a spec
    /// read with problems still has the rest of it checked.
    fn compile_into(
        &self,
        bus: &str,
        name: &str,
        cx: &RuleContext<'_>,
        problems: &mut Problems,
    ) -> Option<Rule> {
        let before = problems.len();
        let pattern = if self.pattern.is_null() {
            None
        } else {
            match Pattern::from_value(&eventbridge_aliases(&self.pattern), cx.pattern_limits) {
                Ok(p) => Some(p),
                Err(e) => {
                    problems.add(crate::resource::join_path("pattern", &e.path), e.reason);
                    None
                }
            }
        };
        let lookup = cx.targets.plugin;
        if let Some(b) = &self.filter {
            check_binding(lookup, b, PluginKind::Filter, "filter", problems);
        }
        let transform = match &self.transform {
            None => None,
            Some(TransformChoice::Plugin(b)) => {
                check_binding(
                    lookup,
                    b,
                    PluginKind::Transformer,
                    "transform.plugin",
                    problems,
                );
                Some(RuleTransform::Plugin(b.clone()))
            }
            Some(TransformChoice::Builtin(spec)) => match spec.compile() {
                Ok(t) => Some(RuleTransform::Builtin(t)),
                Err(e) => {
                    problems.add(crate::resource::join_path("transform", &e.field), e.reason);
                    None
                }
            },
        };
        let rule_retry = self.retry_policy.clone().unwrap_or_default();
        let mut targets = Vec::with_capacity(self.targets.len());
        for (i, spec) in self.targets.iter().enumerate() {
            match spec.build(cx.targets) {
                Ok(target) => targets.push(Arc::new(BoundTarget {
                    tenant: cx.targets.tenant.to_owned(),
                    bus: bus.to_owned(),
                    rule: name.to_owned(),
                    id: spec.id.clone(),
                    retry: spec
                        .retry_policy
                        .clone()
                        .unwrap_or_else(|| rule_retry.clone()),
                    dead_letter: self.dead_letter,
                    ordered: self.ordering == Ordering::PartitionKey,
                    target,
                })),
                Err(p) => problems.extend_within(&format!("targets[{i}]"), p),
            }
        }
        if problems.len() > before {
            return None;
        }
        Some(Rule {
            name: name.to_owned(),
            bus: bus.to_owned(),
            enabled: self.enabled,
            pattern: pattern?,
            filter: self.filter.clone(),
            transform,
            targets,
            dead_letter: self.dead_letter,
            ordering: self.ordering,
            spec: RuleBody::default(),
        })
    }
}

/// Checks that a binding names an existing plugin (and version) of the right kind.
fn check_binding(
    lookup: &(dyn Fn(&str) -> Option<PluginRecord> + Sync),
    binding: &PluginBinding,
    kind: PluginKind,
    field: &str,
    problems: &mut Problems,
) {
    match lookup(&binding.name) {
        None => problems.add(field, format!("plugin {:?} does not exist", binding.name)),
        Some(record) => {
            if let Err(reason) = record.check_binding(binding, kind) {
                problems.add(field, reason);
            }
        }
    }
}

/// What compiling a rule needs from its surroundings.
pub struct RuleContext<'a> {
    /// Pattern limits.
    pub pattern_limits: &'a PatternLimits,
    /// Builds the targets (and names the tenant and its plugins).
    pub targets: &'a BuildContext<'a>,
}

/// Compiles a rule body in one step (parse, then compile).
pub fn compile_rule(
    bus: &str,
    name: &str,
    body: &Value,
    cx: &RuleContext<'_>,
) -> Result<Rule, Problems> {
    let mut problems = Problems::new();
    let rule = RuleSpec::read(body, &mut problems)
        .and_then(|spec| spec.compile_into(bus, name, cx, &mut problems));
    match rule {
        Some(mut rule) if problems.is_empty() => {
            rule.spec = RuleBody::of(body);
            Ok(rule)
        }
        _ => Err(problems),
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
    pub targets: Vec<Arc<BoundTarget>>,
    /// Whether undeliverable events are kept in the dead-letter queue.
    pub dead_letter: bool,
    /// Whether deliveries keep ingest order per partition key.
    pub ordering: Ordering,
    /// The body as the tenant sent it (what `GET` answers), when compiled
    /// by [`compile_rule`].
    pub spec: RuleBody,
}

/// A rule's body as the tenant sent it, kept as compact JSON text. It is
/// read only to answer `GET` and `explain`, while a `Value` with its
/// order-preserving maps took ~1.7 KB per rule — a sixth of the heap of a
/// bus with 10,000 rules (heaptrack, issue 13's memory scenario); the text
/// is a tenth of that.
#[derive(Clone, Debug, Default)]
pub struct RuleBody(Arc<str>);

impl RuleBody {
    /// Keeps `body` (as compact JSON).
    pub fn of(body: &Value) -> Self {
        Self(body.to_string().into())
    }

    /// The body again (`Null` for a rule not compiled from a body).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }
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
    /// Names of the plugins the rule uses (filter, transformer, connectors).
    pub fn plugins(&self) -> Vec<String> {
        let mut names: Vec<String> = self.filter.iter().map(|b| b.name.clone()).collect();
        if let Some(RuleTransform::Plugin(b)) = &self.transform {
            names.push(b.name.clone());
        }
        names.extend(self.references().filter_map(|(_, r)| match r {
            crate::deliver::Reference::Plugin(name) => Some(name),
            _ => None,
        }));
        names
    }

    /// Everything the rule's targets send to, with the target's index.
    pub fn references(&self) -> impl Iterator<Item = (usize, crate::deliver::Reference)> + '_ {
        self.targets
            .iter()
            .enumerate()
            .flat_map(|(i, t)| t.target.references().into_iter().map(move |(_, r)| (i, r)))
    }

    /// Whether the rule keeps order per partition key.
    pub fn ordered(&self) -> bool {
        self.ordering == Ordering::PartitionKey
    }

    /// Whether the rule runs a plugin before its targets (filter or transformer).
    pub fn has_plugin_steps(&self) -> bool {
        self.filter.is_some() || matches!(self.transform, Some(RuleTransform::Plugin(_)))
    }
}

/// Lets EventBridge patterns work unchanged: top-level `detail` means `data`,
/// `detail-type` means `type` and `replay-name` means `replayname` (also
/// inside a top-level `$or`).
pub fn eventbridge_aliases(pattern: &Value) -> Value {
    let Value::Object(obj) = pattern else {
        return pattern.clone();
    };
    let mut out = Map::with_capacity(obj.len());
    for (k, v) in obj {
        let key = match k.as_str() {
            "detail" if !obj.contains_key("data") => "data",
            "detail-type" if !obj.contains_key("type") => "type",
            // A replayed event carries `replayname`; EventBridge spells it so.
            "replay-name" if !obj.contains_key("replayname") => "replayname",
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
    fn a_kept_body_reads_back_as_sent_in_its_order() {
        let body =
            json!({"targets": [{"id": "t", "url": "http://x/"}], "pattern": {"source": ["a"]}});
        let back = RuleBody::of(&body).to_value();
        assert_eq!(back, body);
        let keys: Vec<&String> = back
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        assert_eq!(keys, ["targets", "pattern"], "the tenant's order is kept");
        assert_eq!(RuleBody::default().to_value(), Value::Null);
    }

    #[test]
    fn aliases_rewrite_top_level_only() {
        let p = json!({"detail-type": ["a"], "detail": {"detail": [1]}, "$or": [{"detail": {"x": [1]}}]});
        assert_eq!(
            eventbridge_aliases(&p),
            json!({"type": ["a"], "data": {"detail": [1]}, "$or": [{"data": {"x": [1]}}]})
        );
        let p = json!({"replay-name": [{"exists": false}], "data": {"replay-name": [1]}});
        assert_eq!(
            eventbridge_aliases(&p),
            json!({"replayname": [{"exists": false}], "data": {"replay-name": [1]}})
        );
    }

    #[test]
    fn parse_reports_every_problem_with_its_path() {
        let body = json!({
            "pattern": {"source": ["s"]},
            "enabled": "yes",
            "filter": "bad/name",
            "retry_policy": {"max_attempts": 0},
            "dead_letter": {"enabled": 1},
            "targets": [
                {"id": "a", "type": "queue", "queue": "q"},
                {"id": "a", "type": "queue", "queue": "r"},
                {"type": "http"}
            ],
            "colour": "blue"
        });
        let problems = RuleSpec::parse(&body).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "colour",
                "enabled",
                "filter",
                "retry_policy.max_attempts",
                "dead_letter.enabled",
                "targets[1].id",
                "targets[2].id"
            ],
            "{problems}"
        );
        assert_eq!(
            RuleSpec::parse(&json!([1])).unwrap_err().to_string(),
            "a rule must be a JSON object"
        );
        let missing = RuleSpec::parse(&json!({})).unwrap_err();
        let fields: Vec<&str> = missing.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["pattern", "targets"]);
    }

    #[test]
    fn ordering_is_partition_key_or_none() {
        let body = |ordering: Value| {
            json!({"pattern": {"source": ["s"]}, "targets": [{"id": "q", "type": "queue", "queue": "q"}],
                   "ordering": ordering})
        };
        assert_eq!(
            RuleSpec::parse(&body(json!("partition_key")))
                .unwrap()
                .ordering,
            Ordering::PartitionKey
        );
        assert_eq!(
            RuleSpec::parse(&body(json!("none"))).unwrap().ordering,
            Ordering::None
        );
        assert_eq!(
            RuleSpec::parse(&body(Value::Null)).unwrap().ordering,
            Ordering::None
        );
        let problems = RuleSpec::parse(&body(json!("by_key"))).unwrap_err();
        assert_eq!(problems.first().unwrap().field, "ordering", "{problems}");
    }
}
