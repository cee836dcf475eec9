//! Input templates, compiled once into literal text and placeholder slots.
//!
//! Each slot records the *context* its placeholder sits in (a JSON value
//! position, a string of a JSON template, a string of a string template, or
//! plain text), which decides how a value is written there; the rules are
//! tabled in the [parent module](super).
//!
//! A template whose first non-blank character is `{` or `[` is a JSON
//! template: its literal parts are minified at compile time, and its shape is
//! checked once with the placeholders filled in. One starting with `"` is
//! JSON-string text (quotes tracked, nothing minified); anything else is plain
//! text, written as is.

use std::borrow::Cow;

use serde_json::Value;

use super::{Position, RenderError};

/// The longest template EventBridge accepts (`InputTemplate`: 8192 characters).
pub(crate) const MAX_TEMPLATE_LEN: usize = 8192;

/// Where a placeholder sits, which decides how its value is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Context {
    /// A JSON value position in a JSON template: `{"a": <x>}`.
    Json,
    /// Inside a string literal of a JSON template: `{"a": "id <x>"}`.
    InString,
    /// Inside a string literal of a string template: `"id <x>"`.
    InTextString,
    /// Plain text outside any JSON string.
    Text,
}

/// What a placeholder stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Var {
    /// A user variable: index into the transform's compiled paths.
    User(usize),
    /// `<busbar.rule-name>` / `<aws.events.rule-name>`.
    RuleName,
    /// `<busbar.rule-arn>` / `<aws.events.rule-arn>`.
    RuleArn,
    /// `<busbar.ingestion-time>` / `<aws.events.event.ingestion-time>`.
    IngestionTime,
    /// `<busbar.event>` / `<aws.events.event>`: the event without its payload.
    Event,
    /// `<busbar.event-json>` / `<aws.events.event.json>`: the whole event.
    EventJson,
}

#[derive(Clone, Debug)]
enum Part {
    Literal(String),
    Slot {
        var: Var,
        context: Context,
        /// Where the placeholder is, for error messages.
        at: Position,
    },
}

/// A value ready to be written into a slot.
pub(crate) enum Resolved<'a> {
    /// A JSON value selected from the event.
    Json(&'a Value),
    /// A string from the render context (rule name, ...).
    Str(&'a str),
    /// The event without `data`/`data_base64`/`detail` (`<busbar.event>`),
    /// always written as JSON.
    EventSummary(&'a Value),
    /// The whole event (`<busbar.event-json>`), always written as JSON.
    WholeEvent(&'a Value),
    /// The path matched nothing.
    Missing,
}

/// A compiled template.
#[derive(Clone, Debug)]
pub(crate) struct Template {
    parts: Vec<Part>,
    /// Whether rendered output must be checked for JSON validity: only for
    /// JSON templates where a value placeholder is not a whole JSON value
    /// (`{"a": -<x>}`); everywhere else the output is valid by construction.
    check_json: bool,
    is_json: bool,
    literal_len: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Json,
    QuotedText,
    PlainText,
}

/// Why a template does not compile.
#[derive(Debug, PartialEq)]
pub(crate) enum TemplateError {
    /// Placeholders that name no variable, in order of first use.
    Undefined(Vec<String>),
    /// Anything else, as a one-line reason.
    Invalid(String),
}

impl From<String> for TemplateError {
    fn from(reason: String) -> Self {
        Self::Invalid(reason)
    }
}

struct Frame {
    object: bool,
    expect_key: bool,
}

impl Template {
    /// Compiles `text`; `resolve` maps a placeholder name to its variable.
    pub(crate) fn compile(
        text: &str,
        mut resolve: impl FnMut(&str) -> Option<Var>,
    ) -> Result<Self, TemplateError> {
        if text.is_empty() {
            return Err(TemplateError::Invalid("must not be empty".into()));
        }
        if text.chars().count() > MAX_TEMPLATE_LEN {
            return Err(format!("is longer than {MAX_TEMPLATE_LEN} characters").into());
        }
        let kind = match text.trim_start().chars().next() {
            Some('{' | '[') => Kind::Json,
            Some('"') => Kind::QuotedText,
            _ => Kind::PlainText,
        };

        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut undefined: Vec<&str> = Vec::new();
        let mut in_string = false;
        let mut escaped = false;
        let mut string_is_key = false;
        let mut stack: Vec<Frame> = Vec::new();
        // Line and column of byte `counted`, advanced lazily to each placeholder.
        let (mut line, mut column, mut counted) = (1, 1, 0);

        let mut i = 0;
        while i < text.len() {
            let rest = &text[i..];
            if let Some(name) = placeholder_at(rest) {
                for c in text.get(counted..i).unwrap_or_default().chars() {
                    if c == '\n' {
                        line += 1;
                        column = 1;
                    } else {
                        column += 1;
                    }
                }
                counted = i;
                let at = Position {
                    name: name.into(),
                    line,
                    column,
                };
                let context = match (kind, in_string) {
                    (Kind::PlainText, _) => Context::Text,
                    (Kind::Json, true) => Context::InString,
                    (Kind::QuotedText, true) => Context::InTextString,
                    (Kind::Json, false) => Context::Json,
                    (Kind::QuotedText, false) => Context::Text,
                };
                let key_position = kind == Kind::Json
                    && if in_string {
                        string_is_key
                    } else {
                        stack.last().is_some_and(|f| f.object && f.expect_key)
                    };
                if key_position {
                    return Err(
                        format!("placeholder <{name}> cannot be used as an object key").into(),
                    );
                }
                match resolve(name) {
                    Some(Var::Event | Var::EventJson)
                        if matches!(context, Context::InString | Context::InTextString) =>
                    {
                        return Err(format!(
                            "<{name}> can only be used as a JSON value, not inside a string"
                        )
                        .into());
                    }
                    Some(var) => {
                        if !literal.is_empty() {
                            parts.push(Part::Literal(std::mem::take(&mut literal)));
                        }
                        parts.push(Part::Slot { var, context, at });
                    }
                    None => {
                        if !undefined.contains(&name) {
                            undefined.push(name);
                        }
                    }
                }
                i += name.len() + 2;
                continue;
            }

            let Some(c) = rest.chars().next() else { break };
            i += c.len_utf8();
            if kind == Kind::PlainText {
                literal.push(c);
                continue;
            }
            if in_string {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                }
                literal.push(c);
                continue;
            }
            if c == '"' {
                in_string = true;
                string_is_key = stack.last().is_some_and(|f| f.object && f.expect_key);
            } else if kind == Kind::Json {
                match c {
                    '{' => stack.push(Frame {
                        object: true,
                        expect_key: true,
                    }),
                    '[' => stack.push(Frame {
                        object: false,
                        expect_key: false,
                    }),
                    '}' | ']' => {
                        stack.pop();
                    }
                    ':' => {
                        if let Some(frame) = stack.last_mut() {
                            frame.expect_key = false;
                        }
                    }
                    ',' => {
                        if let Some(frame) = stack.last_mut() {
                            frame.expect_key = frame.object;
                        }
                    }
                    // JSON is minified: blanks outside strings carry nothing.
                    ' ' | '\t' | '\n' | '\r' => continue,
                    _ => {}
                }
            }
            literal.push(c);
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if !undefined.is_empty() {
            return Err(TemplateError::Undefined(
                undefined.into_iter().map(str::to_owned).collect(),
            ));
        }

        let literal_len = parts
            .iter()
            .map(|p| match p {
                Part::Literal(s) => s.len(),
                Part::Slot { .. } => 0,
            })
            .sum();
        let mut template = Self {
            parts,
            check_json: false,
            is_json: kind == Kind::Json,
            literal_len,
        };
        if kind == Kind::Json {
            template.check_shape()?;
        }
        Ok(template)
    }

    /// Whether the template is a JSON template (output is JSON).
    pub(crate) fn is_json(&self) -> bool {
        self.is_json
    }

    /// Whether rendered output is checked for JSON validity.
    pub(crate) fn checks_output(&self) -> bool {
        self.check_json
    }

    /// Checks a JSON template once with every value placeholder filled, and
    /// decides whether rendered output needs checking at all.
    fn check_shape(&mut self) -> Result<(), TemplateError> {
        let mut probe = String::with_capacity(self.literal_len + 8);
        let mut every_value_whole = true;
        for (at, part) in self.parts.iter().enumerate() {
            match part {
                Part::Literal(text) => probe.push_str(text),
                Part::Slot {
                    context: Context::Json,
                    ..
                } => {
                    probe.push('0');
                    let before = at.checked_sub(1).and_then(|b| self.parts.get(b));
                    let after = self.parts.get(at + 1);
                    let whole = matches!(before, Some(Part::Literal(t)) if t.ends_with([':', '[', ',']))
                        && matches!(after, Some(Part::Literal(t)) if t.starts_with([',', '}', ']']));
                    every_value_whole &= whole;
                }
                Part::Slot { .. } => {}
            }
        }
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&probe) {
            return Err(format!("is not valid JSON once its placeholders are filled: {e}").into());
        }
        self.check_json = !every_value_whole;
        Ok(())
    }

    /// Writes the template with `value(var)` in each slot; fails where EventBridge's
    /// output would not be valid JSON (see [`write_slot`]).
    pub(crate) fn render<'a>(
        &self,
        mut value: impl FnMut(Var) -> Resolved<'a>,
    ) -> Result<Vec<u8>, RenderError> {
        let mut out = Vec::with_capacity(self.literal_len + 24 * self.parts.len());
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.extend_from_slice(text.as_bytes()),
                Part::Slot { var, context, at } => {
                    write_slot(&mut out, value(*var), *context).map_err(|kind| {
                        RenderError::StructureInString {
                            at: at.clone(),
                            kind,
                        }
                    })?;
                }
            }
        }
        Ok(out)
    }
}

/// The placeholder name if `rest` starts with `<name>`. Names are what
/// variable names may be, plus `.` for the reserved ones; anything else
/// (`a < b`, `<br />`) is literal text.
fn placeholder_at(rest: &str) -> Option<&str> {
    let inner = rest.strip_prefix('<')?;
    let len = inner
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        .count();
    (len > 0 && inner.as_bytes().get(len) == Some(&b'>')).then(|| &inner[..len])
}

/// Writes one value. An object or array inside a string of a JSON template is written
/// as EventBridge does, its JSON text unescaped; when that text holds a quote (a string
/// or a key), the output is not valid JSON — EventBridge then does not invoke the
/// target — and this returns what the value is (`"object"` or `"array"`) instead.
fn write_slot(
    out: &mut Vec<u8>,
    value: Resolved<'_>,
    context: Context,
) -> Result<(), &'static str> {
    use Context::{InString, InTextString, Json, Text};
    match (value, context) {
        (Resolved::Missing, Json) => out.extend_from_slice(b"\"\""),
        (Resolved::Missing, _) => {}
        (Resolved::Str(s), Json) => {
            out.push(b'"');
            escape_into(out, s);
            out.push(b'"');
        }
        (Resolved::Str(s), InString | InTextString) => escape_into(out, s),
        (Resolved::Str(s), Text) => out.extend_from_slice(s.as_bytes()),
        (Resolved::EventSummary(event), _) => write_event_summary(out, event),
        (Resolved::WholeEvent(event), _) => write_json(out, event),
        (Resolved::Json(v), Json) => write_json(out, v),
        (Resolved::Json(Value::String(s)), InString | InTextString) => escape_into(out, s),
        (Resolved::Json(Value::String(s)), Text) => out.extend_from_slice(s.as_bytes()),
        (Resolved::Json(v @ (Value::Object(_) | Value::Array(_))), InString) => {
            let text = v.to_string();
            if text.contains('"') {
                return Err(if v.is_object() { "object" } else { "array" });
            }
            // `[1,null]`, `{}`: nothing to escape, the same text either way.
            out.extend_from_slice(text.as_bytes());
        }
        (Resolved::Json(v @ (Value::Object(_) | Value::Array(_))), InTextString) => {
            let mut text = String::new();
            write_unquoted(&mut text, v);
            escape_into(out, &text);
        }
        (Resolved::Json(v @ (Value::Object(_) | Value::Array(_))), Text) => {
            let mut text = String::new();
            write_unquoted(&mut text, v);
            out.extend_from_slice(text.as_bytes());
        }
        // Numbers, booleans and null read the same everywhere.
        (Resolved::Json(v), _) => write_json(out, v),
    }
    Ok(())
}

fn write_json(out: &mut Vec<u8>, value: &Value) {
    // Serialising a `Value` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// Members of the event left out of `<busbar.event>`: the payload.
const PAYLOAD_KEYS: [&str; 3] = ["data", "data_base64", "detail"];

/// `<busbar.event>`: the event's JSON without its payload, like EventBridge's
/// `<aws.events.event>` (which drops `detail` and names `detail-type`
/// `detailType`).
fn write_event_summary(out: &mut Vec<u8>, event: &Value) {
    let Value::Object(map) = event else {
        return write_json(out, event);
    };
    out.push(b'{');
    let mut first = true;
    for (key, value) in map {
        if PAYLOAD_KEYS.contains(&key.as_str()) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        let key = if key == "detail-type" {
            "detailType"
        } else {
            key
        };
        out.push(b'"');
        escape_into(out, key);
        out.extend_from_slice(b"\":");
        write_json(out, value);
    }
    out.push(b'}');
}

/// EventBridge's form of an object or array referenced inside a string: its
/// minified JSON with the quotes removed, e.g. `{acc_id:0a78,sf_id:baz}`.
fn write_unquoted(out: &mut String, value: &Value) {
    match value {
        Value::String(s) => out.push_str(s),
        Value::Array(items) => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_unquoted(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (n, (key, item)) in map.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                out.push_str(key);
                out.push(':');
                write_unquoted(out, item);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Appends `s` escaped for the inside of a JSON string.
pub(crate) fn escape_into(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: Cow<'static, [u8]> = match b {
            b'"' => Cow::Borrowed(b"\\\""),
            b'\\' => Cow::Borrowed(b"\\\\"),
            b'\n' => Cow::Borrowed(b"\\n"),
            b'\r' => Cow::Borrowed(b"\\r"),
            b'\t' => Cow::Borrowed(b"\\t"),
            0x08 => Cow::Borrowed(b"\\b"),
            0x0c => Cow::Borrowed(b"\\f"),
            0x00..=0x1f => Cow::Owned(format!("\\u{b:04x}").into_bytes()),
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(&escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(name: &str) -> Option<Var> {
        match name {
            "a" => Some(Var::User(0)),
            "b" => Some(Var::User(1)),
            "aws.events.event" => Some(Var::Event),
            "aws.events.rule-name" => Some(Var::RuleName),
            _ => None,
        }
    }

    fn render(template: &str, a: &Value) -> String {
        try_render(template, a).unwrap()
    }

    fn try_render(template: &str, a: &Value) -> Result<String, RenderError> {
        let t = Template::compile(template, vars).unwrap();
        let out = t.render(|var| match var {
            Var::User(0) => Resolved::Json(a),
            Var::RuleName => Resolved::Str("rule"),
            _ => Resolved::Missing,
        })?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn contexts_follow_the_quotes() {
        assert_eq!(
            render(r#"{"x": <a>, "y": "id <a>"}"#, &json!("q\"")),
            r#"{"x":"q\"","y":"id q\""}"#
        );
        assert_eq!(render(r#""id <a>""#, &json!({"k": "v"})), r#""id {k:v}""#);
        assert_eq!(render("id <a>!", &json!("q\"")), "id q\"!");
        assert_eq!(render(r#"{"x": [<a>, <b>]}"#, &json!(1)), r#"{"x":[1,""]}"#);
        assert_eq!(render(r#"{"x": "<b>"}"#, &json!(1)), r#"{"x":""}"#);
        assert_eq!(render("<a>", &json!({"k": ["v"]})), "{k:[v]}");
        assert_eq!(render(r#""a\"<a>\"""#, &json!(true)), r#""a\"true\"""#);
    }

    #[test]
    fn structures_inside_json_strings_are_written_raw_or_refused() {
        // Issue 9 §3: EventBridge inserts the JSON unescaped; with quotes in it the
        // output is not JSON and the target is not invoked, so rendering fails.
        let err = try_render("{\n  \"x\": \"id <a>\"}", &json!({"k": ["v"]})).unwrap_err();
        assert_eq!(err.code(), "transform_invalid_json");
        let RenderError::StructureInString { at, kind } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(
            (at.name.as_ref(), at.line, at.column, *kind),
            ("a", 2, 12, "object")
        );
        assert!(
            err.to_string().contains("<a> at line 2, column 12"),
            "{err}"
        );
        let err = try_render(r#"["<a>"]"#, &json!(["v"])).unwrap_err();
        assert!(err.to_string().contains("array"), "{err}");
        // Without quotes the raw text is valid JSON, and the same as escaped text.
        assert_eq!(
            render(r#"{"x": "<a>"}"#, &json!([1, null])),
            r#"{"x":"[1,null]"}"#
        );
        assert_eq!(render(r#"{"x": "<a>"}"#, &json!({})), r#"{"x":"{}"}"#);
    }

    #[test]
    fn literals_of_json_templates_are_minified_but_strings_kept() {
        assert_eq!(
            render("{ \"a b\" :\n [ 1 , <a> ] }", &json!(2)),
            r#"{"a b":[1,2]}"#
        );
        assert_eq!(render("  \"a  b\"  ", &json!(2)), "  \"a  b\"  ");
    }

    #[test]
    fn placeholder_syntax_is_strict() {
        assert_eq!(placeholder_at("<a-b.c_1>x"), Some("a-b.c_1"));
        assert_eq!(placeholder_at("< a>"), None);
        assert_eq!(placeholder_at("<>"), None);
        assert_eq!(placeholder_at("<br />"), None);
        assert_eq!(render("a < b <a>", &json!(1)), "a < b 1");
    }

    #[test]
    fn compile_errors() {
        let err = |t: &str| match Template::compile(t, vars).unwrap_err() {
            TemplateError::Invalid(reason) => reason,
            TemplateError::Undefined(names) => names.join(","),
        };
        assert!(err("").contains("empty"));
        assert_eq!(err("<a> <zz> <zz> <yy>"), "zz,yy");
        assert!(err(r#"{<a>: 1}"#).contains("object key"));
        assert!(err(r#"{"<a>": 1}"#).contains("object key"));
        assert!(err(r#"{"a": 1"#).contains("not valid JSON"));
        assert!(err(r#"{"a": "<aws.events.event>"}"#).contains("JSON value"));
        assert!(err(&"x".repeat(MAX_TEMPLATE_LEN + 1)).contains("8192"));
    }

    #[test]
    fn output_checks_only_where_needed() {
        let check = |t: &str| Template::compile(t, vars).unwrap().checks_output();
        assert!(!check(r#"{"a": <a>, "b": [<a>, <b>], "c": "<a>"}"#));
        assert!(check(r#"{"a": -<a>}"#));
        assert!(!check("<a> <b>"));
    }

    #[test]
    fn escaping_matches_serde_json() {
        let s = "a\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{7f}é🙂";
        let mut out = Vec::new();
        escape_into(&mut out, s);
        let expected = serde_json::to_string(s).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            expected[1..expected.len() - 1]
        );
    }

    #[test]
    fn event_summary_drops_the_payload() {
        let event = json!({"id": "1", "detail-type": "t", "detail": {}, "data": 1, "source": "s"});
        let mut out = Vec::new();
        write_event_summary(&mut out, &event);
        let written: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            written,
            json!({"id": "1", "detailType": "t", "source": "s"})
        );
    }
}
