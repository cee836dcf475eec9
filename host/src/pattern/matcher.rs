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
            Condition::EqualsIgnoreCase(x) => x.equals(s),
            Condition::PrefixIgnoreCase(p) => p.is_prefix_of(s),
            Condition::SuffixIgnoreCase(p) => p.is_suffix_of(s),
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
            (AnythingBut::IgnoreCase(xs), Scalar::Str(s)) => xs.iter().any(|x| x.equals(s)),
            (AnythingBut::Wildcards(ws), Scalar::Str(s)) => ws.iter().any(|w| w.matches(s)),
            _ => false,
        }
    }
}

/// Whether one conjunction holds for the event. `paths[i]` is the path id of field `i`;
/// the fields are in event-ruler's order (see `parse::parse`).
///
/// Array consistency: the leaves chosen for the fields must never sit in different
/// elements of one array. A field met by `exists: false` must have no leaf consistent
/// with the leaves chosen for the fields *before* it: event-ruler walks a rule's fields
/// in order and checks absence against the array elements matched so far
/// (`ACFinder.tryMustNotExistMatch` / `StructuredFinder.handleAbsence` with
/// `NameState.getNameTransitions(event, membership)`), so a field present in another
/// array element counts as absent only when an earlier field chose an element without
/// it.
pub(crate) fn conjunction_matches(
    conjunction: &Conjunction,
    paths: &[u32],
    flat: &Flat<'_>,
) -> bool {
    // First pass, allocation-free. A field met by a leaf outside any array, or by being
    // absent from the whole event, cannot conflict with anything: it is settled.
    let mut unsettled = 0;
    let mut last_absence = None;
    for (i, (field, &path)) in conjunction.iter().zip(paths).enumerate() {
        let mut found = false;
        let mut free = false;
        for leaf in matching(field, path, flat) {
            found = true;
            if !flat.in_array(leaf) {
                free = true;
                break;
            }
        }
        if free {
            continue;
        }
        if field.allows_absence() {
            let present = flat.leaves_at(path);
            if present.is_empty() {
                continue;
            }
            if present.iter().all(|&leaf| flat.in_array(leaf)) {
                // Absent, perhaps, from the elements the earlier fields choose.
                last_absence = Some(i);
                unsettled += 1;
                continue;
            }
        }
        if !found {
            return false;
        }
        unsettled += 1;
    }
    if unsettled < 2 && last_absence.is_none() {
        return true;
    }
    // Search for a consistent choice among the unsettled fields, and the settled ones
    // before the last field that needs absence: choosing one of their leaves inside an
    // array may be what makes a later field absent.
    let mut options: Vec<Choices> = Vec::new();
    for (i, (field, &path)) in conjunction.iter().zip(paths).enumerate() {
        let mut leaves: Vec<u32> = matching(field, path, flat).collect();
        let free = leaves.iter().any(|&leaf| !flat.in_array(leaf));
        if free && last_absence.is_none_or(|last| i > last) {
            continue;
        }
        let at = flat.leaves_at(path);
        if field.allows_absence() && at.is_empty() {
            continue;
        }
        // Leaves in the same array elements are interchangeable: keep one of each.
        leaves.sort_by(|&a, &b| flat.trail(a).cmp(flat.trail(b)));
        leaves.dedup_by(|a, b| flat.trail(*a) == flat.trail(*b));
        let mut choices: Vec<Option<u32>> = leaves.into_iter().map(Some).collect();
        if field.allows_absence() && at.iter().all(|&leaf| flat.in_array(leaf)) {
            choices.push(None);
        }
        options.push(Choices {
            field: i,
            path,
            choices,
        });
    }
    options.sort_by_key(|o| o.choices.len());
    let mut picked = Vec::with_capacity(options.len());
    let mut absent = Vec::new();
    search(&options, flat, &mut picked, &mut absent)
}

/// One field's possible choices in the search: a leaf, or `None` for absent.
#[derive(Clone, Debug)]
struct Choices {
    /// Position of the field in its conjunction.
    field: usize,
    /// The field's path id.
    path: u32,
    choices: Vec<Option<u32>>,
}

/// Depth-first search over the fields' choices. Every choice in `options` is
/// consistent with `picked` (`(field, leaf)` pairs): after each pick the remaining
/// choices are filtered (forward checking), so a dead end shows up at once instead of
/// after trying every combination of the fields in between; the field with the fewest
/// choices goes next. Absences (`(field, path)` in `absent`) are checked once every
/// field has a choice, against the leaves picked for the fields before each.
fn search(
    options: &[Choices],
    flat: &Flat<'_>,
    picked: &mut Vec<(usize, u32)>,
    absent: &mut Vec<(usize, u32)>,
) -> bool {
    let Some((first, rest)) = options.split_first() else {
        return absent.iter().all(|&(field, path)| {
            flat.leaves_at(path).iter().all(|&leaf| {
                picked
                    .iter()
                    .any(|&(before, p)| before < field && !flat.consistent(p, leaf))
            })
        });
    };
    for choice in &first.choices {
        match *choice {
            Some(leaf) => {
                let narrowed: Option<Vec<Choices>> = rest
                    .iter()
                    .map(|o| {
                        let kept: Vec<Option<u32>> = o
                            .choices
                            .iter()
                            .copied()
                            .filter(|c| c.is_none_or(|other| flat.consistent(other, leaf)))
                            .collect();
                        (!kept.is_empty()).then_some(Choices {
                            choices: kept,
                            ..*o
                        })
                    })
                    .collect();
                let Some(mut narrowed) = narrowed else {
                    continue;
                };
                narrowed.sort_by_key(|o| o.choices.len());
                picked.push((first.field, leaf));
                let ok = search(&narrowed, flat, picked, absent);
                picked.pop();
                if ok {
                    return true;
                }
            }
            None => {
                absent.push((first.field, first.path));
                let ok = search(rest, flat, picked, absent);
                absent.pop();
                if ok {
                    return true;
                }
            }
        }
    }
    false
}

/// The leaves at `path` that satisfy one of the field's conditions.
fn matching<'f>(field: &'f Field, path: u32, flat: &'f Flat<'_>) -> impl Iterator<Item = u32> + 'f {
    flat.leaves_at(path).iter().copied().filter(move |&i| {
        flat.leaves
            .get(i as usize)
            .is_some_and(|leaf| field.conditions.iter().any(|c| c.matches(&leaf.value)))
    })
}

#[cfg(test)]
mod tests {
    use crate::pattern::Pattern;
    use serde_json::json;

    fn matches(pattern: serde_json::Value, event: serde_json::Value) -> bool {
        Pattern::from_value(&pattern, &Default::default())
            .unwrap()
            .matches(&event)
    }

    #[test]
    fn consistency_needs_backtracking() {
        // The first "a" candidate (element 0) has no matching "b"; the search must move on.
        let event = json!({"e": [{"a": 1, "b": 0}, {"a": 1, "b": 2}]});
        assert!(matches(json!({"e": {"a": [1], "b": [2]}}), event.clone()));
        assert!(!matches(json!({"e": {"a": [1], "b": [3]}}), event));
    }

    #[test]
    fn nested_arrays_share_the_outer_element() {
        let event =
            json!({"o": [{"id": 1, "i": [{"s": "x"}, {"s": "y"}]}, {"id": 2, "i": [{"s": "z"}]}]});
        assert!(matches(
            json!({"o": {"id": [1], "i": {"s": ["y"]}}}),
            event.clone()
        ));
        assert!(!matches(
            json!({"o": {"id": [2], "i": {"s": ["y"]}}}),
            event.clone()
        ));
        // Two fields in different elements of the inner array conflict too.
        let event = json!({"o": [{"i": [{"s": "x"}, {"t": "y"}]}]});
        assert!(!matches(
            json!({"o": {"i": {"s": ["x"], "t": ["y"]}}}),
            event
        ));
    }

    #[test]
    fn dead_ends_are_found_without_trying_every_combination() {
        // Eight fields, each with 30 candidates in its own inner array of one outer
        // element, and a ninth (sorted last, also 30 candidates) only present in another
        // outer element: without forward checking this would try 30^8 combinations.
        let mut inner = serde_json::Map::new();
        let mut pattern = serde_json::Map::new();
        for f in 0..8 {
            let name = format!("f{f}");
            inner.insert(
                name.clone(),
                json!((0..30).map(|_| json!({"v": 1})).collect::<Vec<_>>()),
            );
            pattern.insert(name, json!({"v": [1]}));
        }
        pattern.insert("last".into(), json!({"v": [1]}));
        let last: Vec<_> = (0..30).map(|_| json!({"v": 1})).collect();
        let event = json!({"o": [serde_json::Value::Object(inner), {"last": last}]});
        assert!(!matches(json!({"o": pattern}), event));
    }

    #[test]
    fn absence_is_relative_to_the_elements_chosen_before_it() {
        // "z" comes after "s": absent from the element "s" chose.
        let p = json!({"t": {"s": ["on"], "z": [{"exists": false}]}});
        assert!(matches(
            p.clone(),
            json!({"t": [{"s": "on"}, {"s": "off", "z": 1}]})
        ));
        assert!(!matches(p.clone(), json!({"t": [{"s": "on", "z": 1}]})));
        assert!(matches(p, json!({"t": [{"s": "on", "z": 1}, {"s": "on"}]})));
        // "n" comes before "s": nothing is chosen yet, so any "n" is present.
        let p = json!({"t": {"s": ["on"], "n": [{"exists": false}]}});
        assert!(!matches(
            p.clone(),
            json!({"t": [{"s": "on"}, {"s": "off", "n": 1}]})
        ));
        assert!(matches(p, json!({"t": [{"s": "on"}, {"s": "off"}]})));
        // A field settled outside arrays may still choose an element for a later absence.
        let p = json!({"x": {"a": ["1"], "b": [{"exists": false}]}});
        assert!(matches(p, json!({"x.a": "1", "x": [{"a": "1"}, {"b": 2}]})));
    }
}
