//! The rule-set automaton: many patterns compiled into per-field indexes.
//!
//! Every pattern is a disjunction of conjunctions of fields. Each conjunction is indexed
//! under one *anchor* field: the most selective field that cannot be satisfied by
//! absence (exact values first, then prefixes/suffixes, numeric ranges and CIDR blocks,
//! wildcards, and last `exists: true` and `anything-but`). For each field path the index
//! keeps, per kind of condition, a structure that finds the conjunctions whose anchor a
//! value satisfies without looking at the others:
//!
//! * exact strings, numbers (by value), booleans and `null`: hash maps / lists;
//! * `prefix` / `suffix` (and their `equals-ignore-case` forms): one hash map per
//!   distinct literal length, probed with the value's first / last bytes;
//! * `equals-ignore-case`: a hash map by [`ignore_case::key`] (probed with the value's
//!   key), the `prefix`/`suffix` forms by key length like the case-sensitive ones;
//! * `numeric` ranges and `cidr` blocks: interval trees ([`super::interval`]), one per
//!   address family (a block is stored with the interval it matches in each family);
//! * `exists: true`: a list;
//! * `wildcard` and `anything-but`: a short list checked one by one.
//!
//! Matching an event flattens only the indexed paths, looks each leaf up in its path's
//! index to collect candidate conjunctions, and fully checks only those (plus the few
//! conjunctions that can hold through absent fields alone), with the same code as
//! [`Pattern::matches`](super::Pattern::matches) — so the index is a filter that must
//! never drop a match, which the property tests check.

use super::cidr::{Family, parse_ip};
use super::flatten::{Flat, PathTable, Scalar};
use super::ignore_case;
use super::interval::{IntervalBuilder, IntervalIndex};
use super::matcher::conjunction_matches;
use super::numeric::sortable;
use super::parse::{Condition, Conjunction, Field};
use foldhash::HashMap;

/// Hash map from a literal to conjunction ids (foldhash: fast for short keys).
type Map<K> = HashMap<K, Vec<u32>>;

/// Compiled rule set.
#[derive(Clone, Debug, Default)]
pub(crate) struct Index {
    /// Paths used by any rule.
    pub(crate) table: PathTable,
    /// Anchor conditions per path id; values are conjunction ids.
    fields: Vec<FieldIndex>,
    /// All conjunctions of all rules.
    conjunctions: Vec<Conj>,
    /// Conjunctions with no anchor (every field allows absence): always checked.
    always: Vec<u32>,
}

#[derive(Clone, Debug)]
struct Conj {
    rule: u32,
    fields: Conjunction,
    paths: Vec<u32>,
}

/// How selective a condition is as an anchor (lower is better).
fn rank(condition: &Condition) -> u8 {
    match condition {
        Condition::ExactStr(_)
        | Condition::ExactNum(_)
        | Condition::ExactBool(_)
        | Condition::ExactNull
        | Condition::EqualsIgnoreCase(_) => 0,
        Condition::Prefix(_)
        | Condition::Suffix(_)
        | Condition::PrefixIgnoreCase(_)
        | Condition::SuffixIgnoreCase(_) => 1,
        Condition::Numeric(_) | Condition::Cidr(_) => 2,
        Condition::Wildcard(_) => 3,
        Condition::Exists(_) | Condition::AnythingBut(_) => 4,
    }
}

/// Literal strings grouped by byte length, for prefix/suffix probes.
#[derive(Clone, Debug, Default)]
struct LenMap {
    by_len: Vec<(usize, Map<Box<[u8]>>)>,
}

impl LenMap {
    fn add(&mut self, literal: &str, conj: u32) {
        let len = literal.len();
        let at = match self.by_len.iter().position(|(l, _)| *l == len) {
            Some(at) => at,
            None => {
                self.by_len.push((len, Map::default()));
                self.by_len.len() - 1
            }
        };
        if let Some((_, map)) = self.by_len.get_mut(at) {
            map.entry(literal.as_bytes().into()).or_default().push(conj);
        }
    }

    fn prefixes_of(&self, value: &[u8], found: &mut impl FnMut(u32)) {
        for (len, map) in &self.by_len {
            if let Some(head) = value.get(..*len)
                && let Some(conjs) = map.get(head)
            {
                conjs.iter().for_each(|&c| found(c));
            }
        }
    }

    fn suffixes_of(&self, value: &[u8], found: &mut impl FnMut(u32)) {
        for (len, map) in &self.by_len {
            if let Some(start) = value.len().checked_sub(*len)
                && let Some(conjs) = map.get(&value[start..])
            {
                conjs.iter().for_each(|&c| found(c));
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.by_len.is_empty()
    }
}

/// The conditions on one field path, indexed.
#[derive(Clone, Debug, Default)]
struct FieldIndex {
    exact_str: Map<Box<str>>,
    exact_num: Map<u64>,
    exact_true: Vec<u32>,
    exact_false: Vec<u32>,
    exact_null: Vec<u32>,
    prefix: LenMap,
    suffix: LenMap,
    ignore_case: Map<Box<str>>,
    prefix_ignore_case: LenMap,
    suffix_ignore_case: LenMap,
    numeric: IntervalIndex,
    cidr_v4: IntervalIndex,
    cidr_v6: IntervalIndex,
    exists: Vec<u32>,
    /// Conditions without an index (wildcard, anything-but, the rare ignore-case text
    /// without a key), checked one by one.
    other: Vec<(Condition, u32)>,
}

/// Interval builders of one path, frozen into its [`FieldIndex`] at the end.
#[derive(Default)]
struct Intervals {
    numeric: IntervalBuilder,
    cidr_v4: IntervalBuilder,
    cidr_v6: IntervalBuilder,
}

impl FieldIndex {
    fn add(&mut self, condition: &Condition, conj: u32, intervals: &mut Intervals) {
        match condition {
            Condition::ExactStr(s) => self
                .exact_str
                .entry(s.as_str().into())
                .or_default()
                .push(conj),
            Condition::ExactNum(n) => self.exact_num.entry(sortable(*n)).or_default().push(conj),
            Condition::ExactBool(true) => self.exact_true.push(conj),
            Condition::ExactBool(false) => self.exact_false.push(conj),
            Condition::ExactNull => self.exact_null.push(conj),
            Condition::Prefix(p) => self.prefix.add(p, conj),
            Condition::Suffix(p) => self.suffix.add(p, conj),
            Condition::EqualsIgnoreCase(x) => match x.key() {
                Some(key) => self.ignore_case.entry(key.into()).or_default().push(conj),
                None => self.other.push((condition.clone(), conj)),
            },
            Condition::PrefixIgnoreCase(x) => match x.key() {
                Some(key) => self.prefix_ignore_case.add(key, conj),
                None => self.other.push((condition.clone(), conj)),
            },
            Condition::SuffixIgnoreCase(x) => match x.key() {
                Some(key) => self.suffix_ignore_case.add(key, conj),
                None => self.other.push((condition.clone(), conj)),
            },
            Condition::Numeric(range) => {
                if let Some((first, last)) = range.key_interval() {
                    intervals.numeric.add(first.into(), last.into(), conj);
                }
            }
            Condition::Cidr(c) => {
                if let Some((first, last)) = c.interval(Family::V4) {
                    intervals.cidr_v4.add(first, last, conj);
                }
                if let Some((first, last)) = c.interval(Family::V6) {
                    intervals.cidr_v6.add(first, last, conj);
                }
            }
            Condition::Exists(true) => self.exists.push(conj),
            // Anchors never allow absence; nothing to index.
            Condition::Exists(false) => {}
            Condition::Wildcard(_) | Condition::AnythingBut(_) => {
                self.other.push((condition.clone(), conj));
            }
        }
    }

    fn freeze(&mut self, intervals: Intervals) {
        self.numeric = intervals.numeric.build();
        self.cidr_v4 = intervals.cidr_v4.build();
        self.cidr_v6 = intervals.cidr_v6.build();
    }

    fn needs_key(&self) -> bool {
        !(self.ignore_case.is_empty()
            && self.prefix_ignore_case.is_empty()
            && self.suffix_ignore_case.is_empty())
    }

    /// Calls `found` with every conjunction whose anchor the value satisfies.
    fn collect(&self, value: &Scalar<'_>, mut found: impl FnMut(u32)) {
        let each =
            |list: &Vec<u32>, found: &mut dyn FnMut(u32)| list.iter().for_each(|&s| found(s));
        match value {
            Scalar::Str(s) => {
                if let Some(conjs) = self.exact_str.get(s.as_ref()) {
                    each(conjs, &mut found);
                }
                self.prefix.prefixes_of(s.as_bytes(), &mut found);
                self.suffix.suffixes_of(s.as_bytes(), &mut found);
                if self.needs_key() {
                    let key = ignore_case::key(s);
                    if let Some(conjs) = self.ignore_case.get(key.as_str()) {
                        each(conjs, &mut found);
                    }
                    self.prefix_ignore_case
                        .prefixes_of(key.as_bytes(), &mut found);
                    self.suffix_ignore_case
                        .suffixes_of(key.as_bytes(), &mut found);
                }
                if !(self.cidr_v4.is_empty() && self.cidr_v6.is_empty())
                    && let Some((family, ip)) = parse_ip(s)
                {
                    match family {
                        Family::V4 => self.cidr_v4.stab(ip, &mut found),
                        Family::V6 => self.cidr_v6.stab(ip, &mut found),
                    }
                }
            }
            Scalar::Num(n) => {
                let key = sortable(*n);
                if let Some(conjs) = self.exact_num.get(&key) {
                    each(conjs, &mut found);
                }
                self.numeric.stab(key.into(), &mut found);
            }
            Scalar::Bool(true) => each(&self.exact_true, &mut found),
            Scalar::Bool(false) => each(&self.exact_false, &mut found),
            Scalar::Null => each(&self.exact_null, &mut found),
        }
        each(&self.exists, &mut found);
        for (condition, conj) in &self.other {
            if condition.matches(value) {
                found(*conj);
            }
        }
    }
}

impl Index {
    /// Compiles rules: `(rule number, its conjunctions)`.
    pub(crate) fn build<'p>(rules: impl IntoIterator<Item = (u32, &'p [Conjunction])>) -> Self {
        let mut index = Index::default();
        let mut intervals: Vec<Intervals> = Vec::new();
        let rules: Vec<(u32, &[Conjunction])> = rules.into_iter().collect();
        // How many conjunctions share each (path, condition): an anchor shared by many
        // rules (e.g. `"status": ["paid"]`) would make all of them candidates at once.
        let key = |field: &Field, c: &Condition| format!("{}\u{0}{c:?}", field.path);
        let mut popularity: HashMap<String, usize> = HashMap::default();
        for field in rules.iter().flat_map(|(_, cs)| cs.iter()).flatten() {
            for c in &field.conditions {
                *popularity.entry(key(field, c)).or_default() += 1;
            }
        }
        for (rule, conjunctions) in rules {
            for conjunction in conjunctions {
                let id = index.conjunctions.len() as u32;
                let paths: Vec<u32> = conjunction
                    .iter()
                    .map(|field| index.table.intern(&field.path))
                    .collect();
                while index.fields.len() < index.table.len() {
                    index.fields.push(FieldIndex::default());
                    intervals.push(Intervals::default());
                }
                // Prefer selective kinds of condition, then values few rules share;
                // `exists: true` and `anything-but` match almost anything, so last.
                let anchor = conjunction
                    .iter()
                    .zip(&paths)
                    .filter(|(field, _)| !field.allows_absence())
                    .min_by_key(|(field, _)| {
                        let worst = field.conditions.iter().map(rank).max().unwrap_or(0);
                        let shared: usize = field
                            .conditions
                            .iter()
                            .map(|c| popularity.get(&key(field, c)).copied().unwrap_or(0))
                            .sum();
                        (worst >= 4, shared, worst)
                    });
                match anchor {
                    Some((field, &path)) => {
                        if let (Some(f), Some(iv)) = (
                            index.fields.get_mut(path as usize),
                            intervals.get_mut(path as usize),
                        ) {
                            for condition in &field.conditions {
                                f.add(condition, id, iv);
                            }
                        }
                    }
                    None => index.always.push(id),
                }
                index.conjunctions.push(Conj {
                    rule,
                    fields: conjunction.clone(),
                    paths,
                });
            }
        }
        for (field, iv) in index.fields.iter_mut().zip(intervals) {
            field.freeze(iv);
        }
        index
    }

    /// Rule numbers the flattened event matches, sorted, each once.
    pub(crate) fn matches(&self, flat: &Flat<'_>) -> Vec<u32> {
        let mut candidates: Vec<u32> = Vec::new();
        for leaf in &flat.leaves {
            if let Some(field) = self.fields.get(leaf.path as usize) {
                field.collect(&leaf.value, |conj| candidates.push(conj));
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        let mut rules: Vec<u32> = candidates
            .iter()
            .chain(&self.always)
            .filter_map(|&id| self.conjunctions.get(id as usize))
            .filter(|c| conjunction_matches(&c.fields, &c.paths, flat))
            .map(|c| c.rule)
            .collect();
        rules.sort_unstable();
        rules.dedup();
        rules
    }
}
