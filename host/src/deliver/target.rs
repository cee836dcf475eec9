//! The one face every kind of target shows the delivery engine.
//!
//! A target is written in a rule as JSON (`{"id", "type", "retry_policy",
//! ...kind-specific members}`); [`TargetSpec::parse`] reads the members all
//! targets share, and [`TargetSpec::build`] hands the rest to the kind's own
//! builder, which validates it (reporting every problem) into an
//! `Arc<dyn Target>` that cannot be invalid. The kinds are listed once, in
//! [`KINDS`]: adding one is a new file and a line there.

use super::Outcome;
use super::queue::QueueSignals;
use super::retry::RetryPolicy;
use crate::clock::SharedClock;
use crate::event::StoredEvent;
use crate::plugin::registry::PluginHost;
use crate::resource::{Fields, NAME_RULE, PluginRecord, Problems, valid_name};
use crate::store::{EventLog, Queues};
use async_trait::async_trait;
use serde_json::{Map, Value};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// One event to deliver: the event with its stored bytes, and the rendered
/// transform output that replaces the payload when the rule has one.
#[derive(Clone, Debug)]
pub struct Item {
    /// The event (its `id` identifies the delivery across retries).
    pub event: StoredEvent,
    /// The built-in transform's output, if the rule has one.
    pub body: Option<Arc<str>>,
}

/// Something of the tenant's a target sends to; it must exist when a rule
/// is saved, and cannot be deleted while a rule sends to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    /// Another bus.
    Bus(String),
    /// A pull queue.
    Queue(String),
    /// A plugin.
    Plugin(String),
}

/// How the engine groups deliveries to one target into calls of
/// [`Target::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// Most deliveries in one call.
    pub max_items: usize,
    /// Most bytes of events (as stored, or their transform output) in one
    /// call, if the target bounds them; the target splits more exactly.
    pub max_bytes: Option<usize>,
    /// Longest a first delivery waits for others to join its call; zero:
    /// a call takes what is due at once.
    pub max_wait: Duration,
}

impl Batching {
    /// Up to `max_items` per call, no byte bound, no waiting.
    pub fn up_to(max_items: usize) -> Self {
        Self {
            max_items: max_items.max(1),
            max_bytes: None,
            max_wait: Duration::ZERO,
        }
    }

    /// Whether an item of `size` bytes joins a batch of `items` items and
    /// `bytes` bytes (a first item always does).
    pub fn fits(&self, items: usize, bytes: usize, size: usize) -> bool {
        items == 0
            || (items < self.max_items && self.max_bytes.is_none_or(|max| bytes + size <= max))
    }

    /// What one item counts against [`max_bytes`](Self::max_bytes).
    pub fn size_of(item: &Item) -> usize {
        item.body.as_ref().map_or(item.event.json().len(), |body| {
            item.event.json().len() + body.len()
        }) + 1
    }
}

/// A place events are delivered to.
///
/// Outcomes are per delivery, so a batch can partly succeed; the engine
/// applies the retry policy and dead-lettering to each one.
#[async_trait]
pub trait Target: Send + Sync + fmt::Debug + 'static {
    /// The kind, as written in rules (`http`, `queue`, `bus`, `wasm`).
    fn kind(&self) -> &'static str;

    /// Most deliveries one [`send`](Self::send) takes; more due at once are
    /// split into several calls.
    fn max_batch(&self) -> usize {
        1
    }

    /// How deliveries are grouped into calls; by default up to
    /// [`max_batch`](Self::max_batch) of those due at once.
    fn batching(&self) -> Batching {
        Batching::up_to(self.max_batch())
    }

    /// Delivers a batch: one outcome per item, in order.
    async fn send(&self, batch: &[Item]) -> Vec<Outcome>;

    /// What the target sends to (with the member naming it), for the checks
    /// made when a rule is saved or a resource deleted.
    fn references(&self) -> Vec<(&'static str, Reference)> {
        Vec::new()
    }

    /// A check that needs the target's far end, made when a rule is saved
    /// (a connector's `validate-config`); problems are relative to the target.
    async fn check(&self) -> Result<(), Problems> {
        Ok(())
    }
}

/// The services targets are built with, shared by every rule.
#[derive(Clone)]
pub struct TargetServices {
    /// Webhooks' HTTP client (egress policy included).
    pub http: super::http::HttpClient,
    /// Pull queues (queue targets push here).
    pub queues: Arc<dyn Queues>,
    /// Long-poll wake-ups for queue consumers.
    pub queue_signals: Arc<QueueSignals>,
    /// The event log (bus targets append here).
    pub log: Arc<dyn EventLog>,
    /// Most `bus` hops before an event is treated as looping.
    pub max_hops: u32,
    /// Time, for forwarded events' ingest time.
    pub clock: SharedClock,
    /// Runs connector plugins.
    pub plugins: Arc<PluginHost>,
}

impl fmt::Debug for TargetServices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TargetServices")
            .field("max_hops", &self.max_hops)
            .finish_non_exhaustive()
    }
}

/// What building one rule's targets needs.
pub struct BuildContext<'a> {
    /// The tenant that owns the rule.
    pub tenant: &'a str,
    /// Shared services.
    pub services: &'a TargetServices,
    /// Looks up the tenant's plugins by name.
    pub plugin: &'a (dyn Fn(&str) -> Option<PluginRecord> + Sync),
}

/// Builds one kind of target from its members (all but `id`, `type` and
/// `retry_policy`); problems are relative to the target.
type Builder = fn(&Map<String, Value>, &BuildContext<'_>) -> Result<Arc<dyn Target>, Problems>;

/// Every kind of target, by the name rules use.
const KINDS: &[(&str, Builder)] = &[
    ("http", super::webhook::build),
    ("bus", super::bus::build),
    ("queue", super::queue::build),
    ("wasm", super::wasm::build),
];

/// The kinds' names, for messages.
fn kind_names() -> String {
    let names: Vec<&str> = KINDS.iter().map(|(n, _)| *n).collect();
    names.join(", ")
}

/// A target as written in a rule.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetSpec {
    /// Unique within the rule.
    pub id: String,
    /// The kind (`type`).
    pub kind: String,
    /// The target's own retry policy, overriding the rule's.
    pub retry_policy: Option<RetryPolicy>,
    /// The kind-specific members.
    pub members: Map<String, Value>,
}

impl TargetSpec {
    /// Reads the members every target has; records problems (under `path`)
    /// and returns `None` when it cannot go on.
    pub fn parse(value: &Value, path: &str, problems: &mut Problems) -> Option<Self> {
        let mut f = Fields::of(value, path, "a target", problems)?;
        let id: Option<String> = f.required("id", "missing: every target needs an id");
        if let Some(id) = &id
            && !valid_name(id)
        {
            f.problem("id", NAME_RULE);
        }
        let retry_policy: Option<RetryPolicy> = f.optional("retry_policy");
        if let Some(policy) = &retry_policy
            && let Err(e) = policy.validate()
        {
            let prefix = f.path_of("retry_policy");
            f.problems().extend_within(&prefix, e.into());
        }
        let kind: Option<String> = f.required("type", &format!("missing: one of {}", kind_names()));
        if let Some(kind) = &kind
            && !KINDS.iter().any(|(name, _)| name == kind)
        {
            f.problem(
                "type",
                format!("unknown target type {kind:?}: expected {}", kind_names()),
            );
            return None;
        }
        let Value::Object(obj) = value else {
            return None;
        };
        let mut members: Map<String, Value> = obj
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "id" | "type" | "retry_policy"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(kind) = kind.as_deref().filter(|k| *k != "http")
            && members.remove("batch").is_some()
        {
            let hint = if kind == "wasm" {
                " (a wasm target batches with max_batch)"
            } else {
                ""
            };
            f.problem(
                "batch",
                format!("only http targets take batch, not {kind} targets{hint}"),
            );
        }
        Some(Self {
            id: id.filter(|id| valid_name(id))?,
            kind: kind?,
            retry_policy,
            members,
        })
    }

    /// Builds the runtime target; problems are relative to the target.
    pub fn build(&self, cx: &BuildContext<'_>) -> Result<Arc<dyn Target>, Problems> {
        let (_, build) = KINDS
            .iter()
            .find(|(name, _)| *name == self.kind)
            .ok_or_else(|| Problems::one("type", format!("unknown target type {:?}", self.kind)))?;
        build(&self.members, cx)
    }
}

/// A target as bound in one rule: what the engine needs to deliver to it,
/// retry it and dead-letter for it.
#[derive(Clone, Debug)]
pub struct BoundTarget {
    /// Owning tenant.
    pub tenant: String,
    /// The rule's bus.
    pub bus: String,
    /// The rule.
    pub rule: String,
    /// The target's id within the rule.
    pub id: String,
    /// Its retry policy (its own, else the rule's, else the default).
    pub retry: RetryPolicy,
    /// Whether failures are kept in the dead-letter queue.
    pub dead_letter: bool,
    /// Whether events with a partition key reach it one at a time per key,
    /// in ingest order (the rule's `"ordering": "partition_key"`).
    pub ordered: bool,
    /// The target itself.
    pub target: Arc<dyn Target>,
}

/// Finds the target a scheduled delivery names (jobs outlive the rule
/// objects that were current when they were scheduled).
pub trait TargetDirectory: Send + Sync + 'static {
    /// The target `target` of rule `bus/rule` of `tenant`, as bound now.
    fn bound_target(
        &self,
        tenant: &str,
        bus: &str,
        rule: &str,
        target: &str,
    ) -> Option<Arc<BoundTarget>>;
}

/// Reads a kind's members into its spec type (`deny_unknown_fields`),
/// naming the member at fault.
pub(crate) fn read_spec<T: serde::de::DeserializeOwned>(
    members: &Map<String, Value>,
) -> Result<T, Problems> {
    let value = Value::Object(members.clone());
    serde_path_to_error::deserialize::<_, T>(&value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let field = if path == "." {
            // serde names an unknown or missing member only in its message.
            unknown_member(&inner).unwrap_or_default()
        } else {
            path
        };
        Problems::one(field, inner)
    })
}

/// The member an "unknown field `x`" or "missing field `x`" message names.
fn unknown_member(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shared_members_are_read_and_checked_together() {
        let mut problems = Problems::new();
        let spec = TargetSpec::parse(
            &json!({"id": "q", "type": "queue", "queue": "audit", "retry_policy": {"max_attempts": 3}}),
            "targets[0]",
            &mut problems,
        )
        .unwrap();
        assert!(problems.is_empty(), "{problems}");
        assert_eq!((spec.id.as_str(), spec.kind.as_str()), ("q", "queue"));
        assert_eq!(spec.retry_policy.unwrap().max_attempts, 3);
        assert_eq!(
            spec.members,
            *json!({"queue": "audit"}).as_object().unwrap()
        );

        let mut problems = Problems::new();
        assert!(
            TargetSpec::parse(
                &json!({"id": "bad/id", "type": "carrier-pigeon", "retry_policy": {"max_attempts": 0}}),
                "targets[1]",
                &mut problems,
            )
            .is_none()
        );
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "targets[1].id",
                "targets[1].retry_policy.max_attempts",
                "targets[1].type"
            ]
        );
    }

    #[test]
    fn only_http_targets_take_batch() {
        for (kind, extra) in [
            ("queue", json!({"queue": "audit"})),
            ("bus", json!({"bus": "other"})),
            ("wasm", json!({"plugin": "p"})),
        ] {
            let mut target = json!({"id": "t", "type": kind, "batch": {"max_events": 10}});
            for (k, v) in extra.as_object().unwrap() {
                target[k] = v.clone();
            }
            let mut problems = Problems::new();
            let spec = TargetSpec::parse(&target, "targets[0]", &mut problems).unwrap();
            let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
            assert_eq!(fields, ["targets[0].batch"], "{kind}");
            assert!(!spec.members.contains_key("batch"), "reported once");
        }
        let mut problems = Problems::new();
        let spec = TargetSpec::parse(
            &json!({"id": "h", "type": "http", "url": "https://x.example/", "batch": {}}),
            "targets[0]",
            &mut problems,
        )
        .unwrap();
        assert!(problems.is_empty(), "{problems}");
        assert!(spec.members.contains_key("batch"));
    }

    #[test]
    fn serde_member_errors_name_the_member() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Spec {
            queue: String,
        }
        let err =
            read_spec::<Spec>(json!({"queue": "q", "color": 1}).as_object().unwrap()).unwrap_err();
        assert_eq!(err.first().unwrap().field, "color");
        let err = read_spec::<Spec>(json!({}).as_object().unwrap()).unwrap_err();
        assert_eq!(err.first().unwrap().field, "queue");
        let err = read_spec::<Spec>(json!({"queue": 5}).as_object().unwrap()).unwrap_err();
        assert_eq!(err.first().unwrap().field, "queue");
    }
}
