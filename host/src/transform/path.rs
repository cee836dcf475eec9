//! JSONPath as EventBridge writes it, evaluated with `jsonpath-rust`.
//!
//! EventBridge paths use dot notation with member names that RFC 9535 does
//! not allow in its shorthand (`$.detail-type`, `$.detail.instance-id`,
//! `$.a/b`). [`JsonPath::compile`] rewrites such members into bracket
//! notation before parsing, so both dialects work. A path made only of names
//! and indices is *definite*: it selects at most one value and is walked
//! directly, without the general query engine. Any other path (wildcards,
//! slices, filters, descendants, unions) selects a list, like Jayway JsonPath
//! does for indefinite paths.
//!
//! Busbar events are CloudEvents, so, as in event patterns, a path starting
//! with EventBridge's `$.detail` reads `data` and one starting with
//! `$.detail-type` reads `type` when the event has no such member.

use std::borrow::Cow;

use jsonpath_rust::parser::model::{JpQuery, Segment, Selector};
use jsonpath_rust::parser::parse_json_path;
use jsonpath_rust::query::js_path_process;
use serde_json::Value;

/// The longest path EventBridge accepts (`TargetInputPath`: 256 characters).
pub(crate) const MAX_PATH_LEN: usize = 256;

/// EventBridge top-level members and their CloudEvents names.
const ALIASES: [(&str, &str); 2] = [("detail", "data"), ("detail-type", "type")];

/// A compiled JSONPath.
#[derive(Clone, Debug)]
pub(crate) struct JsonPath {
    plan: Plan,
    /// For a path starting with an EventBridge member (`detail`): that
    /// member, and the plan reading its CloudEvents name (`data`) instead,
    /// used when the event has no such member.
    alias: Option<(&'static str, Plan)>,
}

#[derive(Clone, Debug)]
enum Plan {
    /// Names and indices only: at most one match.
    Definite(Vec<Step>),
    /// Everything else: every match, in document order, as a JSON array.
    Indefinite(JpQuery),
}

#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(i64),
}

impl JsonPath {
    /// Parses `path`; the error is a one-line reason.
    pub(crate) fn compile(path: &str) -> Result<Self, String> {
        if path.chars().count() > MAX_PATH_LEN {
            return Err(format!("JSONPath is longer than {MAX_PATH_LEN} characters"));
        }
        if !path.starts_with('$') {
            return Err(format!("invalid JSONPath `{path}`: it must start with `$`"));
        }
        let normalized = normalize(path);
        let query = parse_json_path(&normalized).map_err(|e| {
            let detail = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            format!("invalid JSONPath `{path}`: {detail}")
        })?;
        let alias = match query.segments.first() {
            Some(Segment::Selector(Selector::Name(first))) => ALIASES
                .iter()
                .find(|(eventbridge, _)| first == eventbridge)
                .map(|(eventbridge, cloudevents)| {
                    let mut aliased = query.clone();
                    aliased.segments[0] = Segment::name(cloudevents);
                    (*eventbridge, Plan::new(aliased))
                }),
            _ => None,
        };
        Ok(Self {
            plan: Plan::new(query),
            alias,
        })
    }

    /// Whether the path selects at most one value (no list is built).
    #[cfg(test)]
    pub(crate) fn is_definite(&self) -> bool {
        matches!(self.plan, Plan::Definite(_))
    }

    /// What the path selects in `event`: `None` when a definite path matches
    /// nothing; an indefinite path always gives an array (maybe empty).
    pub(crate) fn select<'a>(&self, event: &'a Value) -> Option<Cow<'a, Value>> {
        match &self.alias {
            Some((member, aliased)) if event.get(member).is_none() => aliased.select(event),
            _ => self.plan.select(event),
        }
    }
}

impl Plan {
    fn new(query: JpQuery) -> Self {
        match definite_steps(&query) {
            Some(steps) => Plan::Definite(steps),
            None => Plan::Indefinite(query),
        }
    }

    fn select<'a>(&self, event: &'a Value) -> Option<Cow<'a, Value>> {
        match self {
            Plan::Definite(steps) => walk(event, steps).map(Cow::Borrowed),
            Plan::Indefinite(query) => {
                // `js_path_process` only fails when a query yields a computed
                // value instead of references, which a whole path never does;
                // treat it as no match rather than failing the delivery.
                let found = js_path_process(query, event).ok()?;
                let values = found.into_iter().map(|r| r.val.clone()).collect();
                Some(Cow::Owned(Value::Array(values)))
            }
        }
    }
}

fn walk<'a>(mut value: &'a Value, steps: &[Step]) -> Option<&'a Value> {
    for step in steps {
        value = match step {
            Step::Key(key) => value.as_object()?.get(key)?,
            Step::Index(index) => {
                let items = value.as_array()?;
                let at = if *index < 0 {
                    let back = usize::try_from(index.unsigned_abs()).ok()?;
                    items.len().checked_sub(back)?
                } else {
                    usize::try_from(*index).ok()?
                };
                items.get(at)?
            }
        };
    }
    Some(value)
}

fn definite_steps(query: &JpQuery) -> Option<Vec<Step>> {
    query
        .segments
        .iter()
        .map(|segment| match segment {
            Segment::Selector(Selector::Name(name)) => Some(Step::Key(name.clone())),
            Segment::Selector(Selector::Index(index)) => Some(Step::Index(*index)),
            _ => None,
        })
        .collect()
}

/// Rewrites dot-notation members that RFC 9535's shorthand rejects (`-`,
/// `/`, leading digits, ...) as bracketed names: `$.detail-type` becomes
/// `$['detail-type']`. Bracketed parts are copied unchanged.
fn normalize(path: &str) -> Cow<'_, str> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len() + 8);
    let mut changed = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'[' => {
                let end = bracket_end(bytes, i);
                out.push_str(&path[i..end]);
                i = end;
            }
            b'.' => {
                let descendant = bytes.get(i + 1) == Some(&b'.');
                let start = if descendant { i + 2 } else { i + 1 };
                let mut end = start;
                while end < bytes.len() && bytes[end] != b'.' && bytes[end] != b'[' {
                    end += 1;
                }
                let name = &path[start..end];
                if name.is_empty() || name == "*" || is_shorthand(name) {
                    out.push_str(&path[i..end]);
                } else {
                    changed = true;
                    out.push_str(if descendant { "..['" } else { "['" });
                    for c in name.chars() {
                        if c == '\'' || c == '\\' {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                    out.push_str("']");
                }
                i = end;
            }
            _ => {
                // Copy up to the next structural byte (all ASCII, so slicing
                // there stays on a character boundary).
                let mut end = i + 1;
                while end < bytes.len() && bytes[end] != b'.' && bytes[end] != b'[' {
                    end += 1;
                }
                out.push_str(&path[i..end]);
                i = end;
            }
        }
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(path)
    }
}

/// The index just past the `]` closing the bracket opened at `open`, honouring
/// quoted strings and nested brackets (filters); the end of the path if it
/// never closes (the parser then reports the error).
fn bracket_end(bytes: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    let mut i = open;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) => {
                if b == b'\\' {
                    i += 1;
                } else if b == q {
                    quote = None;
                }
            }
            None => match b {
                b'\'' | b'"' => quote = Some(b),
                b'[' => depth += 1,
                b']' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    bytes.len()
}

/// RFC 9535 `member-name-shorthand`: `name-first *name-char`.
fn is_shorthand(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || !c.is_ascii());
    first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || !c.is_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(path: &str, event: &Value) -> Option<Value> {
        JsonPath::compile(path)
            .unwrap()
            .select(event)
            .map(Cow::into_owned)
    }

    #[test]
    fn eventbridge_dot_notation_is_rewritten() {
        assert_eq!(normalize("$.detail-type"), "$['detail-type']");
        assert_eq!(normalize("$.detail.instance-id"), "$.detail['instance-id']");
        assert_eq!(normalize("$.a/b[0]"), "$['a/b'][0]");
        assert_eq!(normalize("$..x-y"), "$..['x-y']");
        assert_eq!(normalize("$.it's"), "$['it\\'s']");
        assert_eq!(normalize("$.a['b.c-d'].e"), "$.a['b.c-d'].e");
        assert!(matches!(normalize("$.detail.state"), Cow::Borrowed(_)));
    }

    #[test]
    fn definite_paths_walk_names_and_indices() {
        let event = json!({"detail-type": "t", "detail": {"a": [1, 2, 3], "instance-id": "i-1"}});
        assert_eq!(sel("$.detail-type", &event), Some(json!("t")));
        assert_eq!(sel("$.detail.instance-id", &event), Some(json!("i-1")));
        assert_eq!(sel("$.detail.a[0]", &event), Some(json!(1)));
        assert_eq!(sel("$.detail.a[-1]", &event), Some(json!(3)));
        assert_eq!(sel("$.detail.a[-4]", &event), None);
        assert_eq!(sel("$.detail.a[3]", &event), None);
        assert_eq!(sel("$.detail.missing", &event), None);
        assert_eq!(sel("$.detail.a.b", &event), None);
        assert_eq!(sel("$", &event), Some(event.clone()));
        assert!(JsonPath::compile("$.detail.a[0]").unwrap().is_definite());
    }

    #[test]
    fn indefinite_paths_give_arrays() {
        let event = json!({"items": [{"id": 1}, {"id": 2}, {"x": 3}]});
        assert_eq!(sel("$.items[*].id", &event), Some(json!([1, 2])));
        assert_eq!(sel("$..id", &event), Some(json!([1, 2])));
        assert_eq!(sel("$.nothing[*]", &event), Some(json!([])));
        assert!(!JsonPath::compile("$.items[*]").unwrap().is_definite());
    }

    #[test]
    fn eventbridge_members_read_cloudevents_names() {
        let cloud = json!({"type": "order.created", "data": {"id": 7, "items": [1, 2]}});
        assert_eq!(sel("$.detail.id", &cloud), Some(json!(7)));
        assert_eq!(
            sel("$.detail", &cloud),
            Some(json!({"id": 7, "items": [1, 2]}))
        );
        assert_eq!(sel("$.detail-type", &cloud), Some(json!("order.created")));
        assert_eq!(sel("$.detail.items[*]", &cloud), Some(json!([1, 2])));
        assert_eq!(sel("$..detail", &cloud), Some(json!([])));
        // An event that has the member reads it, never the alias.
        let both = json!({"detail": {"id": 1}, "data": {"id": 2}});
        assert_eq!(sel("$.detail.id", &both), Some(json!(1)));
        let eventbridge = json!({"detail": {}, "data": {"id": 2}});
        assert_eq!(sel("$.detail.id", &eventbridge), None);
    }

    #[test]
    fn odd_queries_neither_panic_nor_hang() {
        let event = json!({"a": [1, "x", {"b": [2, 3]}, null], "s": "text", "n": -9});
        let paths = [
            "$.a[0:10:0]",
            "$.a[::-1]",
            "$.a[-9223372036854775808]",
            "$.a[9223372036854775807]",
            "$.a[-9223372036854775808:9223372036854775807:-9223372036854775808]",
            "$..*",
            "$..[*]",
            "$.a[?length(@) > 1]",
            "$.a[?match(@, '[')]",
            "$.a[?search(@, '(')]",
            "$.a[?count(@.*) > 0]",
            "$.a[?value(@..b) == 2]",
            "$.a[?@ == $.n]",
            "$.s[0]",
            "$.n.x[*]",
        ];
        for path in paths {
            if let Ok(compiled) = JsonPath::compile(path) {
                let _ = compiled.select(&event);
            }
        }
    }

    #[test]
    fn bad_paths_are_rejected_with_a_one_line_reason() {
        for bad in ["", "detail", "$.", "$[", "$.a[?", "$$"] {
            let err = JsonPath::compile(bad).unwrap_err();
            assert!(!err.contains('\n'), "{bad}: {err}");
        }
        let long = format!("$.{}", "a".repeat(300));
        assert!(JsonPath::compile(&long).unwrap_err().contains("256"));
    }
}
