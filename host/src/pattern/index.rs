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
//! * `wildcard`: by the literal text it starts with (or else ends with), probed like
//!   a prefix (suffix), so only wildcards whose literal ends the value has are checked;
//! * `anything-but` of strings, numbers, prefixes or suffixes: each such condition is
//!   an *entry* that holds for every value but the ones it excludes, so a value makes
//!   candidates of all entries except those whose exclusions it hits. The exclusions
//!   are hash maps (exact values) and length maps (prefixes, suffixes) to entry lists;
//!   for a list holding most of a path's entries the complement is kept too, so the
//!   common decoy — many rules excluding the value the event has — costs one lookup,
//!   not one check per rule;
//! * what is left (wildcards starting and ending with a star, `anything-but` by
//!   wildcard or ignoring case, ignore-case text without a key): a short list checked
//!   one by one.
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
use super::parse::{AnythingBut, Condition, Conjunction, Field};
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

/// Literal strings grouped by byte length, for prefix/suffix probes; values are
/// conjunction ids unless said otherwise.
#[derive(Clone, Debug)]
struct LenMap<V = Vec<u32>> {
    by_len: Vec<(usize, ByLiteral<V>)>,
}

/// The literals of one length.
type ByLiteral<V> = HashMap<Box<[u8]>, V>;

impl<V> Default for LenMap<V> {
    fn default() -> Self {
        Self { by_len: Vec::new() }
    }
}

impl<V: Default> LenMap<V> {
    /// The value stored under `literal`, made if missing.
    fn entry(&mut self, literal: &str) -> &mut V {
        let len = literal.len();
        let at = match self.by_len.iter().position(|(l, _)| *l == len) {
            Some(at) => at,
            None => {
                self.by_len.push((len, HashMap::default()));
                self.by_len.len() - 1
            }
        };
        let (_, map) = &mut self.by_len[at];
        map.entry(literal.as_bytes().into()).or_default()
    }
}

impl<V> LenMap<V> {
    /// Calls `found` with the value of every literal that is a prefix of `value`.
    fn prefix_lists<'a>(&'a self, value: &[u8], mut found: impl FnMut(&'a V)) {
        for (len, map) in &self.by_len {
            if let Some(head) = value.get(..*len)
                && let Some(list) = map.get(head)
            {
                found(list);
            }
        }
    }

    /// Calls `found` with the value of every literal that is a suffix of `value`.
    fn suffix_lists<'a>(&'a self, value: &[u8], mut found: impl FnMut(&'a V)) {
        for (len, map) in &self.by_len {
            if let Some(start) = value.len().checked_sub(*len)
                && let Some(list) = map.get(&value[start..])
            {
                found(list);
            }
        }
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.by_len.iter_mut().flat_map(|(_, map)| map.values_mut())
    }

    fn is_empty(&self) -> bool {
        self.by_len.is_empty()
    }
}

impl LenMap {
    fn add(&mut self, literal: &str, conj: u32) {
        self.entry(literal).push(conj);
    }

    fn prefixes_of(&self, value: &[u8], found: &mut impl FnMut(u32)) {
        self.prefix_lists(value, |conjs| conjs.iter().for_each(|&c| found(c)));
    }

    fn suffixes_of(&self, value: &[u8], found: &mut impl FnMut(u32)) {
        self.suffix_lists(value, |conjs| conjs.iter().for_each(|&c| found(c)));
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
    /// Wildcards by the literal text they start with.
    wildcard_prefix: LenMap,
    /// Wildcards starting with a star, by the literal text they end with.
    wildcard_suffix: LenMap,
    anything_but: AnythingButIndex,
    /// Conditions without an index (see the module docs), checked one by one.
    other: Vec<(Condition, u32)>,
}

/// The `anything-but` conditions of one path that exclude exact strings, numbers,
/// prefixes or suffixes (see the module docs).
#[derive(Clone, Debug, Default)]
struct AnythingButIndex {
    /// Conjunction id of each entry.
    entries: Vec<u32>,
    /// Excluded string → the entries excluding it.
    strings: HashMap<Box<str>, Excluding>,
    /// Excluded number ([`sortable`]) → the entries excluding it.
    numbers: HashMap<u64, Excluding>,
    /// Excluded prefix → the entries excluding strings starting with it.
    prefixes: LenMap<Excluding>,
    /// Excluded suffix → the entries excluding strings ending with it.
    suffixes: LenMap<Excluding>,
}

/// The entries one excluded value (or prefix, suffix) hits.
#[derive(Clone, Debug, Default)]
struct Excluding {
    /// Entry numbers, sorted, each once (after [`AnythingButIndex::freeze`]).
    entries: Vec<u32>,
    /// Where `entries` holds more than half of the path's entries: the conjunction
    /// ids of the others, the candidates when this is the only exclusion hit.
    kept: Option<Box<[u32]>>,
}

/// The exclusions one value hits; the first apart, as it is most often the only one.
#[derive(Default)]
struct Hits<'a> {
    first: Option<&'a Excluding>,
    more: Vec<&'a Excluding>,
}

impl<'a> Hits<'a> {
    fn push(&mut self, excluding: &'a Excluding) {
        match self.first {
            None => self.first = Some(excluding),
            Some(_) => self.more.push(excluding),
        }
    }
}

impl AnythingButIndex {
    /// Adds the condition as an entry if its exclusions are indexable; false if not.
    fn add(&mut self, but: &AnythingBut, conj: u32) -> bool {
        let entry = self.entries.len() as u32;
        match but {
            AnythingBut::Strings(xs) => {
                for x in xs {
                    let excluding = self.strings.entry(x.as_str().into()).or_default();
                    excluding.entries.push(entry);
                }
            }
            AnythingBut::Numbers(ns) => {
                for n in ns {
                    let excluding = self.numbers.entry(sortable(*n)).or_default();
                    excluding.entries.push(entry);
                }
            }
            AnythingBut::Prefixes(ps) => {
                for p in ps {
                    self.prefixes.entry(p).entries.push(entry);
                }
            }
            AnythingBut::Suffixes(ps) => {
                for p in ps {
                    self.suffixes.entry(p).entries.push(entry);
                }
            }
            AnythingBut::IgnoreCase(_) | AnythingBut::Wildcards(_) => return false,
        }
        self.entries.push(conj);
        true
    }

    /// Removes repeats from the lists and keeps the complements of the large ones.
    fn freeze(&mut self) {
        let all = &self.entries;
        let lists = self
            .strings
            .values_mut()
            .chain(self.numbers.values_mut())
            .chain(self.prefixes.values_mut())
            .chain(self.suffixes.values_mut());
        for excluding in lists {
            let list = &mut excluding.entries;
            // Entries are added in order, so repeats (one condition excluding the
            // same value twice) are adjacent.
            list.dedup();
            list.shrink_to_fit();
            if list.len() * 2 > all.len() {
                let mut hit = list.iter().copied().peekable();
                let rest: Vec<u32> = (0u32..)
                    .zip(all)
                    .filter(|&(entry, _)| hit.next_if_eq(&entry).is_none())
                    .map(|(_, &conj)| conj)
                    .collect();
                excluding.kept = Some(rest.into());
            }
        }
    }

    /// Calls `found` with the conjunction of every entry whose exclusions the value
    /// does not hit.
    fn collect(&self, value: &Scalar<'_>, found: &mut impl FnMut(u32)) {
        if self.entries.is_empty() {
            return;
        }
        let mut hits = Hits::default();
        match value {
            Scalar::Str(s) => {
                if let Some(excluding) = self.strings.get(s.as_ref()) {
                    hits.push(excluding);
                }
                self.prefixes.prefix_lists(s.as_bytes(), |e| hits.push(e));
                self.suffixes.suffix_lists(s.as_bytes(), |e| hits.push(e));
            }
            Scalar::Num(n) => {
                if let Some(excluding) = self.numbers.get(&sortable(*n)) {
                    hits.push(excluding);
                }
            }
            Scalar::Bool(_) | Scalar::Null => {}
        }
        let Hits { first, more } = hits;
        let Some(first) = first else {
            self.entries.iter().for_each(|&c| found(c));
            return;
        };
        if more.is_empty()
            && let Some(kept) = &first.kept
        {
            kept.iter().for_each(|&c| found(c));
            return;
        }
        let mut excluded = vec![0u64; self.entries.len().div_ceil(64)];
        for excluding in more.into_iter().chain([first]) {
            for &entry in &excluding.entries {
                if let Some(word) = excluded.get_mut(entry as usize / 64) {
                    *word |= 1 << (entry % 64);
                }
            }
        }
        for (entry, &conj) in self.entries.iter().enumerate() {
            if excluded
                .get(entry / 64)
                .is_some_and(|word| word & (1 << (entry % 64)) == 0)
            {
                found(conj);
            }
        }
    }
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
            Condition::Wildcard(w) => match w.literal_ends() {
                (prefix, _) if !prefix.is_empty() => self.wildcard_prefix.add(prefix, conj),
                (_, suffix) if !suffix.is_empty() => self.wildcard_suffix.add(suffix, conj),
                _ => self.other.push((condition.clone(), conj)),
            },
            Condition::AnythingBut(but) => {
                if !self.anything_but.add(but, conj) {
                    self.other.push((condition.clone(), conj));
                }
            }
        }
    }

    fn freeze(&mut self, intervals: Intervals) {
        self.numeric = intervals.numeric.build();
        self.cidr_v4 = intervals.cidr_v4.build();
        self.cidr_v6 = intervals.cidr_v6.build();
        self.anything_but.freeze();
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
                self.wildcard_prefix.prefixes_of(s.as_bytes(), &mut found);
                self.wildcard_suffix.suffixes_of(s.as_bytes(), &mut found);
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
        self.anything_but.collect(value, &mut found);
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

#[cfg(test)]
mod tests {
    use crate::pattern::{Pattern, RuleSet};
    use serde_json::{Value, json};

    fn set(patterns: &[Value]) -> RuleSet<usize> {
        let mut set = RuleSet::new();
        for (i, p) in patterns.iter().enumerate() {
            set.insert(i, Pattern::from_value(p, &Default::default()).unwrap());
        }
        set
    }

    fn matched(set: &RuleSet<usize>, event: Value) -> Vec<usize> {
        let mut got = set.matches(&event);
        got.sort_unstable();
        let mut json = set.matches_json(event.to_string().as_bytes()).unwrap();
        json.sort_unstable();
        assert_eq!(got, json);
        got
    }

    #[test]
    fn anything_but_entries_are_kept_unless_their_exclusion_is_hit() {
        // Rules 0..8 exclude "paid" (more than half of the entries: its complement is
        // kept), 8 excludes "x", 9 strings starting "q", 10 strings ending "zz", 11
        // the number 5.
        let mut patterns: Vec<Value> = (0..8)
            .map(|i| json!({"s": [{"anything-but": ["paid", format!("v{i}")]}]}))
            .collect();
        patterns.push(json!({"s": [{"anything-but": "x"}]}));
        patterns.push(json!({"s": [{"anything-but": {"prefix": "q"}}]}));
        patterns.push(json!({"s": [{"anything-but": {"suffix": "zz"}}]}));
        patterns.push(json!({"s": [{"anything-but": [5]}]}));
        let set = set(&patterns);
        // One exclusion hit, a large one: its complement.
        assert_eq!(matched(&set, json!({"s": "paid"})), vec![8, 9, 10, 11]);
        // One small hit, and two hits: the entries one by one.
        assert_eq!(
            matched(&set, json!({"s": "v3"})),
            (0..3).chain(4..12).collect::<Vec<_>>()
        );
        assert_eq!(
            matched(&set, json!({"s": "qzz"})),
            (0..9).chain([11]).collect::<Vec<_>>()
        );
        // Strings exclusions never exclude numbers, and the other way round.
        assert_eq!(matched(&set, json!({"s": 5})), (0..11).collect::<Vec<_>>());
        assert_eq!(
            matched(&set, json!({"s": "5"})),
            (0..12).collect::<Vec<_>>()
        );
        assert_eq!(
            matched(&set, json!({"s": true})),
            (0..12).collect::<Vec<_>>()
        );
        assert_eq!(matched(&set, json!({"t": "paid"})), Vec::<usize>::new());
        // In an array, one element not excluded is enough.
        assert_eq!(
            matched(&set, json!({"s": ["paid", "x"]})),
            (0..12).collect::<Vec<_>>()
        );
    }

    #[test]
    fn wildcards_are_found_by_their_literal_ends() {
        let set = set(&[
            json!({"w": [{"wildcard": "ab*yz"}]}),
            json!({"w": [{"wildcard": "*yz"}]}),
            json!({"w": [{"wildcard": "*b*"}]}),
            json!({"w": [{"wildcard": "abc"}]}),
            json!({"w": [{"wildcard": "ab*"}, {"wildcard": "*q"}]}),
        ]);
        assert_eq!(matched(&set, json!({"w": "abxyz"})), vec![0, 1, 2, 4]);
        assert_eq!(matched(&set, json!({"w": "abc"})), vec![2, 3, 4]);
        assert_eq!(matched(&set, json!({"w": "xq"})), vec![4]);
        assert_eq!(matched(&set, json!({"w": "yz"})), vec![1]);
    }
}
