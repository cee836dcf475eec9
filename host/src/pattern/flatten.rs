//! Events to leaves: the scalar values found at the field paths some pattern uses.
//!
//! Like event-ruler, an event is seen as a list of `(dotted path, scalar)` leaves; arrays
//! are "crushed out" (each element sits at the array's own path). Each leaf remembers
//! which element of which array it came from (its *trail*), so that matching can refuse
//! to combine fields from different elements of the same array (array consistency).
//!
//! Only paths in a [`PathTable`] are kept; everything else is skipped. Events can be
//! flattened from a parsed [`Value`] or straight from JSON text with a serde visitor that
//! never builds the skipped parts ([`flatten_json`]).

use foldhash::HashMap;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

/// Nesting deeper than this (in a hand-built `Value`) is ignored instead of recursed into.
const MAX_DEPTH: usize = 256;

/// A scalar event value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Scalar<'a> {
    /// A JSON string.
    Str(Cow<'a, str>),
    /// A JSON number, as a double.
    Num(f64),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
}

/// What the flattener does at one path.
#[derive(Clone, Copy, Debug, Default)]
struct PathEntry {
    /// Node of this path in the [`PathTable`] trie.
    node: u32,
    /// Id of the field if some pattern tests this exact path.
    leaf: Option<u32>,
    /// Whether some pattern tests a path below this one.
    descend: bool,
}

/// One node of the path trie: a dotted path prefix.
#[derive(Clone, Debug, Default)]
struct PathNode {
    children: HashMap<Box<str>, u32>,
    leaf: Option<u32>,
}

/// The field paths that matter, each with a dense id, as a trie of dot-separated
/// segments (so an event key is looked up by itself, not by its whole path, and a key
/// containing dots walks several segments — dotted keys and nesting are the same).
#[derive(Clone, Debug)]
pub(crate) struct PathTable {
    nodes: Vec<PathNode>,
    count: u32,
}

impl Default for PathTable {
    fn default() -> Self {
        Self {
            nodes: vec![PathNode::default()],
            count: 0,
        }
    }
}

impl PathTable {
    /// The id of `path`, adding it if new.
    pub(crate) fn intern(&mut self, path: &str) -> u32 {
        let mut node = 0usize;
        for segment in path.split('.') {
            let next = self.nodes.len() as u32;
            let child = match self.nodes.get_mut(node) {
                Some(n) => *n.children.entry(segment.into()).or_insert(next),
                None => return 0,
            };
            if child == next {
                self.nodes.push(PathNode::default());
            }
            node = child as usize;
        }
        match self.nodes.get_mut(node) {
            Some(PathNode { leaf: Some(id), .. }) => *id,
            Some(n) => {
                let id = self.count;
                self.count += 1;
                n.leaf = Some(id);
                id
            }
            None => 0,
        }
    }

    /// Number of interned paths.
    pub(crate) fn len(&self) -> usize {
        self.count as usize
    }

    fn entry(&self, node: u32) -> Option<PathEntry> {
        self.nodes.get(node as usize).map(|n| PathEntry {
            node,
            leaf: n.leaf,
            descend: !n.children.is_empty(),
        })
    }

    /// The entry for `key` below `parent`.
    fn child(&self, parent: u32, key: &str) -> Option<PathEntry> {
        let mut node = parent;
        for segment in key.split('.') {
            node = *self.nodes.get(node as usize)?.children.get(segment)?;
        }
        self.entry(node)
    }
}

/// One scalar at an interned path.
#[derive(Clone, Debug)]
pub(crate) struct Leaf<'a> {
    /// Path id in the [`PathTable`].
    pub(crate) path: u32,
    /// The value.
    pub(crate) value: Scalar<'a>,
    /// Range of this leaf's trail in [`Flat::trails`].
    trail: (u32, u32),
}

/// The leaves of one event.
#[derive(Clone, Debug, Default)]
pub(crate) struct Flat<'a> {
    /// Leaves in document order.
    pub(crate) leaves: Vec<Leaf<'a>>,
    /// Trails of all leaves: `(array id, element index)` pairs from the root down.
    trails: Vec<(u32, u32)>,
    /// `(path id, leaf number)` sorted, filled by [`Flat::finish`].
    by_path: Vec<(u32, u32)>,
    /// Leaf numbers in the order of `by_path`.
    grouped: Vec<u32>,
}

impl Flat<'_> {
    /// Groups the leaves by path; called once flattening is complete.
    fn finish(&mut self) {
        self.by_path = (0u32..)
            .zip(&self.leaves)
            .map(|(i, leaf)| (leaf.path, i))
            .collect();
        self.by_path.sort_unstable();
        self.grouped = self.by_path.iter().map(|&(_, i)| i).collect();
    }

    /// The leaves at a path, in document order.
    pub(crate) fn leaves_at(&self, path: u32) -> &[u32] {
        let start = self.by_path.partition_point(|&(p, _)| p < path);
        let end = self.by_path.partition_point(|&(p, _)| p <= path);
        self.grouped.get(start..end).unwrap_or_default()
    }

    /// Whether two leaves can belong to one match: they never sit in different elements
    /// of the same array.
    pub(crate) fn consistent(&self, a: u32, b: u32) -> bool {
        let (ta, tb) = (self.trail(a), self.trail(b));
        for (x, y) in ta.iter().zip(tb) {
            if x.0 != y.0 {
                // Different arrays here means different arrays all the way down.
                return true;
            }
            if x.1 != y.1 {
                return false;
            }
        }
        true
    }

    /// Whether the leaf sits inside any array.
    pub(crate) fn in_array(&self, leaf: u32) -> bool {
        !self.trail(leaf).is_empty()
    }

    /// The `(array id, element index)` pairs from the root down to the leaf.
    pub(crate) fn trail(&self, leaf: u32) -> &[(u32, u32)] {
        match self.leaves.get(leaf as usize) {
            Some(l) => self
                .trails
                .get(l.trail.0 as usize..(l.trail.0 + l.trail.1) as usize)
                .unwrap_or_default(),
            None => &[],
        }
    }
}

/// Builds a [`Flat`] while walking an event.
struct Collector<'t, 'a> {
    table: &'t PathTable,
    stack: Vec<(u32, u32)>,
    next_array: u32,
    flat: Flat<'a>,
}

impl<'t, 'a> Collector<'t, 'a> {
    fn new(table: &'t PathTable) -> Self {
        Self {
            table,
            stack: Vec::new(),
            next_array: 0,
            flat: Flat::default(),
        }
    }

    fn push(&mut self, path: u32, value: Scalar<'a>) {
        let start = self.flat.trails.len() as u32;
        self.flat.trails.extend_from_slice(&self.stack);
        self.flat.leaves.push(Leaf {
            path,
            value,
            trail: (start, self.stack.len() as u32),
        });
    }

    fn value(&mut self, value: &'a Value, entry: PathEntry, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        match value {
            Value::Object(map) if entry.descend => {
                for (key, inner) in map {
                    if let Some(e) = self.table.child(entry.node, key) {
                        self.value(inner, e, depth + 1);
                    }
                }
            }
            Value::Array(items) if depth > 0 => {
                let id = self.next_array;
                self.next_array += 1;
                for (i, item) in items.iter().enumerate() {
                    self.stack.push((id, i as u32));
                    self.value(item, entry, depth);
                    self.stack.pop();
                }
            }
            _ => {
                if let (Some(id), Some(scalar)) = (entry.leaf, scalar(value)) {
                    self.push(id, scalar);
                }
            }
        }
    }
}

fn scalar(value: &Value) -> Option<Scalar<'_>> {
    match value {
        Value::String(s) => Some(Scalar::Str(Cow::Borrowed(s))),
        Value::Number(n) => n.as_f64().map(Scalar::Num),
        Value::Bool(b) => Some(Scalar::Bool(*b)),
        Value::Null => Some(Scalar::Null),
        Value::Array(_) | Value::Object(_) => None,
    }
}

const ROOT: PathEntry = PathEntry {
    node: 0,
    leaf: None,
    descend: true,
};

/// The leaves of a parsed event. A non-object event has no fields.
pub(crate) fn flatten<'a>(event: &'a Value, table: &PathTable) -> Flat<'a> {
    let mut collector = Collector::new(table);
    if event.is_object() {
        collector.value(event, ROOT, 0);
    }
    collector.flat.finish();
    collector.flat
}

/// The leaves of an event given as JSON text, without building a `Value` for it.
pub(crate) fn flatten_json<'a>(
    json: &'a [u8],
    table: &PathTable,
) -> Result<Flat<'a>, serde_json::Error> {
    let mut collector = Collector::new(table);
    let mut de = serde_json::Deserializer::from_slice(json);
    Node {
        collector: &mut collector,
        entry: ROOT,
        depth: 0,
    }
    .deserialize(&mut de)?;
    de.end()?;
    collector.flat.finish();
    Ok(collector.flat)
}

/// Serde seed for one JSON value at the collector's current path.
struct Node<'c, 't, 'a> {
    collector: &'c mut Collector<'t, 'a>,
    entry: PathEntry,
    depth: usize,
}

impl<'de: 'a, 'a> DeserializeSeed<'de> for Node<'_, '_, 'a> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

macro_rules! leaf {
    ($self:ident, $value:expr) => {{
        if let Some(id) = $self.entry.leaf {
            if $self.depth > 0 {
                $self.collector.push(id, $value);
            }
        }
        Ok(())
    }};
}

impl<'de: 'a, 'a> Visitor<'de> for Node<'_, '_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        leaf!(self, Scalar::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        leaf!(self, Scalar::Num(v as f64))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        leaf!(self, Scalar::Num(v as f64))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        leaf!(self, Scalar::Num(v))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        leaf!(self, Scalar::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if self.entry.leaf.is_none() {
            return Ok(());
        }
        leaf!(self, Scalar::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        leaf!(self, Scalar::Null)
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
        if !self.entry.descend {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(());
        }
        let Node {
            collector,
            entry: parent,
            depth,
        } = self;
        while let Some(key) = map.next_key_seed(Key)? {
            match collector.table.child(parent.node, &key) {
                Some(entry) => map.next_value_seed(Node {
                    collector: &mut *collector,
                    entry,
                    depth: depth + 1,
                })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<(), S::Error> {
        if self.depth == 0 || (self.entry.leaf.is_none() && !self.entry.descend) {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(());
        }
        let Node {
            collector,
            entry,
            depth,
        } = self;
        let id = collector.next_array;
        collector.next_array += 1;
        let mut i = 0;
        loop {
            collector.stack.push((id, i));
            let more = seq.next_element_seed(Node {
                collector: &mut *collector,
                entry,
                depth,
            })?;
            collector.stack.pop();
            if more.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
}

/// Serde seed reading an object key, borrowed from the input when possible.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn table(paths: &[&str]) -> PathTable {
        let mut t = PathTable::default();
        for p in paths {
            t.intern(p);
        }
        t
    }

    type Summary = Vec<(u32, Scalar<'static>, Vec<(u32, u32)>)>;

    fn summary(flat: &Flat<'_>) -> Summary {
        (0..flat.leaves.len() as u32)
            .map(|i| {
                let l = &flat.leaves[i as usize];
                let v = match &l.value {
                    Scalar::Str(s) => Scalar::Str(Cow::Owned(s.to_string())),
                    Scalar::Num(n) => Scalar::Num(*n),
                    Scalar::Bool(b) => Scalar::Bool(*b),
                    Scalar::Null => Scalar::Null,
                };
                (l.path, v, flat.trail(i).to_vec())
            })
            .collect()
    }

    #[test]
    fn value_and_json_flattening_agree() {
        let t = table(&["a.b", "c", "d.e.f"]);
        let event = json!({"a": [{"b": 1}, {"b": "x\"y", "z": 2}], "c": [[true, null]], "d.e": {"f": 1.5}, "skip": {"a": 1}});
        let text = serde_json::to_vec(&event).unwrap();
        let from_value = flatten(&event, &t);
        let from_json = flatten_json(&text, &t).unwrap();
        assert_eq!(summary(&from_value), summary(&from_json));
        assert_eq!(from_value.leaves.len(), 5);
        assert!((0..3).all(|p| !from_value.leaves_at(p).is_empty()));
        assert_eq!(from_value.leaves_at(1), &[2, 3]);
    }

    #[test]
    fn consistency_follows_array_elements() {
        let t = table(&["e.first", "e.last"]);
        let event =
            json!({"e": [{"first": "John", "last": "Doe"}, {"first": "Anna", "last": "Smith"}]});
        let flat = flatten(&event, &t);
        assert!(flat.consistent(0, 1));
        assert!(!flat.consistent(0, 3));
        assert!(flat.consistent(2, 3));
        assert!(flat.in_array(0));
    }

    #[test]
    fn non_objects_have_no_fields() {
        let t = table(&["a"]);
        for event in [json!([{"a": 1}]), json!("a"), json!(null), json!(1)] {
            assert!(flatten(&event, &t).leaves.is_empty());
            let text = serde_json::to_vec(&event).unwrap();
            assert!(flatten_json(&text, &t).unwrap().leaves.is_empty());
        }
        assert!(flatten_json(b"{\"a\": 1} x", &t).is_err());
    }
}
