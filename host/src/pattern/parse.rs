//! From pattern JSON to the validated AST: a disjunction of conjunctions.
//!
//! `$or` is expanded here (distributing it over the surrounding fields), so the rest of
//! the module only sees "any of these conjunctions; each conjunction is a list of
//! fields that must all hold; each field is a list of conditions of which one must
//! hold". Nested objects are flattened into dotted field paths, exactly like
//! event-ruler does (so `{"a": {"b": …}}` and `{"a.b": …}` name the same field).

use super::PatternError;
use super::cidr::Cidr;
use super::ignore_case::IgnoreCase;
use super::numeric::{Range, normalize};
use super::wildcard::Wildcard;
use serde_json::{Map, Value};

/// Upper bound on the conjunctions one pattern may expand into through `$or`.
pub(crate) const MAX_OR_BRANCHES: usize = 1024;

/// Reserved names (operators, numeric comparisons, and names event-ruler reserves for
/// future operators); an object inside `$or` that uses one of them as a key is not an
/// `$or` alternative (event-ruler's rule), so `$or` is then an ordinary field name.
const RESERVED: &[&str] = &[
    "exact",
    "prefix",
    "suffix",
    "equals-ignore-case",
    "wildcard",
    "anything-but",
    "numeric",
    "exists",
    "cidr",
    "=",
    "<",
    "<=",
    ">",
    ">=",
    "regex",
    "not-wildcard",
    "not-equals-ignore-case",
    "date-after",
    "date-on-or-after",
    "date-before",
    "date-on-or-before",
    "in-date-range",
    "ip-address-in-range",
    "ip-address-not-in-range",
];

/// One condition on a field's value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Condition {
    /// The value is this string.
    ExactStr(String),
    /// The value is a number equal to this one (compared as doubles).
    ExactNum(f64),
    /// The value is this boolean.
    ExactBool(bool),
    /// The value is `null`.
    ExactNull,
    /// The value is a string starting with this.
    Prefix(String),
    /// The value is a string ending with this.
    Suffix(String),
    /// The value is a string equal to this, ignoring case.
    EqualsIgnoreCase(IgnoreCase),
    /// The value is a string starting with this, ignoring case.
    PrefixIgnoreCase(IgnoreCase),
    /// The value is a string ending with this, ignoring case.
    SuffixIgnoreCase(IgnoreCase),
    /// The value is a string matching this wildcard.
    Wildcard(Wildcard),
    /// The value is a number in this range.
    Numeric(Range),
    /// The value is a string holding an IP address in this block (a `cidr` pattern, or a
    /// plain IP address in a value list, which event-ruler compares by address).
    Cidr(Cidr),
    /// `exists: true` (any value) or `exists: false` (the field is absent).
    Exists(bool),
    /// The value is anything except what the inner condition describes.
    AnythingBut(AnythingBut),
}

/// What an `anything-but` excludes.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum AnythingBut {
    /// Strings equal to one of these.
    Strings(Vec<String>),
    /// Numbers equal to one of these.
    Numbers(Vec<f64>),
    /// Strings starting with one of these.
    Prefixes(Vec<String>),
    /// Strings ending with one of these.
    Suffixes(Vec<String>),
    /// Strings equal, ignoring case, to one of these.
    IgnoreCase(Vec<IgnoreCase>),
    /// Strings matching one of these wildcards.
    Wildcards(Vec<Wildcard>),
}

/// A field path and the conditions of which one must hold for it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Field {
    /// Dotted path, e.g. `detail.state`.
    pub(crate) path: String,
    /// Alternatives (a pattern's value list).
    pub(crate) conditions: Vec<Condition>,
}

impl Field {
    /// Whether the field is satisfied by being absent (`exists: false` is one of its
    /// alternatives).
    pub(crate) fn allows_absence(&self) -> bool {
        self.conditions.contains(&Condition::Exists(false))
    }
}

/// Fields that must all hold, sorted by path, each path once.
pub(crate) type Conjunction = Vec<Field>;

/// Parses a pattern value into its conjunctions and validates it against the
/// complexity limit. The caller has already checked the size limit.
pub(crate) fn parse(
    value: &Value,
    max_complexity: usize,
) -> Result<Vec<Conjunction>, PatternError> {
    let Value::Object(map) = value else {
        return Err(error("", "pattern must be a JSON object"));
    };
    let mut conjunctions = object(map, None, "", vec![Vec::new()])?;
    for conjunction in &mut conjunctions {
        // event-ruler walks a rule's fields in Java `String` order (UTF-16 units:
        // `GenericMachine.addPatternRule` sorts the keys), and `exists: false` depends on
        // that order (see `matcher::conjunction_matches`).
        conjunction.sort_by(|a, b| a.path.encode_utf16().cmp(b.path.encode_utf16()));
        if let Some(pair) = conjunction.windows(2).find(|w| w[0].path == w[1].path) {
            return Err(error(
                &pair[0].path,
                format!("field path `{}` is given more than once", pair[0].path),
            ));
        }
    }
    let score = complexity(&conjunctions);
    if score > max_complexity {
        return Err(error(
            "",
            format!(
                "pattern is too complex: complexity {score} exceeds the limit of {max_complexity}"
            ),
        ));
    }
    Ok(conjunctions)
}

/// The complexity score: the number of `*` wildcards in `wildcard` and
/// `anything-but`/`wildcard` values, summed over every conjunction `$or` expands into.
pub(crate) fn complexity(conjunctions: &[Conjunction]) -> usize {
    let stars = |c: &Condition| match c {
        Condition::Wildcard(w) => w.stars(),
        Condition::AnythingBut(AnythingBut::Wildcards(ws)) => ws.iter().map(Wildcard::stars).sum(),
        _ => 0,
    };
    conjunctions
        .iter()
        .flatten()
        .flat_map(|field| &field.conditions)
        .map(stars)
        .sum()
}

fn error(path: &str, reason: impl Into<String>) -> PatternError {
    PatternError {
        path: if path.is_empty() {
            "$".into()
        } else {
            path.into()
        },
        reason: reason.into(),
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// Processes one pattern object whose fields live under `prefix`, extending every
/// conjunction in `acc`.
fn object(
    map: &Map<String, Value>,
    prefix: Option<&str>,
    path: &str,
    mut acc: Vec<Conjunction>,
) -> Result<Vec<Conjunction>, PatternError> {
    if map.is_empty() {
        return Err(error(path, "empty object is not allowed"));
    }
    for (key, value) in map {
        let here = child(path, key);
        if key == "$or" && is_or(value) {
            acc = or(value, prefix, &here, acc)?;
            continue;
        }
        let field = match prefix {
            Some(p) => format!("{p}.{key}"),
            None => key.clone(),
        };
        match value {
            Value::Array(items) => {
                let conditions = leaf(items, &here)?;
                for conjunction in &mut acc {
                    conjunction.push(Field {
                        path: field.clone(),
                        conditions: conditions.clone(),
                    });
                }
            }
            Value::Object(inner) => acc = object(inner, Some(&field), &here, acc)?,
            _ => {
                return Err(error(
                    &here,
                    "must be an object or an array (a leaf's values are always given as an array)",
                ));
            }
        }
    }
    Ok(acc)
}

/// Whether a `$or` value is meant as the `$or` primitive: an array of objects none of
/// which uses an operator name as a key.
fn is_or(value: &Value) -> bool {
    let Value::Array(items) = value else {
        return false;
    };
    !items.is_empty()
        && items.iter().all(|item| {
            item.as_object()
                .is_some_and(|m| m.keys().all(|k| !RESERVED.contains(&k.as_str())))
        })
}

fn or(
    value: &Value,
    prefix: Option<&str>,
    path: &str,
    acc: Vec<Conjunction>,
) -> Result<Vec<Conjunction>, PatternError> {
    let items = value.as_array().map(Vec::as_slice).unwrap_or_default();
    if items.len() < 2 {
        return Err(error(path, "$or must be an array of at least 2 objects"));
    }
    let mut alternatives = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let here = index(path, i);
        let Value::Object(map) = item else {
            return Err(error(&here, "$or alternatives must be objects"));
        };
        alternatives.extend(object(map, prefix, &here, vec![Vec::new()])?);
    }
    if acc.len().saturating_mul(alternatives.len()) > MAX_OR_BRANCHES {
        return Err(error(
            path,
            format!("$or expands into more than {MAX_OR_BRANCHES} combinations"),
        ));
    }
    let mut out = Vec::with_capacity(acc.len() * alternatives.len());
    for conjunction in &acc {
        for alternative in &alternatives {
            let mut combined = conjunction.clone();
            combined.extend(alternative.iter().cloned());
            out.push(combined);
        }
    }
    Ok(out)
}

/// A leaf's value list: each element is an alternative.
fn leaf(items: &[Value], path: &str) -> Result<Vec<Condition>, PatternError> {
    if items.is_empty() {
        return Err(error(
            path,
            "empty array is not allowed: list at least one value",
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let here = index(path, i);
            match item {
                // event-ruler `JsonRuleCompiler.writeRules`: a string that is an IP
                // address becomes the one-address range (`CIDR.ipToRangeIfPossible`).
                Value::String(s) => Ok(match Cidr::address(s) {
                    Some(address) => Condition::Cidr(address),
                    None => Condition::ExactStr(s.clone()),
                }),
                Value::Number(n) => number(n, &here).map(Condition::ExactNum),
                Value::Bool(b) => Ok(Condition::ExactBool(*b)),
                Value::Null => Ok(Condition::ExactNull),
                Value::Object(map) => operator(map, &here),
                Value::Array(_) => Err(error(
                    &here,
                    "match value must be a string, number, boolean, null or an operator object, not an array",
                )),
            }
        })
        .collect()
}

fn number(n: &serde_json::Number, path: &str) -> Result<f64, PatternError> {
    n.as_f64()
        .filter(|f| f.is_finite())
        .map(normalize)
        .ok_or_else(|| error(path, "number is out of range"))
}

fn string<'v>(value: &'v Value, path: &str, what: &str) -> Result<&'v str, PatternError> {
    value
        .as_str()
        .ok_or_else(|| error(path, format!("{what} match pattern must be a string")))
}

/// The single `(key, value)` of an operator object.
fn single<'m>(
    map: &'m Map<String, Value>,
    path: &str,
) -> Result<(&'m str, &'m Value), PatternError> {
    let mut entries = map.iter();
    match (entries.next(), entries.next()) {
        (Some((k, v)), None) => Ok((k.as_str(), v)),
        (None, _) => Err(error(
            path,
            "empty object is not allowed: an operator object needs one key",
        )),
        (Some(_), Some(_)) => Err(error(path, "only one key is allowed in an operator object")),
    }
}

fn operator(map: &Map<String, Value>, path: &str) -> Result<Condition, PatternError> {
    let (name, value) = single(map, path)?;
    let here = child(path, name);
    Ok(match name {
        "exact" => Condition::ExactStr(string(value, &here, "exact")?.to_owned()),
        "prefix" | "suffix" => {
            let (text, ignore_case) = match value {
                Value::Object(inner) => {
                    let (op, v) = single(inner, &here)?;
                    if op != "equals-ignore-case" {
                        return Err(error(
                            &child(&here, op),
                            format!(
                                "unsupported {name} pattern \"{op}\": only equals-ignore-case may be nested"
                            ),
                        ));
                    }
                    (string(v, &child(&here, op), "equals-ignore-case")?, true)
                }
                other => (string(other, &here, name)?, false),
            };
            match (name, ignore_case) {
                ("prefix", false) => Condition::Prefix(text.to_owned()),
                ("prefix", true) => Condition::PrefixIgnoreCase(IgnoreCase::new(text)),
                (_, false) => Condition::Suffix(text.to_owned()),
                (_, true) => Condition::SuffixIgnoreCase(IgnoreCase::new(text)),
            }
        }
        "equals-ignore-case" => {
            Condition::EqualsIgnoreCase(IgnoreCase::new(string(value, &here, name)?))
        }
        "wildcard" => Condition::Wildcard(
            Wildcard::parse(string(value, &here, name)?).map_err(|r| error(&here, r))?,
        ),
        "numeric" => {
            let Value::Array(items) = value else {
                return Err(error(&here, "value of numeric must be an array"));
            };
            Condition::Numeric(Range::parse(items).map_err(|(i, reason)| match i {
                Some(i) => error(&index(&here, i), reason),
                None => error(&here, reason),
            })?)
        }
        "exists" => match value {
            Value::Bool(b) => Condition::Exists(*b),
            _ => {
                return Err(error(
                    &here,
                    "exists match pattern must be either true or false",
                ));
            }
        },
        "cidr" => {
            Condition::Cidr(Cidr::parse(string(value, &here, name)?).map_err(|r| error(&here, r))?)
        }
        "anything-but" => Condition::AnythingBut(anything_but(value, &here)?),
        other => return Err(error(&here, format!("unrecognized match type \"{other}\""))),
    })
}

fn anything_but(value: &Value, path: &str) -> Result<AnythingBut, PatternError> {
    match value {
        Value::String(s) => Ok(AnythingBut::Strings(vec![s.clone()])),
        Value::Number(n) => Ok(AnythingBut::Numbers(vec![number(n, path)?])),
        Value::Array(items) => {
            if items.is_empty() {
                return Err(error(path, "empty array is not allowed in anything-but"));
            }
            if items.iter().all(Value::is_string) {
                Ok(AnythingBut::Strings(
                    items
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect(),
                ))
            } else if items.iter().all(Value::is_number) {
                let numbers = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| match item {
                        Value::Number(n) => number(n, &index(path, i)),
                        _ => Err(error(&index(path, i), "expected a number")),
                    })
                    .collect::<Result<_, _>>()?;
                Ok(AnythingBut::Numbers(numbers))
            } else {
                let bad = items
                    .iter()
                    .position(|v| !(v.is_string() || v.is_number()))
                    .unwrap_or(0);
                Err(error(
                    &index(path, bad),
                    "inside an anything-but list, either all values are numbers or all are strings",
                ))
            }
        }
        Value::Object(map) => {
            let (op, inner) = single(map, path)?;
            let here = child(path, op);
            if !matches!(op, "prefix" | "suffix" | "equals-ignore-case" | "wildcard") {
                return Err(error(
                    &here,
                    format!("unsupported anything-but pattern \"{op}\""),
                ));
            }
            let texts: Vec<&str> = match inner {
                Value::String(s) => vec![s.as_str()],
                Value::Array(items) if !items.is_empty() => items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| string(v, &index(&here, i), op))
                    .collect::<Result<_, _>>()?,
                Value::Array(_) => {
                    return Err(error(&here, "empty array is not allowed in anything-but"));
                }
                _ => {
                    return Err(error(
                        &here,
                        format!("{op} match pattern must be a string or an array of strings"),
                    ));
                }
            };
            let at = |i: usize| {
                if inner.is_string() {
                    here.clone()
                } else {
                    index(&here, i)
                }
            };
            // event-ruler `JsonRuleCompiler.processAnythingButValuesSet*MatchExpression`:
            // "Null prefix/suffix not allowed".
            if matches!(op, "prefix" | "suffix")
                && let Some(i) = texts.iter().position(|t| t.is_empty())
            {
                return Err(error(
                    &at(i),
                    format!("empty {op} is not allowed in anything-but"),
                ));
            }
            let owned = || texts.iter().map(|t| (*t).to_owned()).collect();
            match op {
                "prefix" => Ok(AnythingBut::Prefixes(owned())),
                "suffix" => Ok(AnythingBut::Suffixes(owned())),
                "equals-ignore-case" => Ok(AnythingBut::IgnoreCase(
                    texts.iter().map(|t| IgnoreCase::new(t)).collect(),
                )),
                _ => Ok(AnythingBut::Wildcards(
                    texts
                        .iter()
                        .enumerate()
                        .map(|(i, t)| Wildcard::parse(t).map_err(|r| error(&at(i), r)))
                        .collect::<Result<_, _>>()?,
                )),
            }
        }
        Value::Bool(_) | Value::Null => Err(error(
            path,
            "anything-but value must be a string, a number, an array of them, or an object with prefix, suffix, equals-ignore-case or wildcard",
        )),
    }
}
