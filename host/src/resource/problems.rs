//! Validation problems, each with the JSON path at fault.
//!
//! Every validator of the bus (rules, targets, retry policies, transforms,
//! settings, limits) reports *all* the problems it finds in one
//! [`Problems`], so a user fixes a spec in one round trip; the HTTP edge
//! answers them as `details` and names the first one as `field`.
//! [`Fields`] reads a JSON object member by member with serde, so type
//! errors in several members are all reported too (serde alone stops at
//! the first one).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::fmt;

/// One problem: where and what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// JSON path of the offending input, e.g. `targets[1].url` (empty: the whole input).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Every problem found in one input, in document order.
#[derive(Clone, Debug, Default, PartialEq, Eq, thiserror::Error)]
pub struct Problems(Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if p.field.is_empty() {
                f.write_str(&p.message)?;
            } else {
                write!(f, "{}: {}", p.field, p.message)?;
            }
        }
        Ok(())
    }
}

/// `prefix.field`, or either alone when the other is empty; an index
/// (`[2]`) attaches without a dot.
pub fn join_path(prefix: &str, field: &str) -> String {
    match (prefix.is_empty(), field.is_empty()) {
        (true, _) => field.to_owned(),
        (_, true) => prefix.to_owned(),
        _ if field.starts_with('[') => format!("{prefix}{field}"),
        _ => format!("{prefix}.{field}"),
    }
}

impl Problems {
    /// No problems yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A single problem.
    pub fn one(field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut p = Self::new();
        p.add(field, message);
        p
    }

    /// Records a problem.
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Records every problem of `other`, its paths under `prefix`.
    pub fn extend_within(&mut self, prefix: &str, other: Problems) {
        self.0.extend(other.within(prefix).0);
    }

    /// The same problems with every path under `prefix` (e.g. `targets[2]`).
    pub fn within(mut self, prefix: &str) -> Self {
        for p in &mut self.0 {
            p.field = join_path(prefix, &p.field);
        }
        self
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The problems in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Problem> {
        self.0.iter()
    }

    /// The first problem.
    pub fn first(&self) -> Option<&Problem> {
        self.0.first()
    }

    /// `Ok` when nothing was recorded, else every problem.
    pub fn finish(self) -> Result<(), Problems> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }

    /// The problems as a list.
    pub fn into_vec(self) -> Vec<Problem> {
        self.0
    }
}

impl IntoIterator for Problems {
    type Item = Problem;
    type IntoIter = std::vec::IntoIter<Problem>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl FromIterator<Problem> for Problems {
    fn from_iter<I: IntoIterator<Item = Problem>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// Reads the members of one JSON object, recording a problem for each member
/// of the wrong shape and each unknown member, so one pass finds them all.
pub struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: String,
    problems: &'a mut Problems,
}

impl<'a> Fields<'a> {
    /// Starts reading `value` (found at `path`); records a problem and returns
    /// `None` when it is not an object. `what` names it in that message.
    pub fn of(
        value: &'a Value,
        path: &str,
        what: &str,
        problems: &'a mut Problems,
    ) -> Option<Self> {
        match value {
            Value::Object(obj) => Some(Self {
                obj,
                path: path.to_owned(),
                problems,
            }),
            _ => {
                problems.add(path, format!("{what} must be a JSON object"));
                None
            }
        }
    }

    /// The path of member `name`.
    pub fn path_of(&self, name: &str) -> String {
        join_path(&self.path, name)
    }

    /// Member `name` as it is, unless absent or `null`.
    pub fn raw(&self, name: &str) -> Option<&'a Value> {
        self.obj.get(name).filter(|v| !v.is_null())
    }

    /// Member `name` read as `T`; `None` when absent or `null`, or (with a
    /// problem recorded) when it does not read as `T`.
    pub fn optional<T: DeserializeOwned>(&mut self, name: &str) -> Option<T> {
        let value = self.raw(name)?;
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let field = if inner == "." {
                    self.path_of(name)
                } else {
                    join_path(&self.path_of(name), &inner)
                };
                self.problems.add(field, e.into_inner().to_string());
                None
            }
        }
    }

    /// Member `name` read as `T`; a problem saying `missing` when absent.
    pub fn required<T: DeserializeOwned>(&mut self, name: &str, missing: &str) -> Option<T> {
        if self.raw(name).is_none() {
            let field = self.path_of(name);
            self.problems.add(field, missing);
            return None;
        }
        self.optional(name)
    }

    /// Records `unknown field` for every member not in `known`.
    pub fn deny_unknown(&mut self, known: &[&str]) {
        for key in self.obj.keys() {
            if !known.contains(&key.as_str()) {
                let field = join_path(&self.path, key);
                self.problems.add(field, "unknown field");
            }
        }
    }

    /// Records a problem with member `name`.
    pub fn problem(&mut self, name: &str, message: impl Into<String>) {
        let field = self.path_of(name);
        self.problems.add(field, message);
    }

    /// The problems recorded so far (for nested validators).
    pub fn problems(&mut self) -> &mut Problems {
        self.problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_report_every_member_problem_with_paths() {
        let value = json!({"enabled": "yes", "n": 3, "nested": {"a": [1, "x"]}, "extra": 1});
        let mut problems = Problems::new();
        let mut f = Fields::of(&value, "rule", "a rule", &mut problems).unwrap();
        assert_eq!(f.optional::<bool>("enabled"), None);
        assert_eq!(f.optional::<u32>("n"), Some(3));
        assert_eq!(
            f.optional::<std::collections::BTreeMap<String, Vec<u32>>>("nested"),
            None
        );
        assert_eq!(f.required::<String>("missing", "missing: say it"), None);
        f.deny_unknown(&["enabled", "n", "nested", "missing"]);
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "rule.enabled",
                "rule.nested.a[1]",
                "rule.missing",
                "rule.extra"
            ]
        );
        assert!(
            problems
                .to_string()
                .starts_with("rule.enabled: invalid type")
        );
    }

    #[test]
    fn paths_join_and_nest() {
        assert_eq!(join_path("", "url"), "url");
        assert_eq!(join_path("targets", "[2]"), "targets[2]");
        assert_eq!(join_path("targets[2]", ""), "targets[2]");
        let p = Problems::one("url", "bad").within("targets[1]");
        assert_eq!(p.first().unwrap().field, "targets[1].url");
        assert!(Problems::new().finish().is_ok());
        let mut none = Problems::new();
        assert!(Fields::of(&json!([1]), "x", "a thing", &mut none).is_none());
        assert_eq!(none.to_string(), "x: a thing must be a JSON object");
    }
}
