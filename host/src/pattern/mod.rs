//! EventBridge event patterns: parse, validate, compile and match.
//!
//! (Stub with the public API; the implementation lands on the `pattern` branch.)

use serde_json::Value;
use std::hash::Hash;

/// Limits applied when a pattern is parsed.
#[derive(Clone, Debug)]
pub struct PatternLimits {
    /// Maximum length of the pattern's JSON text in characters (EventBridge: 2,048).
    pub max_chars: usize,
    /// Maximum complexity score (wildcard-heavy patterns cost more).
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
    /// JSON path of the offending part, e.g. `detail.amount[0].numeric`.
    pub path: String,
    /// Human-readable reason.
    pub reason: String,
}

/// A validated, compiled event pattern.
#[derive(Clone, Debug)]
pub struct Pattern {}

impl Pattern {
    /// Parses pattern JSON text with default limits.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        Self::parse_with(text, &PatternLimits::default())
    }

    /// Parses pattern JSON text with the given limits.
    pub fn parse_with(_text: &str, _limits: &PatternLimits) -> Result<Self, PatternError> {
        Err(PatternError {
            path: String::new(),
            reason: "not implemented".into(),
        })
    }

    /// Compiles an already parsed JSON value (its serialised length counts toward `max_chars`).
    pub fn from_value(_value: &Value, _limits: &PatternLimits) -> Result<Self, PatternError> {
        Err(PatternError {
            path: String::new(),
            reason: "not implemented".into(),
        })
    }

    /// Whether the event (any JSON value) matches.
    pub fn matches(&self, _event: &Value) -> bool {
        false
    }
}

/// Many patterns compiled into one index, so matching cost grows slowly with the rule count.
#[derive(Clone, Debug)]
pub struct RuleSet<K> {
    keys: Vec<K>,
}

impl<K: Clone + Eq + Hash> Default for RuleSet<K> {
    fn default() -> Self {
        Self { keys: Vec::new() }
    }
}

impl<K: Clone + Eq + Hash> RuleSet<K> {
    /// An empty rule set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the pattern stored under `key`.
    pub fn insert(&mut self, key: K, _pattern: Pattern) {
        self.keys.push(key);
    }

    /// Removes `key`; returns whether it was present.
    pub fn remove(&mut self, key: &K) -> bool {
        let before = self.keys.len();
        self.keys.retain(|k| k != key);
        before != self.keys.len()
    }

    /// Number of patterns.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Keys of all patterns the event matches, each once.
    pub fn matches(&self, _event: &Value) -> Vec<K> {
        Vec::new()
    }

    /// Like [`RuleSet::matches`] but from JSON text; may avoid building a full `Value`.
    pub fn matches_json(&self, json: &[u8]) -> Result<Vec<K>, serde_json::Error> {
        let value: Value = serde_json::from_slice(json)?;
        Ok(self.matches(&value))
    }
}
