//! Matching one pattern: conditions against scalars, fields against leaves, and the
//! array-consistent choice of one leaf per field.

use super::flatten::{Flat, Scalar};
use super::numeric::normalize;
use super::parse::{AnythingBut, Condition, Conjunction, Field};

impl Condition {
    /// Whether a present scalar satisfies the condition. `exists: false` never does (it
    /// is satisfied by absence, which the caller checks).
    pub(crate) fn matches(&self, value: &Scalar<'_>) -> bool {
        match (self, value) {
            (Condition::Exists(present), _) => *present,
            (Condition::ExactNull, Scalar::Null) => true,
            (Condition::ExactBool(b), Scalar::Bool(v)) => b == v,
            (Condition::ExactNum(n), Scalar::Num(v)) => *n == normalize(*v),
            (Condition::Numeric(range), Scalar::Num(v)) => range.contains(*v),
            (Condition::AnythingBut(but), value) => !but.excludes(value),
            (condition, Scalar::Str(s)) => condition.matches_str(s),
            _ => false,
        }
    }

    fn matches_str(&self, s: &str) -> bool {
        match self {
            Condition::ExactStr(x) => x == s,
            Condition::Prefix(p) => s.starts_with(p.as_str()),
            Condition::Suffix(p) => s.ends_with(p.as_str()),
            Condition::EqualsIgnoreCase(x) => s.to_lowercase() == *x,
            Condition::PrefixIgnoreCase(p) => s.to_lowercase().starts_with(p.as_str()),
            Condition::SuffixIgnoreCase(p) => s.to_lowercase().ends_with(p.as_str()),
            Condition::Wildcard(w) => w.matches(s),
            Condition::Cidr(c) => c.contains(s),
            _ => false,
        }
    }
}

impl AnythingBut {
    /// Whether the value is one of the excluded ones. String exclusions only exclude
    /// strings and numeric ones only numbers, so e.g. `{"anything-but": "x"}` matches
    /// the number 5 (event-ruler behaves the same way).
    pub(crate) fn excludes(&self, value: &Scalar<'_>) -> bool {
        match (self, value) {
            (AnythingBut::Numbers(ns), Scalar::Num(v)) => ns.contains(&normalize(*v)),
            (AnythingBut::Strings(xs), Scalar::Str(s)) => xs.iter().any(|x| x == s),
            (AnythingBut::Prefixes(ps), Scalar::Str(s)) => {
                ps.iter().any(|p| s.starts_with(p.as_str()))
            }
            (AnythingBut::Suffixes(ps), Scalar::Str(s)) => {
                ps.iter().any(|p| s.ends_with(p.as_str()))
            }
            (AnythingBut::IgnoreCase(xs), Scalar::Str(s)) => {
                let lower = s.to_lowercase();
                xs.contains(&lower)
            }
            (AnythingBut::Wildcards(ws), Scalar::Str(s)) => ws.iter().any(|w| w.matches(s)),
            _ => false,
        }
    }
}

/// Whether one conjunction holds for the event. `paths[i]` is the path id of field `i`.
pub(crate) fn conjunction_matches(
    conjunction: &Conjunction,
    paths: &[u32],
    flat: &Flat<'_>,
) -> bool {
    // First pass, allocation-free: every field must hold, and a field with a matching
    // leaf outside any array is consistent with any choice for the others.
    let mut constrained = 0;
    for (field, &path) in conjunction.iter().zip(paths) {
        let mut found = false;
        let mut free = false;
        for leaf in matching(field, path, flat) {
            found = true;
            if !flat.in_array(leaf) {
                free = true;
                break;
            }
        }
        if !found {
            if field.allows_absence() && !flat.present(path) {
                continue;
            }
            return false;
        }
        if !free {
            constrained += 1;
        }
    }
    if constrained < 2 {
        return true;
    }
    // Several fields can only be met inside arrays: search for a consistent choice.
    let slots: Vec<Vec<u32>> = conjunction
        .iter()
        .zip(paths)
        .map(|(field, &path)| matching(field, path, flat).collect())
        .filter(|leaves: &Vec<u32>| !leaves.is_empty())
        .collect();
    let slots: Vec<&[u32]> = slots.iter().map(Vec::as_slice).collect();
    choose(&slots, flat)
}

/// The leaves at `path` that satisfy one of the field's conditions.
fn matching<'f>(field: &'f Field, path: u32, flat: &'f Flat<'_>) -> impl Iterator<Item = u32> + 'f {
    flat.leaves_at(path).iter().copied().filter(move |&i| {
        flat.leaves
            .get(i as usize)
            .is_some_and(|leaf| field.conditions.iter().any(|c| c.matches(&leaf.value)))
    })
}

/// Whether one leaf can be picked from every slot such that all picks are pairwise
/// array-consistent. Every slot is non-empty.
pub(crate) fn choose(slots: &[&[u32]], flat: &Flat<'_>) -> bool {
    // Fields outside arrays never conflict: only slots whose every candidate sits in an
    // array need the search.
    let mut constrained: Vec<&[u32]> = slots
        .iter()
        .copied()
        .filter(|s| s.iter().all(|&leaf| flat.in_array(leaf)))
        .collect();
    if constrained.len() < 2 {
        return true;
    }
    constrained.sort_by_key(|s| s.len());
    let mut picked = Vec::with_capacity(constrained.len());
    search(&constrained, flat, &mut picked)
}

fn search(slots: &[&[u32]], flat: &Flat<'_>, picked: &mut Vec<u32>) -> bool {
    let Some((first, rest)) = slots.split_first() else {
        return true;
    };
    for &leaf in *first {
        if picked.iter().all(|&p| flat.consistent(p, leaf)) {
            picked.push(leaf);
            if search(rest, flat, picked) {
                return true;
            }
            picked.pop();
        }
    }
    false
}
