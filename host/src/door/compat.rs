//! Compatibility between two versions of a schema, in the sense of
//! Confluent's schema registry: `backward` — the new version accepts every
//! event the previous one accepted (consumers upgraded to the new version
//! still read old events); `forward` — the previous version accepts every
//! event the new one accepts (consumers still on the previous version read
//! new events); `full` — both.
//!
//! Deciding that for JSON Schema in general is undecidable in practice, so
//! this compares what it can decide exactly, keyword by keyword, walking
//! `properties` and `items` in step:
//!
//! - `type`: a type the new version drops *narrows* (old events of that
//!   type are refused); one it adds *widens* (`integer` counts as covered
//!   by `number`; no `type` means every type);
//! - `enum` and `const`: values removed narrow, values added widen (adding
//!   an enum where there was none narrows, dropping it widens);
//! - `required`: a property newly required narrows, one no longer required
//!   widens;
//! - `additionalProperties: false`: adding it narrows, removing it widens;
//!   under it, a property only the new version declares widens (the old
//!   version refuses events carrying it) and one only the old version
//!   declared narrows.
//!
//! Narrowing breaks `backward`, widening breaks `forward`. Every other
//! keyword (`minimum`, `pattern`, `format`, `oneOf`, `$ref`, ...) is not
//! compared: a change there passes unnoticed.

use super::schema::Compatibility;
use crate::resource::{Problems, join_path};
use serde_json::Value;
use std::collections::BTreeSet;

/// The two directions a change can go.
#[derive(Debug, Default)]
struct Changes {
    /// (path, what): the new version refuses something the old accepted.
    narrowing: Vec<(String, String)>,
    /// (path, what): the new version accepts something the old refused.
    widening: Vec<(String, String)>,
}

/// Checks `new` against `old` under `level`; every incompatible change is
/// a problem at its place in the new schema (`schema.properties.total.type`).
pub fn check(old: &Value, new: &Value, level: Compatibility) -> Result<(), Problems> {
    let mut changes = Changes::default();
    compare(old, new, "schema", &mut changes);
    let mut problems = Problems::new();
    if matches!(level, Compatibility::Backward | Compatibility::Full) {
        for (path, what) in changes.narrowing {
            problems.add(
                path,
                format!("not backward compatible: {what}, so events valid under the previous version are refused"),
            );
        }
    }
    if matches!(level, Compatibility::Forward | Compatibility::Full) {
        for (path, what) in changes.widening {
            problems.add(
                path,
                format!("not forward compatible: {what}, so the previous version refuses events valid under this one"),
            );
        }
    }
    problems.finish()
}

/// Every JSON Schema type name.
const ALL_TYPES: [&str; 7] = [
    "null", "boolean", "object", "array", "number", "string", "integer",
];

/// The `type` keyword as a set; `None` when absent (every type).
fn types(schema: &Value) -> Option<BTreeSet<String>> {
    match schema.get("type")? {
        Value::String(t) => Some(BTreeSet::from([t.clone()])),
        Value::Array(ts) => Some(
            ts.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => None,
    }
}

/// Whether type set `set` (None: all) admits every value of type `t`.
fn covers(set: Option<&BTreeSet<String>>, t: &str) -> bool {
    set.is_none_or(|s| s.contains(t) || (t == "integer" && s.contains("number")))
}

/// `enum` (or `const` as a one-value enum), as a list.
fn allowed(schema: &Value) -> Option<Vec<Value>> {
    if let Some(Value::Array(values)) = schema.get("enum") {
        return Some(values.clone());
    }
    schema.get("const").map(|v| vec![v.clone()])
}

fn required(schema: &Value) -> BTreeSet<String> {
    match schema.get("required") {
        Some(Value::Array(names)) => names
            .iter()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect(),
        _ => BTreeSet::new(),
    }
}

fn closed(schema: &Value) -> bool {
    schema.get("additionalProperties") == Some(&Value::Bool(false))
}

fn compare(old: &Value, new: &Value, path: &str, out: &mut Changes) {
    let (Value::Object(_), Value::Object(_)) = (old, new) else {
        return;
    };
    let (old_types, new_types) = (types(old), types(new));
    if old_types != new_types {
        let at = join_path(path, "type");
        let old_list: Vec<&str> = match &old_types {
            Some(s) => s.iter().map(String::as_str).collect(),
            None => ALL_TYPES.to_vec(),
        };
        let new_list: Vec<&str> = match &new_types {
            Some(s) => s.iter().map(String::as_str).collect(),
            None => ALL_TYPES.to_vec(),
        };
        for t in &old_list {
            if !covers(new_types.as_ref(), t) {
                out.narrowing
                    .push((at.clone(), format!("type {t:?} is no longer allowed")));
            }
        }
        for t in &new_list {
            if !covers(old_types.as_ref(), t) {
                out.widening
                    .push((at.clone(), format!("type {t:?} is newly allowed")));
            }
        }
    }
    match (allowed(old), allowed(new)) {
        (None, None) => {}
        (None, Some(_)) => out.narrowing.push((
            join_path(path, "enum"),
            "the values are newly restricted to an enum".into(),
        )),
        (Some(_), None) => out.widening.push((
            join_path(path, "enum"),
            "the values are no longer restricted to an enum".into(),
        )),
        (Some(o), Some(n)) => {
            for v in o.iter().filter(|v| !n.contains(v)) {
                out.narrowing
                    .push((join_path(path, "enum"), format!("value {v} was removed")));
            }
            for v in n.iter().filter(|v| !o.contains(v)) {
                out.widening
                    .push((join_path(path, "enum"), format!("value {v} was added")));
            }
        }
    }
    let (old_req, new_req) = (required(old), required(new));
    for name in new_req.difference(&old_req) {
        out.narrowing.push((
            join_path(path, "required"),
            format!("property {name:?} became required"),
        ));
    }
    for name in old_req.difference(&new_req) {
        out.widening.push((
            join_path(path, "required"),
            format!("property {name:?} is no longer required"),
        ));
    }
    match (closed(old), closed(new)) {
        (false, true) => out.narrowing.push((
            join_path(path, "additionalProperties"),
            "properties not declared are newly refused".into(),
        )),
        (true, false) => out.widening.push((
            join_path(path, "additionalProperties"),
            "properties not declared are newly allowed".into(),
        )),
        _ => {}
    }
    let empty = serde_json::Map::new();
    let old_props = old
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let new_props = new
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for (name, new_prop) in new_props {
        let at = join_path(&join_path(path, "properties"), name);
        match old_props.get(name) {
            Some(old_prop) => compare(old_prop, new_prop, &at, out),
            None if closed(old) => out
                .widening
                .push((at, format!("property {name:?} was added while the previous version refuses undeclared properties"))),
            None => {}
        }
    }
    for name in old_props.keys().filter(|n| !new_props.contains_key(*n)) {
        if closed(new) {
            out.narrowing.push((
                join_path(&join_path(path, "properties"), name),
                format!("property {name:?} was removed while undeclared properties are refused"),
            ));
        }
    }
    if let (Some(o), Some(n)) = (old.get("items"), new.get("items")) {
        compare(o, n, &join_path(path, "items"), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(r: Result<(), Problems>) -> Vec<String> {
        r.err()
            .map(|p| p.iter().map(|p| p.field.clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn added_and_removed_required_properties() {
        let v1 =
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]});
        let v2 = json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {}}, "required": ["a", "b"]});
        assert_eq!(
            fields(check(&v1, &v2, Compatibility::Backward)),
            ["schema.required"]
        );
        assert!(check(&v1, &v2, Compatibility::Forward).is_ok());
        assert_eq!(
            fields(check(&v2, &v1, Compatibility::Forward)),
            ["schema.required"]
        );
        assert!(check(&v2, &v1, Compatibility::Backward).is_ok());
        assert_eq!(fields(check(&v1, &v2, Compatibility::Full)).len(), 1);
        assert!(check(&v1, &v2, Compatibility::None).is_ok());
    }

    #[test]
    fn type_changes_nested_and_the_integer_number_rule() {
        let v1 = json!({"properties": {"n": {"type": "integer"}, "items": {"items": {"type": "string"}}}});
        let v2 = json!({"properties": {"n": {"type": "number"}, "items": {"items": {"type": ["string", "null"]}}}});
        assert!(check(&v1, &v2, Compatibility::Backward).is_ok());
        assert_eq!(
            fields(check(&v1, &v2, Compatibility::Forward)),
            [
                "schema.properties.n.type",
                "schema.properties.items.items.type"
            ]
        );
        let v3 = json!({"properties": {"n": {"type": "string"}}});
        assert_eq!(
            fields(check(&v1, &v3, Compatibility::Backward)),
            ["schema.properties.n.type"]
        );
    }

    #[test]
    fn enum_changes_and_closed_objects() {
        let v1 = json!({"properties": {"s": {"enum": ["a", "b"]}}, "additionalProperties": false});
        let v2 = json!({"properties": {"s": {"enum": ["a", "c"]}, "t": {}}, "additionalProperties": false});
        assert_eq!(
            fields(check(&v1, &v2, Compatibility::Backward)),
            ["schema.properties.s.enum"]
        );
        assert_eq!(
            fields(check(&v1, &v2, Compatibility::Forward)),
            ["schema.properties.s.enum", "schema.properties.t"]
        );
        let open = json!({"properties": {"s": {"enum": ["a", "b"]}}});
        assert_eq!(
            fields(check(&open, &v1, Compatibility::Backward)),
            ["schema.additionalProperties"]
        );
        assert!(check(&open, &v1, Compatibility::Forward).is_ok());
    }
}
