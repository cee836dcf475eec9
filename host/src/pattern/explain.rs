//! Explaining a match: for each alternative of a pattern (each `$or`
//! branch, after expansion), each field's condition, whether it held, and
//! the event's actual value there — and the first condition that failed.
//!
//! The verdict is the matcher's own: a branch matches exactly when
//! [`conjunction_matches`](super::matcher::conjunction_matches) says so, and
//! the whole explanation matches when any branch does, so `match` always
//! equals [`Pattern::matches`]. Conditions are judged one field at a time;
//! when every field holds on its own but no choice of array elements
//! satisfies them together (array consistency), the branch reports that as
//! its failure. In a branch that matches, every condition is shown as held.

use super::flatten::{self, Flat, Scalar};
use super::matcher::conjunction_matches;
use super::parse::{self, Condition, Field};
use super::{Pattern, PatternError, PatternLimits};
use serde::Serialize;
use serde_json::{Map, Value};

/// One field's condition in one branch.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConditionReport {
    /// The dotted field path.
    pub path: String,
    /// The field's value list as the pattern wrote it.
    pub condition: Value,
    /// Whether the event met it.
    pub held: bool,
    /// The event's value there: one value, an array when the field occurs
    /// in several array elements, `null` when absent (see `present`).
    pub actual: Value,
    /// Whether the event has the field at all.
    pub present: bool,
}

/// One alternative of the pattern.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Branch {
    /// Whether this alternative matches.
    #[serde(rename = "match")]
    pub matched: bool,
    /// Its conditions, by path.
    pub conditions: Vec<ConditionReport>,
}

/// The first failure: the path, the condition and the actual value.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Failure {
    /// The dotted field path.
    pub path: String,
    /// The condition that failed.
    pub condition: Value,
    /// The event's value there.
    pub actual: Value,
}

/// Why a pattern matches an event or not.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    /// Whether the pattern matches (equal to [`Pattern::matches`]).
    #[serde(rename = "match")]
    pub matched: bool,
    /// Every alternative.
    pub branches: Vec<Branch>,
    /// When nothing matches: the first failed condition of the branch that
    /// came closest (fewest failed conditions; the first such branch).
    pub first_failure: Option<Failure>,
}

/// What a branch reports when its fields hold one by one but not together.
const CONSISTENCY: &str = "the fields must match within one element of each array they share";

/// Compiles `pattern` (as given; aliases already applied by the caller) and
/// explains how `event` fares against it.
pub fn explain(
    pattern: &Value,
    event: &Value,
    limits: &PatternLimits,
) -> Result<Explanation, PatternError> {
    let compiled = Pattern::from_value(pattern, limits)?;
    Ok(compiled.explain_with(pattern, event))
}

impl Pattern {
    /// Explains the match of `event`; `source` is the JSON this pattern was
    /// compiled from (to show conditions as they were written).
    pub fn explain_with(&self, source: &Value, event: &Value) -> Explanation {
        let flat = flatten::flatten(event, &self.table);
        let written = written_conditions(source);
        let branches: Vec<Branch> = self
            .conjunctions
            .iter()
            .zip(&self.paths)
            .map(|(conjunction, paths)| {
                let matched = conjunction_matches(conjunction, paths, &flat);
                let mut conditions: Vec<ConditionReport> = conjunction
                    .iter()
                    .zip(paths)
                    .map(|(field, &path)| {
                        let (actual, present) = actual(&flat, path);
                        ConditionReport {
                            path: field.path.clone(),
                            condition: shown(field, &written),
                            held: matched || holds(field, path, &flat),
                            actual,
                            present,
                        }
                    })
                    .collect();
                if !matched && conditions.iter().all(|c| c.held) {
                    conditions.push(ConditionReport {
                        path: conjunction
                            .iter()
                            .map(|f| f.path.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        condition: Value::String(CONSISTENCY.to_owned()),
                        held: false,
                        actual: Value::Null,
                        present: true,
                    });
                }
                Branch {
                    matched,
                    conditions,
                }
            })
            .collect();
        let matched = branches.iter().any(|b| b.matched);
        let first_failure = if matched {
            None
        } else {
            branches
                .iter()
                .min_by_key(|b| b.conditions.iter().filter(|c| !c.held).count())
                .and_then(|b| b.conditions.iter().find(|c| !c.held))
                .map(|c| Failure {
                    path: c.path.clone(),
                    condition: c.condition.clone(),
                    actual: c.actual.clone(),
                })
        };
        Explanation {
            matched,
            branches,
            first_failure,
        }
    }
}

/// Whether one field holds on its own: a leaf meets one of its conditions,
/// or it may be absent and is.
fn holds(field: &Field, path: u32, flat: &Flat<'_>) -> bool {
    let leaves = flat.leaves_at(path);
    if leaves.is_empty() {
        return field.allows_absence();
    }
    leaves.iter().any(|&i| {
        flat.leaves
            .get(i as usize)
            .is_some_and(|leaf| field.conditions.iter().any(|c| c.matches(&leaf.value)))
    })
}

/// The event's value(s) at a path, and whether there is any.
fn actual(flat: &Flat<'_>, path: u32) -> (Value, bool) {
    let values: Vec<Value> = flat
        .leaves_at(path)
        .iter()
        .filter_map(|&i| flat.leaves.get(i as usize))
        .map(|leaf| scalar(&leaf.value))
        .collect();
    match values.len() {
        0 => (Value::Null, false),
        1 => (values.into_iter().next().unwrap_or(Value::Null), true),
        _ => (Value::Array(values), true),
    }
}

fn scalar(s: &Scalar<'_>) -> Value {
    match s {
        Scalar::Str(s) => Value::String(s.to_string()),
        Scalar::Num(n) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
        Scalar::Bool(b) => Value::Bool(*b),
        Scalar::Null => Value::Null,
    }
}

/// Every value list the pattern writes, with its dotted path (`$or`
/// alternatives walked at the same path), to show a field's conditions as
/// written.
fn written_conditions(source: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    if let Value::Object(map) = source {
        walk(map, "", &mut out);
    }
    out
}

fn walk(map: &Map<String, Value>, prefix: &str, out: &mut Vec<(String, Value)>) {
    for (key, value) in map {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Array(items) => {
                if key == "$or" {
                    for alt in items {
                        if let Value::Object(m) = alt {
                            walk(m, prefix, out);
                        }
                    }
                }
                out.push((path, value.clone()));
            }
            Value::Object(m) => walk(m, &path, out),
            _ => {}
        }
    }
}

/// A field's conditions as written: the value list at its path whose
/// conditions are exactly the field's.
fn shown(field: &Field, written: &[(String, Value)]) -> Value {
    written
        .iter()
        .filter(|(path, _)| *path == field.path)
        .find(|(_, list)| conditions_of(list).as_deref() == Some(&field.conditions[..]))
        .map(|(_, list)| list.clone())
        .unwrap_or_else(|| Value::String(format!("{:?}", field.conditions)))
}

fn conditions_of(list: &Value) -> Option<Vec<Condition>> {
    let mut probe = Map::new();
    probe.insert("x".to_owned(), list.clone());
    let parsed = parse::parse(&Value::Object(probe), usize::MAX).ok()?;
    parsed
        .into_iter()
        .next()?
        .into_iter()
        .next()
        .map(|f| f.conditions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ex(pattern: Value, event: Value) -> Explanation {
        explain(&pattern, &event, &PatternLimits::default()).unwrap()
    }

    #[test]
    fn a_near_miss_names_the_failing_field() {
        let e = ex(
            json!({"source": ["shop"], "data": {"total": [{"numeric": [">", 100]}]}}),
            json!({"source": "shop", "data": {"total": 99}}),
        );
        assert!(!e.matched);
        let failure = e.first_failure.unwrap();
        assert_eq!(failure.path, "data.total");
        assert_eq!(failure.condition, json!([{"numeric": [">", 100]}]));
        assert_eq!(failure.actual, json!(99.0));
        let held: Vec<bool> = e.branches[0].conditions.iter().map(|c| c.held).collect();
        assert_eq!(held, [false, true]);
    }

    #[test]
    fn or_branches_and_absence() {
        let e = ex(
            json!({"$or": [{"a": [1]}, {"b": [{"exists": false}], "c": ["x"]}]}),
            json!({"a": 2, "c": "y"}),
        );
        assert!(!e.matched);
        assert_eq!(e.branches.len(), 2);
        assert_eq!(e.first_failure.as_ref().unwrap().path, "a");
        let b = &e.branches[1].conditions;
        assert_eq!(
            (b[0].path.as_str(), b[0].held, b[0].present),
            ("b", true, false)
        );
        let e = ex(json!({"$or": [{"a": [1]}, {"a": [2]}]}), json!({"a": 2}));
        assert!(e.matched && e.first_failure.is_none());
        assert_eq!(
            e.branches.iter().map(|b| b.matched).collect::<Vec<_>>(),
            [false, true]
        );
    }

    #[test]
    fn array_consistency_is_its_own_failure() {
        let e = ex(
            json!({"o": {"a": [1], "b": [2]}}),
            json!({"o": [{"a": 1, "b": 0}, {"a": 0, "b": 2}]}),
        );
        assert!(!e.matched);
        let failure = e.first_failure.unwrap();
        assert_eq!(failure.path, "o.a, o.b");
        assert_eq!(e.branches[0].conditions[0].actual, json!([1.0, 0.0]));
    }
}
