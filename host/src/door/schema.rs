//! A registered schema: the body of `PUT /v1/buses/{bus}/schemas/{name}`,
//! read member by member, and its JSON Schema compiled by the `jsonschema`
//! crate; and what validating an event against it reports.
//!
//! The schema describes an event's payload (`data`), as the CloudEvents
//! `dataschema` attribute does; violations are reported with their path
//! into the event (`data.items[2].price`), so a sender sees exactly where.
//! Drafts 2020-12 (the default when `$schema` is absent), 2019-09 and 7
//! are accepted; `format` is asserted (a `date-time` must be one). A
//! schema may not `$ref` anything outside itself: the bus never fetches a
//! remote or local document for a tenant.

use crate::event::Event;
use crate::resource::{Fields, Problems};
use jsonschema::Draft;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::fmt::Write as _;

/// What the bus does with an event that does not conform.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Refuse it (400 `schema_violation`; in a batch, that entry alone).
    #[default]
    Enforce,
    /// Accept it, tagged with the `schemaviolation` extension, and count it.
    Warn,
    /// Registered only: events are not checked.
    Off,
}

impl Mode {
    /// The name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Warn => "warn",
            Self::Off => "off",
        }
    }
}

/// Which changes a new version may make, in the sense of Confluent's
/// schema registry (see [`super::compat`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compatibility {
    /// Any change.
    #[default]
    None,
    /// The new version accepts everything the previous one did (consumers
    /// on the new version read old events).
    Backward,
    /// The previous version accepts everything the new one does (consumers
    /// still on the previous version read new events).
    Forward,
    /// Both.
    Full,
}

/// Which events a schema applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// Events with this `source` and `type`.
    SourceType {
        /// The `source` attribute.
        source: String,
        /// The `type` attribute.
        event_type: String,
    },
    /// Events whose `dataschema` attribute is this URI.
    DataSchema(String),
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SourceType { source, event_type } => {
                write!(f, "source {source:?} and type {event_type:?}")
            }
            Self::DataSchema(uri) => write!(f, "dataschema {uri:?}"),
        }
    }
}

/// A schema version as written (and as stored).
#[derive(Clone, Debug, PartialEq)]
pub struct SchemaSpec {
    /// Which events it applies to.
    pub selector: Selector,
    /// The JSON Schema of `data`.
    pub schema: Value,
    /// What non-conforming events get.
    pub mode: Mode,
    /// The check a new version must pass against this one's predecessor;
    /// `None` here means "as the previous version said" (default none).
    pub compatibility: Option<Compatibility>,
    /// Free text.
    pub description: Option<String>,
}

/// The members a schema body may have.
const MEMBERS: &[&str] = &[
    "source",
    "type",
    "dataschema",
    "schema",
    "mode",
    "compatibility",
    "description",
];

/// `$schema` values accepted, and the draft each means.
const DRAFTS: &[(&str, Draft)] = &[
    (
        "https://json-schema.org/draft/2020-12/schema",
        Draft::Draft202012,
    ),
    (
        "https://json-schema.org/draft/2019-09/schema",
        Draft::Draft201909,
    ),
    ("http://json-schema.org/draft-07/schema", Draft::Draft7),
    ("https://json-schema.org/draft-07/schema", Draft::Draft7),
];

/// The dialect inferred schemas declare.
pub const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

impl SchemaSpec {
    /// Reads a schema body; every problem is reported with its path
    /// (compiling the JSON Schema included).
    pub fn parse(value: &Value) -> Result<Self, Problems> {
        let mut problems = Problems::new();
        let spec = Self::read(value, &mut problems);
        if let Some(spec) = &spec
            && problems.is_empty()
            && let Err(p) = compile(&spec.schema)
        {
            problems.extend_within("", p);
        }
        match spec {
            Some(spec) if problems.is_empty() => Ok(spec),
            _ => Err(problems),
        }
    }

    fn read(value: &Value, problems: &mut Problems) -> Option<Self> {
        let mut f = Fields::of(value, "", "a schema body", problems)?;
        f.deny_unknown(MEMBERS);
        let source: Option<String> = f.optional("source");
        let event_type: Option<String> = f.optional("type");
        let dataschema: Option<String> = f.optional("dataschema");
        for (name, v) in [
            ("source", &source),
            ("type", &event_type),
            ("dataschema", &dataschema),
        ] {
            if v.as_deref().is_some_and(str::is_empty) {
                f.problem(name, "must not be empty");
            }
        }
        let selector = match (source, event_type, dataschema) {
            (None, None, Some(uri)) => Some(Selector::DataSchema(uri)),
            (Some(source), Some(event_type), None) => {
                Some(Selector::SourceType { source, event_type })
            }
            (_, _, Some(_)) => {
                f.problem(
                    "dataschema",
                    "give either dataschema or source and type, not both",
                );
                None
            }
            (Some(_), None, None) => {
                f.problem("type", "missing: source and type select events together");
                None
            }
            (None, Some(_), None) => {
                f.problem("source", "missing: source and type select events together");
                None
            }
            (None, None, None) => {
                f.problem(
                    "source",
                    "missing: a schema applies to events with a source and type, or with a dataschema",
                );
                None
            }
        };
        let schema = match f.raw("schema") {
            None => {
                f.problem("schema", "missing: the JSON Schema of the events' data");
                None
            }
            Some(Value::Object(o)) => Some(Value::Object(o.clone())),
            Some(_) => {
                f.problem("schema", "must be a JSON Schema object");
                None
            }
        };
        let mode = f.optional::<Mode>("mode").unwrap_or_default();
        let compatibility = f.optional::<Compatibility>("compatibility");
        let description = f.optional::<String>("description");
        Some(Self {
            selector: selector?,
            schema: schema?,
            mode,
            compatibility,
            description,
        })
    }

    /// The spec as stored and answered (the body's members).
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        match &self.selector {
            Selector::SourceType { source, event_type } => {
                out.insert("source".into(), json!(source));
                out.insert("type".into(), json!(event_type));
            }
            Selector::DataSchema(uri) => {
                out.insert("dataschema".into(), json!(uri));
            }
        }
        out.insert("mode".into(), json!(self.mode));
        if let Some(c) = self.compatibility {
            out.insert("compatibility".into(), json!(c));
        }
        if let Some(d) = &self.description {
            out.insert("description".into(), json!(d));
        }
        out.insert("schema".into(), self.schema.clone());
        Value::Object(out)
    }
}

/// Compiles a JSON Schema; problems name the place in it (`schema.properties.total.type`).
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, Problems> {
    let draft = match schema.get("$schema") {
        None => Draft::Draft202012,
        Some(Value::String(uri)) => {
            let bare = uri.trim_end_matches('#');
            match DRAFTS.iter().find(|(u, _)| *u == bare) {
                Some((_, draft)) => *draft,
                None => {
                    return Err(Problems::one(
                        "schema.$schema",
                        format!(
                            "unsupported dialect {uri:?}: use draft 2020-12 (the default), 2019-09 or 7 ({})",
                            DRAFTS
                                .iter()
                                .map(|(u, _)| *u)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
        }
        Some(_) => return Err(Problems::one("schema.$schema", "must be a string")),
    };
    jsonschema::options()
        .with_draft(draft)
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| {
            let at = pointer_to_path("schema", schema, e.instance_path().as_str());
            Problems::one(at, format!("the schema does not compile: {e}"))
        })
}

/// One way an event fails its schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Where in the event (`data.items[2].price`).
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// The JSON Schema keyword that failed (`type`, `required`, ...).
    pub keyword: String,
}

/// Most violations reported for one event (the answer stays bounded).
pub const MAX_VIOLATIONS: usize = 100;
/// Longest message kept per violation (a failed `anyOf` quotes the whole value).
const MAX_MESSAGE: usize = 300;

/// The value a schema checks: the event's `data` (`null` when absent), or
/// `None` when the payload is binary (`data_base64`).
pub fn subject(event: &Event) -> Option<&Value> {
    let map = event.as_map();
    match map.get("data") {
        Some(v) => Some(v),
        None if map.contains_key("data_base64") => None,
        None => Some(&Value::Null),
    }
}

/// Checks an event; every violation (up to [`MAX_VIOLATIONS`]) with its path.
pub fn check(validator: &jsonschema::Validator, event: &Event) -> Vec<Violation> {
    let Some(data) = subject(event) else {
        return vec![Violation {
            path: "data_base64".into(),
            message: "the event's data is binary; its schema describes JSON data".into(),
            keyword: "type".into(),
        }];
    };
    if validator.is_valid(data) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for error in validator.iter_errors(data) {
        if out.len() >= MAX_VIOLATIONS {
            break;
        }
        let keyword = error.kind().keyword().to_owned();
        let path = pointer_to_path("data", data, error.instance_path().as_str());
        let message = truncate(error.to_string());
        match error.kind() {
            jsonschema::error::ValidationErrorKind::Required { property } => {
                let name = property
                    .as_str()
                    .map_or_else(|| property.to_string(), str::to_owned);
                out.push(Violation {
                    path: join_property(&path, &name),
                    message,
                    keyword,
                });
            }
            jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected }
                if !unexpected.is_empty() =>
            {
                for name in unexpected {
                    out.push(Violation {
                        path: join_property(&path, name),
                        message: "additional properties are not allowed here".into(),
                        keyword: keyword.clone(),
                    });
                }
            }
            _ => out.push(Violation {
                path,
                message,
                keyword,
            }),
        }
    }
    out.truncate(MAX_VIOLATIONS);
    out
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Whether `name` can follow a dot in a path (else it is bracketed).
fn plain(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '$')
}

/// `path.name`, or `path["odd name"]`.
fn join_property(path: &str, name: &str) -> String {
    if plain(name) {
        format!("{path}.{name}")
    } else {
        format!("{path}[{}]", Value::String(name.to_owned()))
    }
}

/// Turns a JSON Pointer into `value` (`/items/2/price`) into the bus's path
/// notation under `root` (`data.items[2].price`), reading `value` to tell
/// array indexes from member names that look like numbers.
pub fn pointer_to_path(root: &str, value: &Value, pointer: &str) -> String {
    let mut path = root.to_owned();
    let mut at = Some(value);
    for raw in pointer.split('/').skip(1) {
        let token = raw.replace("~1", "/").replace("~0", "~");
        match at {
            Some(Value::Array(items)) if token.parse::<usize>().is_ok() => {
                let i: usize = token.parse().unwrap_or_default();
                let _ = write!(path, "[{i}]");
                at = items.get(i);
            }
            Some(Value::Object(map)) => {
                path = join_property(&path, &token);
                at = map.get(&token);
            }
            _ => {
                path = join_property(&path, &token);
                at = None;
            }
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: Value) -> Event {
        let Value::Object(map) =
            json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t", "data": data})
        else {
            unreachable!()
        };
        Event::from_validated(map)
    }

    #[test]
    fn every_violation_is_named_by_its_path_into_the_event() {
        let v = compile(&json!({
            "type": "object",
            "required": ["id", "items"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "items": {"type": "array", "items": {
                    "type": "object",
                    "required": ["sku"],
                    "properties": {"price": {"type": "number", "minimum": 0}}
                }},
                "odd key": {"type": "integer"}
            },
            "additionalProperties": false
        }))
        .unwrap();
        let ok = event(json!({"id": "123e4567-e89b-12d3-a456-426614174000", "items": []}));
        assert!(check(&v, &ok).is_empty());
        let bad = event(json!({
            "id": "nope",
            "items": [{"sku": "a", "price": 1}, {"sku": "b", "price": 2}, {"price": "free"}],
            "odd key": 1.5,
            "extra": true
        }));
        let mut got: Vec<(String, String)> = check(&v, &bad)
            .into_iter()
            .map(|v| (v.path, v.keyword))
            .collect();
        got.sort();
        let want: Vec<(String, String)> = [
            ("data.extra", "additionalProperties"),
            ("data.id", "format"),
            ("data.items[2].price", "type"),
            ("data.items[2].sku", "required"),
            ("data[\"odd key\"]", "type"),
        ]
        .iter()
        .map(|(p, k)| ((*p).to_owned(), (*k).to_owned()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn absent_and_binary_data() {
        let v = compile(&json!({"type": "object"})).unwrap();
        let Value::Object(mut map) =
            json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t"})
        else {
            unreachable!()
        };
        let none = check(&v, &Event::from_validated(map.clone()));
        assert_eq!(none[0].path, "data");
        map.insert("data_base64".into(), json!("AAEC"));
        let binary = check(&v, &Event::from_validated(map));
        assert_eq!(binary[0].path, "data_base64");
    }

    #[test]
    fn schemas_that_do_not_compile_say_where() {
        let p = compile(&json!({"properties": {"total": {"type": "decimal"}}})).unwrap_err();
        assert_eq!(
            p.first().unwrap().field,
            "schema.properties.total.type",
            "{p}"
        );
        let p =
            compile(&json!({"$schema": "http://json-schema.org/draft-04/schema#"})).unwrap_err();
        assert_eq!(p.first().unwrap().field, "schema.$schema");
        for draft in [
            "https://json-schema.org/draft/2020-12/schema",
            "https://json-schema.org/draft/2019-09/schema",
            "http://json-schema.org/draft-07/schema#",
        ] {
            compile(&json!({"$schema": draft, "type": "object"})).unwrap();
        }
        // No fetching: a remote reference does not resolve.
        assert!(compile(&json!({"$ref": "https://example.com/s.json"})).is_err());
    }

    #[test]
    fn bodies_are_read_member_by_member() {
        let spec = SchemaSpec::parse(&json!({
            "source": "shop", "type": "order.created", "schema": {"type": "object"}, "mode": "warn"
        }))
        .unwrap();
        assert_eq!(spec.mode, Mode::Warn);
        assert_eq!(SchemaSpec::parse(&spec.to_json()).unwrap(), spec);
        let p = SchemaSpec::parse(&json!({
            "source": "shop", "dataschema": "https://x/y", "schema": [], "mode": "loud", "colour": 1
        }))
        .unwrap_err();
        let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["colour", "dataschema", "schema", "mode"], "{p}");
    }
}
