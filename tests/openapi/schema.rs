//! A small JSON Schema (2020-12) checker for the keywords the OpenAPI document
//! uses, so that real answers can be checked against their documented schema
//! without a schema crate. A keyword it does not know fails loudly instead of
//! being skipped, so the document cannot outgrow the checker unnoticed.

use serde_json::Value;

/// Keywords that constrain values, all checked here.
const CHECKED: [&str; 19] = [
    "$ref",
    "type",
    "const",
    "enum",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "minLength",
    "maxProperties",
    "minProperties",
];

/// Annotations, and assertions this checker leaves to the server's own tests
/// (`pattern` would need a regex engine; `format` is an annotation in 2020-12).
const NOT_CHECKED: [&str; 9] = [
    "description",
    "title",
    "default",
    "format",
    "pattern",
    "discriminator",
    "contentEncoding",
    "contentMediaType",
    "examples",
];

/// Checks values against schemas of one OpenAPI document (local `$ref`s).
pub struct Checker<'a> {
    doc: &'a Value,
}

impl<'a> Checker<'a> {
    pub fn new(doc: &'a Value) -> Self {
        Self { doc }
    }

    /// Every way `value` breaks `schema`, each with its JSON path.
    pub fn errors(&self, schema: &Value, value: &Value) -> Vec<String> {
        let mut out = Vec::new();
        self.check(schema, value, "$", &mut out);
        out
    }

    fn check(&self, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
        let schema = match schema {
            Value::Bool(true) => return,
            Value::Bool(false) => return out.push(format!("{at}: no value is allowed here")),
            Value::Object(schema) => schema,
            other => panic!("not a schema: {other}"),
        };
        for keyword in schema.keys() {
            assert!(
                CHECKED.contains(&keyword.as_str()) || NOT_CHECKED.contains(&keyword.as_str()),
                "the checker does not know the keyword {keyword:?}; teach it"
            );
        }
        if let Some(Value::String(pointer)) = schema.get("$ref") {
            let target = pointer
                .strip_prefix('#')
                .and_then(|p| self.doc.pointer(p))
                .unwrap_or_else(|| panic!("dangling $ref {pointer}"));
            self.check(target, value, at, out);
        }
        if let Some(types) = schema.get("type") {
            let types: Vec<&str> = match types {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                other => panic!("bad type {other}"),
            };
            if !types.iter().any(|t| has_type(value, t)) {
                out.push(format!("{at}: {value} is not of type {types:?}"));
            }
        }
        if let Some(expected) = schema.get("const")
            && expected != value
        {
            out.push(format!("{at}: {value} is not {expected}"));
        }
        if let Some(Value::Array(allowed)) = schema.get("enum")
            && !allowed.contains(value)
        {
            out.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
        if let Some(n) = value.as_f64() {
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && n < min
            {
                out.push(format!("{at}: {n} < {min}"));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && n > max
            {
                out.push(format!("{at}: {n} > {max}"));
            }
        }
        if let (Value::String(s), Some(min)) =
            (value, schema.get("minLength").and_then(Value::as_u64))
            && (s.chars().count() as u64) < min
        {
            out.push(format!("{at}: shorter than {min}"));
        }
        if let Value::Array(items) = value {
            let len = items.len() as u64;
            if schema
                .get("minItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| len < m)
            {
                out.push(format!("{at}: too few items"));
            }
            if schema
                .get("maxItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| len > m)
            {
                out.push(format!("{at}: too many items"));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    self.check(item_schema, item, &format!("{at}[{i}]"), out);
                }
            }
        }
        if let Value::Object(members) = value {
            let len = members.len() as u64;
            if schema
                .get("minProperties")
                .and_then(Value::as_u64)
                .is_some_and(|m| len < m)
            {
                out.push(format!("{at}: too few members"));
            }
            if schema
                .get("maxProperties")
                .and_then(Value::as_u64)
                .is_some_and(|m| len > m)
            {
                out.push(format!("{at}: too many members"));
            }
            for name in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = name.as_str().unwrap();
                if !members.contains_key(name) {
                    out.push(format!("{at}: missing {name:?}"));
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            for (name, member) in members {
                let here = format!("{at}.{name}");
                match properties.and_then(|p| p.get(name)) {
                    Some(property) => self.check(property, member, &here, out),
                    None => {
                        if let Some(additional) = schema.get("additionalProperties") {
                            self.check(additional, member, &here, out);
                        }
                    }
                }
            }
        }
        for sub in schema
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.check(sub, value, at, out);
        }
        if let Some(Value::Array(subs)) = schema.get("anyOf")
            && !subs.iter().any(|s| self.errors_at(s, value, at).is_empty())
        {
            out.push(format!("{at}: matches none of anyOf"));
        }
        if let Some(Value::Array(subs)) = schema.get("oneOf") {
            let results: Vec<Vec<String>> =
                subs.iter().map(|s| self.errors_at(s, value, at)).collect();
            let matching = results.iter().filter(|e| e.is_empty()).count();
            if matching != 1 {
                out.push(format!(
                    "{at}: matches {matching} of oneOf, not exactly one ({results:?})"
                ));
            }
        }
        if let Some(sub) = schema.get("not")
            && self.errors_at(sub, value, at).is_empty()
        {
            out.push(format!("{at}: matches a schema it must not"));
        }
    }

    fn errors_at(&self, schema: &Value, value: &Value, at: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.check(schema, value, at, &mut out);
        out
    }
}

fn has_type(value: &Value, ty: &str) -> bool {
    match ty {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        other => panic!("unknown type {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_checker_finds_what_it_should() {
        let doc = json!({"components": {"schemas": {
            "Id": {"type": "string", "minLength": 1},
            "Thing": {"type": "object", "required": ["id"], "additionalProperties": false,
                      "properties": {"id": {"$ref": "#/components/schemas/Id"},
                                     "n": {"type": ["integer", "null"], "minimum": 0},
                                     "kind": {"enum": ["a", "b"]}}},
            "Either": {"oneOf": [{"required": ["a"]}, {"required": ["b"]}]},
        }}});
        let checker = Checker::new(&doc);
        let thing = json!({"$ref": "#/components/schemas/Thing"});
        assert!(
            checker
                .errors(&thing, &json!({"id": "x", "n": null, "kind": "a"}))
                .is_empty()
        );
        assert_eq!(checker.errors(&thing, &json!({"n": 1})).len(), 1);
        assert_eq!(
            checker
                .errors(&thing, &json!({"id": "", "n": -1, "kind": "c", "extra": 1}))
                .len(),
            4
        );
        assert_eq!(checker.errors(&thing, &json!([])).len(), 1);
        let either = json!({"$ref": "#/components/schemas/Either"});
        assert!(checker.errors(&either, &json!({"a": 1})).is_empty());
        assert_eq!(checker.errors(&either, &json!({"a": 1, "b": 2})).len(), 1);
        assert_eq!(checker.errors(&either, &json!({})).len(), 1);
    }
}
