//! EventBridge event patterns: parse, validate, compile and match.
//!
//! A pattern is JSON such as
//! `{"source": ["shop"], "detail": {"total": [{"numeric": [">", 100]}]}}`. The module
//! implements EventBridge's semantics (with aws/event-ruler as the tie-breaker where the
//! EventBridge documentation is silent):
//!
//! * [`parse`] validates the JSON and expands `$or` into a list of conjunctions of
//!   fields, each field holding its alternative conditions;
//! * [`flatten`] turns an event into `(dotted path, scalar)` leaves for the paths a
//!   pattern uses, remembering array elements for array-consistent matching;
//! * [`matcher`] matches one pattern; [`index`] compiles many into per-path indexes
//!   ([`RuleSet`]) so that the cost of matching grows slowly with the rule count;
//! * [`numeric`], [`cidr`], [`ignore_case`], [`wildcard`] and [`interval`] are the
//!   value-level pieces;
//! * [`explain`] says why a pattern matches an event or not, branch by branch.
//!
//! Notable semantics: nested objects and dotted keys name the same field
//! (`{"a": {"b": …}}` ≡ `{"a.b": …}`); a non-object event has no fields; `exists` only
//! sees leaves (scalars, including `null`), so an object, an empty array or a missing
//! field are all "absent"; conditions over different fields must be met within one
//! element of any array they share (array consistency), and `exists: false` means no
//! leaf at that path consistent with the leaves matched by the fields *before* it in
//! event-ruler's order (field paths sorted as Java strings), so a field present only
//! in another array element counts as absent when an earlier field chose an element
//! without it ([`matcher`]). `equals-ignore-case` compares per character, as Java's
//! lower/upper case of each pattern character ([`ignore_case`]); IP addresses are read
//! as Java reads them and blocks matched as event-ruler's hex-digit ranges, and a
//! plain IP address in a value list matches by address ([`cidr`]). Where event-ruler
//! has a quirk of its own (Java treating a character outside the BMP as two `?`,
//! refusing `/32` and `/128` blocks), Busbar does the sensible thing instead.
//!
//! **Complexity score.** Wildcards make matching non-deterministic, so a pattern's
//! complexity is the number of `*` wildcards in its `wildcard` and
//! `anything-but`/`wildcard` values, summed over every conjunction its `$or`s expand
//! into. It must not exceed [`PatternLimits::max_complexity`]. Independently, `$or` may
//! expand into at most 1,024 conjunctions.

mod cidr;
pub mod explain;
mod flatten;
mod ignore_case;
mod index;
mod interval;
mod matcher;
mod numeric;
mod parse;
mod wildcard;

use parse::Conjunction;
use serde_json::Value;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::OnceLock;

/// Limits applied when a pattern is parsed.
#[derive(Clone, Debug)]
pub struct PatternLimits {
    /// Maximum length of the pattern's JSON text in characters (EventBridge: 2,048).
    pub max_chars: usize,
    /// Maximum complexity score (wildcard-heavy patterns cost more; see the module docs).
    pub max_complexity: usize,
}

impl Default for PatternLimits {
    fn default() -> Self {
        Self {
            max_chars: 2048,
            max_complexity: 100,
        }
    }
}

/// Why a pattern is invalid, and where.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct PatternError {
    /// JSON path of the offending part, e.g. `detail.amount[0].numeric[1]`; `$` for the
    /// pattern as a whole.
    pub path: String,
    /// Human-readable reason.
    pub reason: String,
}

/// A pattern of a named set that does not compile (see [`RuleSet::compile_named`]).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}: {}", self.field(), self.error.reason)]
pub struct NamedPatternError {
    /// The pattern's name in the set.
    pub name: String,
    /// What is wrong with it.
    pub error: PatternError,
}

impl NamedPatternError {
    /// The request path at fault: `patterns.<name>` or `patterns.<name>.<path>`.
    pub fn field(&self) -> String {
        if self.error.path == "$" {
            format!("patterns.{}", self.name)
        } else {
            format!("patterns.{}.{}", self.name, self.error.path)
        }
    }
}

/// A validated, compiled event pattern.
#[derive(Clone, Debug)]
pub struct Pattern {
    /// Alternatives after `$or` expansion; the pattern matches if any holds.
    conjunctions: Vec<Conjunction>,
    /// The paths the pattern tests.
    table: flatten::PathTable,
    /// Path id of each field of each conjunction.
    paths: Vec<Vec<u32>>,
}

impl Pattern {
    /// Parses pattern JSON text with default limits.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        Self::parse_with(text, &PatternLimits::default())
    }

    /// Parses pattern JSON text with the given limits.
    pub fn parse_with(text: &str, limits: &PatternLimits) -> Result<Self, PatternError> {
        check_size(text.chars().count(), limits)?;
        let value: Value = serde_json::from_str(text).map_err(|e| PatternError {
            path: "$".into(),
            reason: format!("pattern is not valid JSON: {e}"),
        })?;
        Self::compile(&value, limits)
    }

    /// Compiles an already parsed JSON value (its serialised length counts toward `max_chars`).
    pub fn from_value(value: &Value, limits: &PatternLimits) -> Result<Self, PatternError> {
        check_size(value.to_string().chars().count(), limits)?;
        Self::compile(value, limits)
    }

    fn compile(value: &Value, limits: &PatternLimits) -> Result<Self, PatternError> {
        let conjunctions = parse::parse(value, limits.max_complexity)?;
        let mut table = flatten::PathTable::default();
        let paths = conjunctions
            .iter()
            .map(|c| c.iter().map(|field| table.intern(&field.path)).collect())
            .collect();
        Ok(Self {
            conjunctions,
            table,
            paths,
        })
    }

    /// Whether the event (any JSON value) matches.
    pub fn matches(&self, event: &Value) -> bool {
        let flat = flatten::flatten(event, &self.table);
        self.conjunctions
            .iter()
            .zip(&self.paths)
            .any(|(conjunction, paths)| matcher::conjunction_matches(conjunction, paths, &flat))
    }

    /// The dotted field paths the pattern tests, sorted, each once.
    pub fn fields(&self) -> Vec<&str> {
        let mut fields: Vec<&str> = self
            .conjunctions
            .iter()
            .flatten()
            .map(|field| field.path.as_str())
            .collect();
        fields.sort_unstable();
        fields.dedup();
        fields
    }

    /// The pattern's complexity score (see the module docs).
    pub fn complexity(&self) -> usize {
        parse::complexity(&self.conjunctions)
    }
}

fn check_size(chars: usize, limits: &PatternLimits) -> Result<(), PatternError> {
    if chars > limits.max_chars {
        return Err(PatternError {
            path: "$".into(),
            reason: format!(
                "pattern is {chars} characters long, more than the limit of {}",
                limits.max_chars
            ),
        });
    }
    Ok(())
}

/// Many patterns compiled into one index, so matching cost grows slowly with the rule count.
///
/// Inserting or removing a pattern is cheap; the index is (re)built on the first match
/// after a change, so load rules in bulk before matching.
#[derive(Clone, Debug)]
pub struct RuleSet<K> {
    /// Patterns in insertion order (removal swaps the last one into the hole).
    entries: Vec<(K, Pattern)>,
    /// Key → position in `entries`.
    positions: HashMap<K, usize>,
    /// The compiled index, built lazily and dropped on every change.
    index: OnceLock<index::Index>,
}

impl<K: Clone + Eq + Hash> Default for RuleSet<K> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            positions: HashMap::new(),
            index: OnceLock::new(),
        }
    }
}

impl<K: Clone + Eq + Hash> RuleSet<K> {
    /// An empty rule set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the pattern stored under `key`.
    pub fn insert(&mut self, key: K, pattern: Pattern) {
        self.index = OnceLock::new();
        match self
            .positions
            .get(&key)
            .and_then(|&at| self.entries.get_mut(at))
        {
            Some(entry) => entry.1 = pattern,
            None => {
                self.positions.insert(key.clone(), self.entries.len());
                self.entries.push((key, pattern));
            }
        }
    }

    /// Removes `key`; returns whether it was present.
    pub fn remove(&mut self, key: &K) -> bool {
        let Some(at) = self.positions.remove(key) else {
            return false;
        };
        self.index = OnceLock::new();
        self.entries.swap_remove(at);
        if let Some((moved, _)) = self.entries.get(at) {
            self.positions.insert(moved.clone(), at);
        }
        true
    }

    /// Number of patterns.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn index(&self) -> &index::Index {
        self.index.get_or_init(|| {
            index::Index::build(
                self.entries
                    .iter()
                    .enumerate()
                    .map(|(i, (_, p))| (i as u32, p.conjunctions.as_slice())),
            )
        })
    }

    fn keys(&self, rules: Vec<u32>) -> Vec<K> {
        rules
            .into_iter()
            .filter_map(|r| self.entries.get(r as usize).map(|(k, _)| k.clone()))
            .collect()
    }

    /// Keys of all patterns the event matches, each once, in no particular order.
    pub fn matches(&self, event: &Value) -> Vec<K> {
        let index = self.index();
        let flat = flatten::flatten(event, &index.table);
        self.keys(index.matches(&flat))
    }

    /// Like [`RuleSet::matches`] but from JSON text; only the fields some pattern uses
    /// are decoded, the rest is skipped without building a `Value`.
    pub fn matches_json(&self, json: &[u8]) -> Result<Vec<K>, serde_json::Error> {
        let index = self.index();
        let flat = flatten::flatten_json(json, &index.table)?;
        Ok(self.keys(index.matches(&flat)))
    }
}

impl RuleSet<String> {
    /// Compiles named patterns into one rule set — the index a bus runs its rules
    /// with — for testing a bus's rules together; the first pattern that does not
    /// compile is reported with its name.
    pub fn compile_named(
        patterns: impl IntoIterator<Item = (String, Value)>,
        limits: &PatternLimits,
    ) -> Result<Self, NamedPatternError> {
        let mut set = Self::new();
        for (name, pattern) in patterns {
            match Pattern::from_value(&pattern, limits) {
                Ok(compiled) => set.insert(name, compiled),
                Err(error) => return Err(NamedPatternError { name, error }),
            }
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_display_is_path_colon_reason() {
        let err = Pattern::parse(r#"{"detail": {"amount": [{"numeric": [">", 5, "<", 1]}]}}"#)
            .unwrap_err();
        assert_eq!(err.path, "detail.amount[0].numeric[3]");
        assert!(err.to_string().starts_with("detail.amount[0].numeric[3]: "));
    }

    #[test]
    fn rule_set_insert_replace_remove() {
        let mut rules = RuleSet::new();
        rules.insert("a", Pattern::parse(r#"{"x": [1]}"#).unwrap());
        rules.insert("b", Pattern::parse(r#"{"x": [2]}"#).unwrap());
        assert_eq!(rules.matches(&json!({"x": 1})), vec!["a"]);
        rules.insert("a", Pattern::parse(r#"{"x": [2]}"#).unwrap());
        assert_eq!(rules.len(), 2);
        let mut both = rules.matches(&json!({"x": 2}));
        both.sort_unstable();
        assert_eq!(both, vec!["a", "b"]);
        assert!(rules.remove(&"a"));
        assert!(!rules.remove(&"a"));
        assert_eq!(rules.matches(&json!({"x": 2})), vec!["b"]);
        assert_eq!(rules.matches_json(br#"{"x": 2}"#).unwrap(), vec!["b"]);
        assert!(rules.remove(&"b"));
        assert!(rules.is_empty());
    }

    #[test]
    fn named_sets_name_the_invalid_pattern() {
        let set = RuleSet::compile_named(
            [
                ("big".to_owned(), json!({"n": [{"numeric": [">", 10]}]})),
                ("any".to_owned(), json!({"n": [{"exists": true}]})),
            ],
            &PatternLimits::default(),
        )
        .unwrap();
        let mut matched = set.matches(&json!({"n": 20}));
        matched.sort();
        assert_eq!(matched, ["any", "big"]);
        let err = RuleSet::compile_named(
            [
                ("ok".to_owned(), json!({"n": [1]})),
                ("bad".to_owned(), json!({"n": [{"nope": 1}]})),
            ],
            &PatternLimits::default(),
        )
        .unwrap_err();
        assert_eq!(err.field(), "patterns.bad.n[0].nope");
        let err =
            RuleSet::compile_named([("x".to_owned(), json!([]))], &Default::default()).unwrap_err();
        assert_eq!(err.field(), "patterns.x");
    }

    #[test]
    fn fields_and_complexity() {
        let p = Pattern::parse(
            r#"{"a": {"b": [{"wildcard": "x*y*z"}]}, "$or": [{"c": [1]}, {"d": [2]}]}"#,
        )
        .unwrap();
        assert_eq!(p.fields(), vec!["a.b", "c", "d"]);
        assert_eq!(p.complexity(), 4);
    }
}
