//! EventBridge input transformers: what a target receives instead of the event.
//!
//! A rule's `transform` is one of three modes, as in EventBridge:
//!
//! - `input`: constant JSON, sent as its JSON text;
//! - `input_path`: one JSONPath into the event, the selected part sent as JSON
//!   (a definite path that matches nothing fails the delivery);
//! - `input_paths_map` + `input_template`: up to 100 variables, each a
//!   JSONPath into the event, written into the template's `<name>`
//!   placeholders.
//!
//! A template starting with `{` or `[` is JSON: it is sent minified, and a
//! render whose output is not valid JSON fails. One starting with `"` is
//! JSON-string text (`"instance <id> is <state>"`); anything else is plain
//! text (`Order <id> shipped`). A value is written according to where its
//! placeholder sits, following EventBridge:
//!
//! | value            | JSON position       | string in a JSON template             | string in a string template | plain text          |
//! |------------------|---------------------|---------------------------------------|-----------------------------|---------------------|
//! | string           | `"quoted"`, escaped | raw, JSON-escaped                     | raw, JSON-escaped           | raw                 |
//! | number/bool/null | JSON                | JSON text                             | JSON text                   | JSON text           |
//! | object/array     | JSON                | JSON text (an error if it holds `"`)  | JSON without quotes         | JSON without quotes |
//! | no match         | `""`                | nothing                               | nothing                     | nothing             |
//!
//! "JSON without quotes" is what EventBridge writes for an object or array in
//! a string template: `{acc_id:0a78,sf_id:baz}`, `[HIGH]`. Inside a string of
//! a JSON template EventBridge inserts the JSON text as it is ("EventBridge
//! doesn't escape values extracted by Input Path", User Guide, Common Issues
//! with Transforming Input), so an object or array holding a string or a key
//! makes the output invalid JSON and the target is not invoked (AWS-recorded:
//! localstack `test_input_transformer_nested_keys_replacement_not_valid`).
//! Busbar does the same but never silently: rendering fails with
//! [`RenderError::StructureInString`] (code `transform_invalid_json`), which
//! names the placeholder and its line and column, and the delivery is
//! dead-lettered with it; an object or array without quotes (`[1,2]`, `{}`)
//! is written as is, as EventBridge does. Strings inside strings are
//! JSON-escaped so the output stays valid (AWS inserts them unescaped). A path that matches nothing gives `""` in a JSON
//! position, as AWS does. Paths use EventBridge's dot notation (`-` and `/`
//! in names) or RFC 9535; a path that is not made of names and indices only
//! (wildcards, slices, filters) gives the list of its matches.
//!
//! Reserved variables need no path: `<busbar.rule-name>`, `<busbar.rule-arn>`,
//! `<busbar.ingestion-time>`, `<busbar.event>` (the event without its
//! payload, as JSON) and `<busbar.event-json>` (the whole event, as JSON),
//! also spelled as EventBridge does: `<aws.events.rule-name>`,
//! `<aws.events.rule-arn>`, `<aws.events.event.ingestion-time>`,
//! `<aws.events.event>` and `<aws.events.event.json>`. The two event
//! variables are JSON values and may not appear inside a string.
//!
//! [`TransformSpec::compile`] validates a spec and compiles its paths and
//! template once; [`Transform::render`] then only walks the event and copies
//! text. The conformance table in `tests/data/transforms/` cites the
//! EventBridge rule behind each case.

mod path;
#[cfg(test)]
mod props;
mod template;

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use self::path::JsonPath;
use self::template::{Resolved, Template, TemplateError, Var};

/// How many variables `input_paths_map` may define (EventBridge's limit).
pub const MAX_VARIABLES: usize = 100;

/// The longest variable name (EventBridge's `InputTransformerPathKey`).
pub const MAX_VARIABLE_NAME_LEN: usize = 256;

/// Reserved placeholder names, Busbar's and EventBridge's spellings.
pub const RESERVED_VARIABLES: [&str; 10] = [
    "busbar.rule-name",
    "busbar.rule-arn",
    "busbar.ingestion-time",
    "busbar.event",
    "busbar.event-json",
    "aws.events.rule-name",
    "aws.events.rule-arn",
    "aws.events.event.ingestion-time",
    "aws.events.event",
    "aws.events.event.json",
];

/// A transform as written in a rule (`transform` field) or sent to the tester.
///
/// Exactly one mode: `input` (constant JSON), `input_path` (select part of the
/// event), or `input_paths_map` + `input_template`.
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TransformSpec {
    /// Variables: name → JSONPath into the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_paths_map: Option<serde_json::Map<String, Value>>,
    /// Template with `<var>` placeholders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_template: Option<String>,
    /// Constant JSON sent instead of the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// JSONPath selecting the part of the event to send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_path: Option<String>,
}

/// Why a transform spec is invalid.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct TransformError {
    /// The offending field, relative to the transform object, e.g.
    /// `input_paths_map.id` or `input_template`.
    pub field: String,
    /// Human-readable reason.
    pub reason: String,
}

/// Why rendering failed for one event (permanent for that delivery).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RenderError {
    /// `input_path` selected nothing.
    #[error("input_path matched nothing in the event")]
    NoMatch,
    /// An object or array inside a string of a JSON template: EventBridge writes its
    /// JSON unescaped there, which makes the output invalid JSON (see the module docs).
    #[error(
        "placeholder {at} holds an {kind} inside a JSON string: EventBridge inserts its JSON \
         unescaped there, so the rendered input is not valid JSON and the target is not \
         invoked; put the placeholder outside the quotes to send the {kind} as JSON"
    )]
    StructureInString {
        /// The placeholder and where it is in the template.
        at: Position,
        /// `"object"` or `"array"`.
        kind: &'static str,
    },
    /// The rendered JSON template is not valid JSON (e.g. `{"a": -<x>}` with a
    /// string), with the parser's reason.
    #[error("the rendered input_template is not valid JSON: {0}")]
    InvalidJson(String),
    /// The output is not UTF-8 (cannot happen: every part is a `&str` or JSON).
    #[error("the rendered input is not UTF-8")]
    NotUtf8,
}

/// A placeholder's place in the template text: its name, line and column (1-based,
/// in characters), for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// The placeholder's name (without `<` `>`).
    pub name: Box<str>,
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "<{}> at line {}, column {} of input_template",
            self.name, self.line, self.column
        )
    }
}

impl RenderError {
    /// The failure code a dead letter or an API error carries: `transform_invalid_json`
    /// when the output would not be valid JSON, `render_error` otherwise.
    pub fn code(&self) -> &'static str {
        match self {
            Self::StructureInString { .. } | Self::InvalidJson(_) => "transform_invalid_json",
            Self::NoMatch | Self::NotUtf8 => "render_error",
        }
    }
}

/// Values for the reserved variables (`<busbar.rule-name>`, ...).
#[derive(Clone, Debug, Default)]
pub struct RenderContext<'a> {
    /// The rule being applied (`<busbar.rule-name>`).
    pub rule_name: &'a str,
    /// When the bus accepted the event, RFC 3339 (`<busbar.ingestion-time>`).
    pub ingestion_time: &'a str,
    /// The rule's full identifier (`<busbar.rule-arn>`, `<aws.events.rule-arn>`).
    pub rule_arn: &'a str,
}

/// The rule context a tester renders with (`busbar transform test`,
/// `POST /v1/transforms/test`): what a rule would give, so templates using
/// `<aws.events.rule-name>`, `<aws.events.rule-arn>` or
/// `<aws.events.event.ingestion-time>` can be tried offline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampleContext {
    /// `<busbar.rule-name>`; default `test-rule`.
    pub rule_name: String,
    /// `<busbar.rule-arn>`; default `busbar:rule/test/default/<rule_name>`.
    pub rule_arn: String,
    /// `<busbar.ingestion-time>`, RFC 3339; default: now.
    pub ingestion_time: String,
}

impl SampleContext {
    /// Fills in the defaults; `ingestion_time` must be an RFC 3339 timestamp, as the
    /// bus would give (the error names the field).
    pub fn new(
        rule_name: Option<String>,
        rule_arn: Option<String>,
        ingestion_time: Option<String>,
        now: impl FnOnce() -> String,
    ) -> Result<Self, TransformError> {
        let rule_name = rule_name.unwrap_or_else(|| "test-rule".to_owned());
        let rule_arn = rule_arn.unwrap_or_else(|| format!("busbar:rule/test/default/{rule_name}"));
        let ingestion_time = match ingestion_time {
            Some(time) => {
                if chrono::DateTime::parse_from_rfc3339(&time).is_err() {
                    return Err(TransformError {
                        field: "ingestion_time".into(),
                        reason: "must be an RFC 3339 timestamp such as 2026-01-02T03:04:05Z".into(),
                    });
                }
                time
            }
            None => now(),
        };
        Ok(Self {
            rule_name,
            rule_arn,
            ingestion_time,
        })
    }

    /// Reads the context members out of a tester's JSON object (removing them, so
    /// what remains is the transform); each must be a string.
    pub fn take_from(
        object: &mut serde_json::Map<String, Value>,
        now: impl FnOnce() -> String,
    ) -> Result<Self, TransformError> {
        let mut take = |name: &str| match object.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(TransformError {
                field: name.into(),
                reason: "must be a string".into(),
            }),
        };
        let rule_name = take("rule_name")?;
        let rule_arn = take("rule_arn")?;
        let ingestion_time = take("ingestion_time")?;
        Self::new(rule_name, rule_arn, ingestion_time, now)
    }

    /// The context to render with.
    pub fn render_context(&self) -> RenderContext<'_> {
        RenderContext {
            rule_name: &self.rule_name,
            rule_arn: &self.rule_arn,
            ingestion_time: &self.ingestion_time,
        }
    }
}

/// A compiled transform, ready to render events.
///
/// Cheap to share: it holds only compiled paths and template text.
#[derive(Clone, Debug)]
pub struct Transform {
    mode: Mode,
}

#[derive(Clone, Debug)]
enum Mode {
    /// `input`: the JSON text, computed once.
    Constant(String),
    /// `input_path`.
    Path(JsonPath),
    /// `input_paths_map` + `input_template`; `paths[i]` is `Var::User(i)`,
    /// holding only the variables the template uses.
    Template {
        paths: Vec<JsonPath>,
        template: Template,
    },
}

impl TransformSpec {
    /// Validates and compiles the spec, reporting the first problem.
    pub fn compile(&self) -> Result<Transform, TransformError> {
        let mut problems = Problems::default();
        let compiled = self.build(&mut problems);
        match (problems.0.into_iter().next(), compiled) {
            (None, Some(mode)) => Ok(Transform { mode }),
            (Some(first), _) => Err(first),
            (None, None) => Err(TransformError {
                field: "input_template".into(),
                reason: "could not be compiled".into(),
            }),
        }
    }

    /// Every problem with the spec, in field order; empty when it compiles.
    pub fn validate(&self) -> Vec<TransformError> {
        let mut problems = Problems::default();
        self.build(&mut problems);
        problems.0
    }

    fn build(&self, problems: &mut Problems) -> Option<Mode> {
        let transformer = self.input_paths_map.is_some() || self.input_template.is_some();
        if self.input.is_some() && (self.input_path.is_some() || transformer) {
            problems.add(
                "input",
                "only one of input, input_path, or input_paths_map + input_template may be set",
            );
        }
        if self.input_path.is_some() && transformer {
            problems.add(
                "input_path",
                "only one of input, input_path, or input_paths_map + input_template may be set",
            );
        }

        if let Some(input) = &self.input {
            return Some(Mode::Constant(input.to_string()));
        }
        if let Some(input_path) = &self.input_path {
            return match JsonPath::compile(input_path) {
                Ok(path) => Some(Mode::Path(path)),
                Err(reason) => {
                    problems.add("input_path", reason);
                    None
                }
            };
        }

        let paths = self.compile_paths(problems);
        let Some(text) = &self.input_template else {
            let reason = if self.input_paths_map.is_some() {
                "is required when input_paths_map is set"
            } else {
                "a transform needs input, input_path, or input_paths_map + input_template"
            };
            problems.add("input_template", reason);
            return None;
        };

        let mut used: Vec<Option<JsonPath>> = Vec::new();
        let mut used_names: Vec<&str> = Vec::new();
        let compiled = Template::compile(text, |name| {
            if let Some(var) = reserved(name) {
                return Some(var);
            }
            if let Some(at) = used_names.iter().position(|n| *n == name) {
                return Some(Var::User(at));
            }
            let (defined, path) = paths.iter().find(|(n, _)| *n == name)?;
            used_names.push(defined);
            // A path that did not compile is already reported; keep checking
            // the template as if it had.
            used.push(path.clone());
            Some(Var::User(used.len() - 1))
        });
        match compiled {
            Ok(template) => Some(Mode::Template {
                paths: used.into_iter().collect::<Option<Vec<_>>>()?,
                template,
            }),
            Err(TemplateError::Invalid(reason)) => {
                problems.add("input_template", reason);
                None
            }
            Err(TemplateError::Undefined(names)) => {
                let listed = names
                    .iter()
                    .map(|n| format!("<{n}>"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let noun = if names.len() == 1 {
                    "placeholder"
                } else {
                    "placeholders"
                };
                let why = if self.input_paths_map.is_some() {
                    "not defined in input_paths_map"
                } else {
                    "input_paths_map is not set"
                };
                problems.add(
                    "input_template",
                    format!("contains invalid {noun} {listed}: {why}"),
                );
                None
            }
        }
    }

    /// Checks and compiles `input_paths_map`; a failed path is `None`.
    fn compile_paths<'s>(&'s self, problems: &mut Problems) -> Vec<(&'s str, Option<JsonPath>)> {
        let Some(map) = &self.input_paths_map else {
            return Vec::new();
        };
        if map.len() > MAX_VARIABLES {
            problems.add(
                "input_paths_map",
                format!(
                    "defines {} variables; at most {MAX_VARIABLES} are allowed",
                    map.len()
                ),
            );
        }
        map.iter()
            .map(|(name, value)| {
                let field = format!("input_paths_map.{name}");
                if let Err(reason) = check_variable_name(name) {
                    problems.add(&field, reason);
                }
                let path = match value {
                    Value::String(text) => match JsonPath::compile(text) {
                        Ok(path) => Some(path),
                        Err(reason) => {
                            problems.add(&field, reason);
                            None
                        }
                    },
                    _ => {
                        problems.add(&field, "must be a JSONPath string such as \"$.data.id\"");
                        None
                    }
                };
                (name.as_str(), path)
            })
            .collect()
    }
}

impl Transform {
    /// Renders the target input for one event.
    pub fn render(&self, event: &Value, ctx: &RenderContext<'_>) -> Result<String, RenderError> {
        match &self.mode {
            Mode::Constant(text) => Ok(text.clone()),
            Mode::Path(path) => match path.select(event) {
                Some(value) => Ok(value.to_string()),
                None => Err(RenderError::NoMatch),
            },
            Mode::Template { paths, template } => {
                let values: Vec<Option<Cow<'_, Value>>> =
                    paths.iter().map(|p| p.select(event)).collect();
                let out = template.render(|var| match var {
                    Var::User(at) => match values.get(at) {
                        Some(Some(value)) => Resolved::Json(value.as_ref()),
                        _ => Resolved::Missing,
                    },
                    Var::RuleName => Resolved::Str(ctx.rule_name),
                    Var::RuleArn => Resolved::Str(ctx.rule_arn),
                    Var::IngestionTime => Resolved::Str(ctx.ingestion_time),
                    Var::Event => Resolved::EventSummary(event),
                    Var::EventJson => Resolved::WholeEvent(event),
                })?;
                if template.checks_output()
                    && let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&out)
                {
                    return Err(RenderError::InvalidJson(e.to_string()));
                }
                // Every part is a `&str` or serde_json output, so this holds.
                String::from_utf8(out).map_err(|_| RenderError::NotUtf8)
            }
        }
    }

    /// Whether the rendered output is JSON (`input`, `input_path`, and
    /// templates starting with `{` or `[`); otherwise it is text.
    pub fn output_is_json(&self) -> bool {
        match &self.mode {
            Mode::Constant(_) | Mode::Path(_) => true,
            Mode::Template { template, .. } => template.is_json(),
        }
    }
}

/// The reserved variable `name` stands for, if any.
fn reserved(name: &str) -> Option<Var> {
    Some(match name {
        "busbar.rule-name" | "aws.events.rule-name" => Var::RuleName,
        "busbar.rule-arn" | "aws.events.rule-arn" => Var::RuleArn,
        "busbar.ingestion-time" | "aws.events.event.ingestion-time" => Var::IngestionTime,
        "busbar.event" | "aws.events.event" => Var::Event,
        "busbar.event-json" | "aws.events.event.json" => Var::EventJson,
        _ => return None,
    })
}

/// Variable names: 1 to 256 of `A-Z a-z 0-9 _ -` (EventBridge's pattern), and
/// never a reserved name.
fn check_variable_name(name: &str) -> Result<(), String> {
    let lower = name.to_ascii_lowercase();
    if RESERVED_VARIABLES.contains(&name)
        || lower.starts_with("aws.")
        || lower.starts_with("busbar.")
    {
        return Err(format!("`{name}` is a reserved variable name"));
    }
    if name.is_empty() {
        return Err("variable names must not be empty".into());
    }
    if name.len() > MAX_VARIABLE_NAME_LEN {
        return Err(format!(
            "variable names are at most {MAX_VARIABLE_NAME_LEN} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "`{name}` is not a valid variable name: use only letters, digits, `_` and `-`"
        ));
    }
    Ok(())
}

/// Problems found while compiling, in the order found.
#[derive(Default)]
struct Problems(Vec<TransformError>);

impl Problems {
    fn add(&mut self, field: &str, reason: impl Into<String>) {
        self.0.push(TransformError {
            field: field.to_owned(),
            reason: reason.into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CTX: RenderContext<'static> = RenderContext {
        rule_name: "example",
        ingestion_time: "2015-11-11T21:29:54Z",
        rule_arn: "arn:aws:events:us-east-2:123456789012:rule/example",
    };

    fn spec(value: Value) -> TransformSpec {
        serde_json::from_value(value).unwrap()
    }

    fn render(spec_json: Value, event: Value) -> Result<String, RenderError> {
        spec(spec_json).compile().unwrap().render(&event, &CTX)
    }

    fn compile_err(spec_json: Value) -> TransformError {
        spec(spec_json).compile().unwrap_err()
    }

    #[test]
    fn renders_each_mode() {
        let event = json!({"id": "1", "data": {"n": 5, "s": "x"}});
        assert_eq!(
            render(json!({"input": {"a": [1]}}), event.clone()).unwrap(),
            r#"{"a":[1]}"#
        );
        assert_eq!(
            render(json!({"input_path": "$.data"}), event.clone()).unwrap(),
            r#"{"n":5,"s":"x"}"#
        );
        let t = json!({"input_paths_map": {"n": "$.data.n", "s": "$.data.s"},
                       "input_template": "{\"n\": <n>, \"m\": \"<s>-<n>\"}"});
        assert_eq!(render(t, event).unwrap(), r#"{"n":5,"m":"x-5"}"#);
    }

    #[test]
    fn reserved_variables_need_no_map() {
        let event = json!({"id": "1", "type": "t", "data": {"big": true}});
        let out = render(
            json!({"input_template": "{\"r\": <busbar.rule-name>, \"a\": <aws.events.rule-arn>, \"t\": \"at <busbar.ingestion-time>\", \"e\": <busbar.event>, \"j\": <aws.events.event.json>}"}),
            event,
        )
        .unwrap();
        assert_eq!(
            out,
            r#"{"r":"example","a":"arn:aws:events:us-east-2:123456789012:rule/example","t":"at 2015-11-11T21:29:54Z","e":{"id":"1","type":"t"},"j":{"id":"1","type":"t","data":{"big":true}}}"#
        );
    }

    #[test]
    fn unused_variables_are_validated_but_not_evaluated() {
        let t = spec(json!({"input_paths_map": {"a": "$.a", "b": "$.b"}, "input_template": "<a>"}))
            .compile()
            .unwrap();
        let Mode::Template { paths, .. } = &t.mode else {
            panic!()
        };
        assert_eq!(paths.len(), 1);
        let e = compile_err(
            json!({"input_paths_map": {"a": "$.a", "b": "$["}, "input_template": "<a>"}),
        );
        assert_eq!(e.field, "input_paths_map.b");
    }

    #[test]
    fn validation_reports_fields() {
        let cases = [
            (json!({}), "input_template", "needs input"),
            (
                json!({"input": 1, "input_path": "$"}),
                "input",
                "only one of",
            ),
            (
                json!({"input_path": "$", "input_template": "x"}),
                "input_path",
                "only one of",
            ),
            (
                json!({"input_paths_map": {"a": "$.a"}}),
                "input_template",
                "required",
            ),
            (
                json!({"input_template": "<a>"}),
                "input_template",
                "input_paths_map is not set",
            ),
            (
                json!({"input_paths_map": {"a": "$.a"}, "input_template": "<b>"}),
                "input_template",
                "invalid placeholder <b>",
            ),
            (
                json!({"input_paths_map": {"a": "$..["}, "input_template": "<a>"}),
                "input_paths_map.a",
                "invalid JSONPath",
            ),
            (
                json!({"input_paths_map": {"a": 1}, "input_template": "<a>"}),
                "input_paths_map.a",
                "JSONPath string",
            ),
            (
                json!({"input_paths_map": {"a b": "$"}, "input_template": "x"}),
                "input_paths_map.a b",
                "not a valid variable name",
            ),
            (
                json!({"input_paths_map": {"aws.events.event": "$"}, "input_template": "x"}),
                "input_paths_map.aws.events.event",
                "reserved",
            ),
            (
                json!({"input_path": "$.a["}),
                "input_path",
                "invalid JSONPath",
            ),
        ];
        for (spec_json, field, reason) in cases {
            let e = compile_err(spec_json.clone());
            assert_eq!(e.field, field, "{spec_json}");
            assert!(e.reason.contains(reason), "{spec_json}: {e}");
        }
        let many: serde_json::Map<String, Value> = (0..=MAX_VARIABLES)
            .map(|i| (format!("v{i}"), json!("$.a")))
            .collect();
        let e = compile_err(json!({"input_paths_map": many, "input_template": "x"}));
        assert_eq!(e.field, "input_paths_map");
    }

    #[test]
    fn validate_lists_every_problem() {
        let problems = spec(json!({"input_paths_map": {"a": "$[", "b!": "$"}, "input_template": "<c>", "input_path": "$"})).validate();
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["input_path"]);
        let problems =
            spec(json!({"input_paths_map": {"a": "$[", "b!": "$"}, "input_template": "<c>"}))
                .validate();
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["input_paths_map.a", "input_paths_map.b!", "input_template"]
        );
    }

    #[test]
    fn input_path_that_matches_nothing_fails_the_render() {
        let err = render(json!({"input_path": "$.nope"}), json!({})).unwrap_err();
        assert!(err.to_string().contains("matched nothing"));
        assert_eq!(err.code(), "render_error");
    }

    #[test]
    fn invalid_json_output_fails_the_render() {
        let t = json!({"input_paths_map": {"n": "$.n"}, "input_template": "{\"a\": -<n>}"});
        assert_eq!(render(t.clone(), json!({"n": 5})).unwrap(), r#"{"a":-5}"#);
        let err = render(t, json!({"n": "x"})).unwrap_err();
        assert!(err.to_string().contains("not valid JSON"), "{err}");
        assert_eq!(err.code(), "transform_invalid_json");
    }

    #[test]
    fn output_kind() {
        let json_kind = |v: Value| spec(v).compile().unwrap().output_is_json();
        assert!(json_kind(json!({"input": "x"})));
        assert!(json_kind(json!({"input_template": "[1]"})));
        assert!(!json_kind(json!({"input_template": "text"})));
    }

    #[test]
    fn sample_contexts_default_and_check() {
        let now = || "2026-01-01T00:00:00Z".to_owned();
        let mut object = serde_json::Map::new();
        let ctx = SampleContext::take_from(&mut object, now).unwrap();
        assert_eq!(ctx.rule_name, "test-rule");
        assert_eq!(ctx.rule_arn, "busbar:rule/test/default/test-rule");
        assert_eq!(ctx.ingestion_time, "2026-01-01T00:00:00Z");
        let Value::Object(mut object) =
            json!({"rule_name": "r", "ingestion_time": "2015-11-11T21:29:54Z", "input": 1})
        else {
            panic!()
        };
        let ctx = SampleContext::take_from(&mut object, now).unwrap();
        assert_eq!(
            (
                ctx.rule_name.as_str(),
                ctx.rule_arn.as_str(),
                ctx.ingestion_time.as_str()
            ),
            ("r", "busbar:rule/test/default/r", "2015-11-11T21:29:54Z")
        );
        assert_eq!(object.keys().collect::<Vec<_>>(), ["input"]);
        let Value::Object(mut bad) = json!({"ingestion_time": "yesterday"}) else {
            panic!()
        };
        assert_eq!(
            SampleContext::take_from(&mut bad, now).unwrap_err().field,
            "ingestion_time"
        );
        let Value::Object(mut bad) = json!({"rule_arn": 1}) else {
            panic!()
        };
        assert_eq!(
            SampleContext::take_from(&mut bad, now).unwrap_err().field,
            "rule_arn"
        );
    }

    #[test]
    fn transforms_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Transform>();
    }
}
