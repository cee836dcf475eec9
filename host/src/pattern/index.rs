//! The rule-set automaton: many patterns compiled into per-field indexes.
//!
//! Every pattern is a disjunction of conjunctions; every field of every conjunction is a
//! *slot* with a global id. For each field path the index keeps, per kind of condition,
//! a structure that finds the slots a value satisfies without looking at the others:
//!
//! * exact strings, numbers (by value), booleans and `null`: hash maps / lists;
//! * `prefix` / `suffix` (and their `equals-ignore-case` forms): one hash map per
//!   distinct literal length, probed with the value's first / last bytes;
//! * `equals-ignore-case`: a hash map of lower-cased values;
//! * `numeric` ranges and `cidr` blocks: interval trees ([`super::interval`]);
//! * `exists: true`: a list; `exists: false` is a flag on the slot;
//! * `wildcard` and `anything-but`: a short list checked one by one.
//!
//! Matching an event flattens only the indexed paths, looks each leaf up in its path's
//! index to collect `(slot, leaf)` hits, and then checks only the conjunctions that got
//! a hit (plus those that can hold through absent fields alone): all their slots must be
//! satisfied, by one array-consistent choice of leaves.

use super::cidr::{Family, parse_ip};
use super::flatten::{Flat, PathTable, Scalar};
use super::interval::{IntervalBuilder, IntervalIndex};
use super::matcher::choose;
use super::numeric::sortable;
use super::parse::{Condition, Conjunction};
use std::collections::HashMap;

/// Hash map with the std hasher; keys are short strings and numbers.
type Map<K> = HashMap<K, Vec<u32>>;

/// Compiled rule set.
#[derive(Clone, Debug, Default)]
pub(crate) struct Index {
    /// Paths used by any rule.
    pub(crate) table: PathTable,
    /// Per path id.
    fields: Vec<FieldIndex>,
    /// All conjunctions of all rules.
    conjunctions: Vec<Conj>,
    /// Global slot id → conjunction id.
    slot_conj: Vec<u32>,
    /// Conjunctions that can hold with no hit at all (every slot allows absence).
    absence_only: Vec<u32>,
}

#[derive(Clone, Debug)]
struct Conj {
    rule: u32,
    first_slot: u32,
    slots: Vec<Slot>,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    path: u32,
    absence_ok: bool,
}

/// Literal strings grouped by byte length, for prefix/suffix probes.
#[derive(Clone, Debug, Default)]
struct LenMap {
    by_len: Vec<(usize, Map<Box<[u8]>>)>,
}

impl LenMap {
    fn add(&mut self, literal: &str, slot: u32) {
        let len = literal.len();
        let at = match self.by_len.iter().position(|(l, _)| *l == len) {
            Some(at) => at,
            None => {
                self.by_len.push((len, Map::default()));
                self.by_len.len() - 1
            }
        };
        if let Some((_, map)) = self.by_len.get_mut(at) {
            map.entry(literal.as_bytes().into()).or_default().push(slot);
        }
    }

    fn prefixes_of(&self, value: &[u8], found: &mut impl FnMut(u32)) {
        for (len, map) in &self.by_len {
            if let Some(head) = value.get(..*len)
                && let Some(slots) = map.get(head)
            {
                slots.iter().for_each(|&s| found(s));
            }
        }
    }

    fn suffixes_of(&self, value: &[u8], found: &mut impl FnMut(u32)) {
        for (len, map) in &self.by_len {
            if let Some(start) = value.len().checked_sub(*len)
                && let Some(slots) = map.get(&value[start..])
            {
                slots.iter().for_each(|&s| found(s));
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
    /// Conditions without an index (wildcard, anything-but), checked one by one.
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
    fn add(&mut self, condition: &Condition, slot: u32, intervals: &mut Intervals) {
        match condition {
            Condition::ExactStr(s) => self
                .exact_str
                .entry(s.as_str().into())
                .or_default()
                .push(slot),
            Condition::ExactNum(n) => self.exact_num.entry(sortable(*n)).or_default().push(slot),
            Condition::ExactBool(true) => self.exact_true.push(slot),
            Condition::ExactBool(false) => self.exact_false.push(slot),
            Condition::ExactNull => self.exact_null.push(slot),
            Condition::Prefix(p) => self.prefix.add(p, slot),
            Condition::Suffix(p) => self.suffix.add(p, slot),
            Condition::EqualsIgnoreCase(s) => self
                .ignore_case
                .entry(s.as_str().into())
                .or_default()
                .push(slot),
            Condition::PrefixIgnoreCase(p) => self.prefix_ignore_case.add(p, slot),
            Condition::SuffixIgnoreCase(p) => self.suffix_ignore_case.add(p, slot),
            Condition::Numeric(range) => {
                if let Some((first, last)) = range.key_interval() {
                    intervals.numeric.add(first.into(), last.into(), slot);
                }
            }
            Condition::Cidr(c) => match c.family {
                Family::V4 => intervals.cidr_v4.add(c.first, c.last, slot),
                Family::V6 => intervals.cidr_v6.add(c.first, c.last, slot),
            },
            Condition::Exists(true) => self.exists.push(slot),
            // Absence is a property of the slot, not something a value can satisfy.
            Condition::Exists(false) => {}
            Condition::Wildcard(_) | Condition::AnythingBut(_) => {
                self.other.push((condition.clone(), slot));
            }
        }
    }

    fn freeze(&mut self, intervals: Intervals) {
        self.numeric = intervals.numeric.build();
        self.cidr_v4 = intervals.cidr_v4.build();
        self.cidr_v6 = intervals.cidr_v6.build();
    }

    fn needs_lowercase(&self) -> bool {
        !(self.ignore_case.is_empty()
            && self.prefix_ignore_case.is_empty()
            && self.suffix_ignore_case.is_empty())
    }

    /// Calls `found` with every slot the value satisfies.
    fn collect(&self, value: &Scalar<'_>, mut found: impl FnMut(u32)) {
        let each =
            |list: &Vec<u32>, found: &mut dyn FnMut(u32)| list.iter().for_each(|&s| found(s));
        match value {
            Scalar::Str(s) => {
                if let Some(slots) = self.exact_str.get(s.as_ref()) {
                    each(slots, &mut found);
                }
                self.prefix.prefixes_of(s.as_bytes(), &mut found);
                self.suffix.suffixes_of(s.as_bytes(), &mut found);
                if self.needs_lowercase() {
                    let lower = s.to_lowercase();
                    if let Some(slots) = self.ignore_case.get(lower.as_str()) {
                        each(slots, &mut found);
                    }
                    self.prefix_ignore_case
                        .prefixes_of(lower.as_bytes(), &mut found);
                    self.suffix_ignore_case
                        .suffixes_of(lower.as_bytes(), &mut found);
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
                if let Some(slots) = self.exact_num.get(&key) {
                    each(slots, &mut found);
                }
                self.numeric.stab(key.into(), &mut found);
            }
            Scalar::Bool(true) => each(&self.exact_true, &mut found),
            Scalar::Bool(false) => each(&self.exact_false, &mut found),
            Scalar::Null => each(&self.exact_null, &mut found),
        }
        each(&self.exists, &mut found);
        for (condition, slot) in &self.other {
            if condition.matches(value) {
                found(*slot);
            }
        }
    }
}

impl Index {
    /// Compiles rules: `(rule number, its conjunctions)`.
    pub(crate) fn build<'p>(rules: impl IntoIterator<Item = (u32, &'p [Conjunction])>) -> Self {
        let mut index = Index::default();
        let mut intervals: Vec<Intervals> = Vec::new();
        for (rule, conjunctions) in rules {
            for conjunction in conjunctions {
                let conj_id = index.conjunctions.len() as u32;
                let first_slot = index.slot_conj.len() as u32;
                let mut slots = Vec::with_capacity(conjunction.len());
                for field in conjunction {
                    let slot = index.slot_conj.len() as u32;
                    index.slot_conj.push(conj_id);
                    let path = index.table.intern(&field.path);
                    while index.fields.len() <= path as usize {
                        index.fields.push(FieldIndex::default());
                        intervals.push(Intervals::default());
                    }
                    if let (Some(f), Some(iv)) = (
                        index.fields.get_mut(path as usize),
                        intervals.get_mut(path as usize),
                    ) {
                        for condition in &field.conditions {
                            f.add(condition, slot, iv);
                        }
                    }
                    slots.push(Slot {
                        path,
                        absence_ok: field.allows_absence(),
                    });
                }
                if slots.iter().all(|s| s.absence_ok) {
                    index.absence_only.push(conj_id);
                }
                index.conjunctions.push(Conj {
                    rule,
                    first_slot,
                    slots,
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
        let mut hits: Vec<(u32, u32)> = Vec::new();
        for (i, leaf) in flat.leaves.iter().enumerate() {
            if let Some(field) = self.fields.get(leaf.path as usize) {
                field.collect(&leaf.value, |slot| hits.push((slot, i as u32)));
            }
        }
        hits.sort_unstable();
        hits.dedup();

        let mut rules = Vec::new();
        let mut scratch = Scratch::default();
        let mut rest = hits.as_slice();
        while let Some(&(slot, _)) = rest.first() {
            let conj = self.slot_conj.get(slot as usize).copied().unwrap_or(0);
            let len = rest
                .iter()
                .position(|&(s, _)| self.slot_conj.get(s as usize) != Some(&conj))
                .unwrap_or(rest.len());
            let (group, tail) = rest.split_at(len);
            if let Some(c) = self.conjunctions.get(conj as usize)
                && self.holds(c, group, flat, &mut scratch)
            {
                rules.push(c.rule);
            }
            rest = tail;
        }
        for &conj in &self.absence_only {
            if let Some(c) = self.conjunctions.get(conj as usize)
                && self.holds(c, &[], flat, &mut scratch)
            {
                rules.push(c.rule);
            }
        }
        rules.sort_unstable();
        rules.dedup();
        rules
    }

    /// Whether a conjunction holds given its hits (sorted by slot, then leaf).
    fn holds(
        &self,
        conj: &Conj,
        hits: &[(u32, u32)],
        flat: &Flat<'_>,
        scratch: &mut Scratch,
    ) -> bool {
        scratch.bounds.clear();
        let mut rest = hits;
        for (offset, slot) in conj.slots.iter().enumerate() {
            let global = conj.first_slot + offset as u32;
            let len = rest.iter().take_while(|&&(s, _)| s == global).count();
            let (mine, tail) = rest.split_at(len);
            rest = tail;
            if mine.is_empty() {
                let present = flat
                    .present
                    .get(slot.path as usize)
                    .copied()
                    .unwrap_or(false);
                if slot.absence_ok && !present {
                    continue;
                }
                return false;
            }
            let start = hits.len() - rest.len() - len;
            scratch.bounds.push((start, start + len));
        }
        if scratch.bounds.len() < 2 {
            return true;
        }
        scratch.leaves.clear();
        scratch.leaves.extend(hits.iter().map(|&(_, leaf)| leaf));
        let slots: Vec<&[u32]> = scratch
            .bounds
            .iter()
            .filter_map(|&(a, b)| scratch.leaves.get(a..b))
            .collect();
        choose(&slots, flat)
    }
}

/// Buffers reused across the conjunctions checked for one event.
#[derive(Default)]
struct Scratch {
    bounds: Vec<(usize, usize)>,
    leaves: Vec<u32>,
}
