//! Schema discovery: a JSON Schema inferred per (`source`, `type`) from the
//! payloads a bus accepts, for buses with `"schema_discovery": true`.
//!
//! Each payload is folded into a [`Shape`]: at every position, how many
//! values of each JSON type were seen, for objects how often each property
//! was present, for strings whether all were RFC 3339 date-times or UUIDs
//! and, while they are few, which values occurred. Shapes merge
//! associatively, so each node folds what it sees in memory and
//! periodically merges that into the stored summary (compare-and-set on
//! the store's revision, so concurrent nodes never lose each other's
//! counts). The inferred schema says:
//!
//! - `type`: every type seen (`integer` when every number was one);
//! - `required`: the properties present in *every* object seen there;
//! - `format`: `date-time` or `uuid` when every string seen was one;
//! - `enum`: a small string set — at most [`MAX_ENUM`] distinct values,
//!   each seen twice on average (one sighting of a value says nothing about
//!   the set it comes from);
//! - `items`: the union of every element seen.
//!
//! Everything the schema asserts held for every event folded in, so those
//! events validate against it. Memory is bounded: at most [`MAX_DEPTH`]
//! levels, [`MAX_PROPERTIES`] properties per object (more are counted but
//! not described, and stay allowed), [`MAX_PENDING`] (bus, source, type)
//! summaries waiting to be written.

use super::schema::DRAFT_2020_12;
use crate::clock::{Millis, SharedClock};
use crate::store::{DiscoveredSchema, SchemaStore, StoreResult};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

/// Most distinct strings an `enum` is inferred from.
pub const MAX_ENUM: usize = 10;
/// Longest string counted as an enum value.
const MAX_ENUM_CHARS: usize = 64;
/// Deepest nesting described.
pub const MAX_DEPTH: usize = 12;
/// Most properties described per object.
pub const MAX_PROPERTIES: usize = 256;
/// Most (tenant, bus, source, type) summaries held in memory between writes.
pub const MAX_PENDING: usize = 10_000;

fn zero(n: &u64) -> bool {
    *n == 0
}

/// What was seen at one position of the payload.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Shape {
    /// Values seen here.
    #[serde(default)]
    pub n: u64,
    /// Nulls.
    #[serde(default, skip_serializing_if = "zero")]
    null: u64,
    /// Booleans.
    #[serde(default, skip_serializing_if = "zero")]
    boolean: u64,
    /// Numbers that are integers (no fraction, no exponent form).
    #[serde(default, skip_serializing_if = "zero")]
    integer: u64,
    /// Other numbers.
    #[serde(default, skip_serializing_if = "zero")]
    number: u64,
    /// Strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    string: Option<Strings>,
    /// Arrays, and the union of their elements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    array: Option<Box<Elements>>,
    /// Objects, and their properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    object: Option<Properties>,
}

/// Strings seen at one position.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Strings {
    n: u64,
    /// How many were RFC 3339 date-times.
    date_time: u64,
    /// How many were hyphenated UUIDs.
    uuid: u64,
    /// The distinct values while there are at most [`MAX_ENUM`] short ones.
    values: Option<BTreeSet<String>>,
}

/// Arrays seen at one position.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Elements {
    n: u64,
    items: Shape,
}

/// Objects seen at one position.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Properties {
    n: u64,
    props: BTreeMap<String, Shape>,
    /// Objects had properties beyond [`MAX_PROPERTIES`] (not described).
    #[serde(default)]
    more: bool,
}

impl Shape {
    /// Folds in one value.
    pub fn observe(&mut self, value: &Value) {
        self.observe_at(value, 0);
    }

    fn observe_at(&mut self, value: &Value, depth: usize) {
        self.n += 1;
        match value {
            Value::Null => self.null += 1,
            Value::Bool(_) => self.boolean += 1,
            Value::Number(n) if n.is_i64() || n.is_u64() => self.integer += 1,
            Value::Number(_) => self.number += 1,
            Value::String(s) => {
                let strings = self.string.get_or_insert_with(|| Strings {
                    values: Some(BTreeSet::new()),
                    ..Strings::default()
                });
                strings.n += 1;
                if is_date_time(s) {
                    strings.date_time += 1;
                }
                if is_uuid(s) {
                    strings.uuid += 1;
                }
                if let Some(values) = &mut strings.values {
                    if s.chars().count() <= MAX_ENUM_CHARS {
                        values.insert(s.clone());
                    }
                    if values.len() > MAX_ENUM || s.chars().count() > MAX_ENUM_CHARS {
                        strings.values = None;
                    }
                }
            }
            Value::Array(items) => {
                let elements = self.array.get_or_insert_with(Box::default);
                elements.n += 1;
                if depth < MAX_DEPTH {
                    for item in items {
                        elements.items.observe_at(item, depth + 1);
                    }
                }
            }
            Value::Object(map) => {
                let object = self.object.get_or_insert_with(Properties::default);
                object.n += 1;
                if depth < MAX_DEPTH {
                    for (k, v) in map {
                        if let Some(p) = object.props.get_mut(k) {
                            p.observe_at(v, depth + 1);
                        } else if object.props.len() < MAX_PROPERTIES {
                            let mut p = Shape::default();
                            p.observe_at(v, depth + 1);
                            object.props.insert(k.clone(), p);
                        } else {
                            object.more = true;
                        }
                    }
                }
            }
        }
    }

    /// Adds what `other` saw (as if its values had been observed here too).
    pub fn merge(&mut self, other: &Shape) {
        self.n += other.n;
        self.null += other.null;
        self.boolean += other.boolean;
        self.integer += other.integer;
        self.number += other.number;
        match (&mut self.string, &other.string) {
            (_, None) => {}
            (None, Some(o)) => self.string = Some(o.clone()),
            (Some(s), Some(o)) => {
                s.n += o.n;
                s.date_time += o.date_time;
                s.uuid += o.uuid;
                s.values = match (s.values.take(), &o.values) {
                    (Some(mut a), Some(b)) => {
                        a.extend(b.iter().cloned());
                        (a.len() <= MAX_ENUM).then_some(a)
                    }
                    _ => None,
                };
            }
        }
        match (&mut self.array, &other.array) {
            (_, None) => {}
            (None, Some(o)) => self.array = Some(o.clone()),
            (Some(a), Some(o)) => {
                a.n += o.n;
                a.items.merge(&o.items);
            }
        }
        match (&mut self.object, &other.object) {
            (_, None) => {}
            (None, Some(o)) => self.object = Some(o.clone()),
            (Some(a), Some(o)) => {
                a.n += o.n;
                a.more |= o.more;
                for (k, v) in &o.props {
                    if let Some(p) = a.props.get_mut(k) {
                        p.merge(v);
                    } else if a.props.len() < MAX_PROPERTIES {
                        a.props.insert(k.clone(), v.clone());
                    } else {
                        a.more = true;
                    }
                }
            }
        }
    }

    /// The JSON Schema of what was seen here (no `$schema`).
    pub fn to_schema(&self) -> Value {
        let mut out = Map::new();
        let mut types = Vec::new();
        if self.null > 0 {
            types.push("null");
        }
        if self.boolean > 0 {
            types.push("boolean");
        }
        if self.number > 0 {
            types.push("number");
        } else if self.integer > 0 {
            types.push("integer");
        }
        if self.string.is_some() {
            types.push("string");
        }
        if self.array.is_some() {
            types.push("array");
        }
        if self.object.is_some() {
            types.push("object");
        }
        match types.as_slice() {
            [] => {}
            [one] => {
                out.insert("type".into(), json!(one));
            }
            many => {
                out.insert("type".into(), json!(many));
            }
        }
        if let Some(s) = &self.string {
            if s.date_time == s.n {
                out.insert("format".into(), json!("date-time"));
            } else if s.uuid == s.n {
                out.insert("format".into(), json!("uuid"));
            }
            if let Some(values) = &s.values
                && !values.is_empty()
                && types == ["string"]
                && s.n >= 2 * values.len() as u64
            {
                out.insert("enum".into(), json!(values));
            }
        }
        if let Some(a) = &self.array
            && a.items.n > 0
        {
            out.insert("items".into(), a.items.to_schema());
        }
        if let Some(o) = &self.object {
            let props: Map<String, Value> = o
                .props
                .iter()
                .map(|(k, p)| (k.clone(), p.to_schema()))
                .collect();
            let required: Vec<&String> = o
                .props
                .iter()
                .filter(|(_, p)| p.n >= o.n)
                .map(|(k, _)| k)
                .collect();
            out.insert("properties".into(), Value::Object(props));
            if !required.is_empty() {
                out.insert("required".into(), json!(required));
            }
        }
        Value::Object(out)
    }
}

/// RFC 3339 `date-time`, strictly: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`
/// with upper-case `T` and `Z` (anything that passes is a date-time to
/// every validator, which is what the inferred `format` promises).
fn is_date_time(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    if b.len() < 20
        || !(digits(0..4)
            && b[4] == b'-'
            && digits(5..7)
            && b[7] == b'-'
            && digits(8..10)
            && b[10] == b'T'
            && digits(11..13)
            && b[13] == b':'
            && digits(14..16)
            && b[16] == b':'
            && digits(17..19))
    {
        return false;
    }
    let mut i = 19;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    let zone_ok = match &b[i..] {
        [b'Z'] => true,
        [sign, h1, h2, b':', m1, m2] if (*sign == b'+' || *sign == b'-') => {
            [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit())
        }
        _ => false,
    };
    zone_ok && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

/// A hyphenated UUID (`8-4-4-4-12` hex digits).
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The stored summary of one (bus, source, type).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Events folded in.
    pub events: u64,
    /// First and last sighting.
    pub first_seen_ms: Millis,
    /// Last sighting.
    pub last_seen_ms: Millis,
    /// The payloads' shape.
    pub shape: Shape,
}

impl Summary {
    fn merge(&mut self, other: &Summary) {
        if self.events == 0 {
            self.first_seen_ms = other.first_seen_ms;
        } else if other.events > 0 {
            self.first_seen_ms = self.first_seen_ms.min(other.first_seen_ms);
        }
        self.last_seen_ms = self.last_seen_ms.max(other.last_seen_ms);
        self.events += other.events;
        self.shape.merge(&other.shape);
    }

    /// The inferred JSON Schema of the payloads (draft 2020-12).
    pub fn schema(&self, source: &str, event_type: &str) -> Value {
        let mut schema = self.shape.to_schema();
        if let Value::Object(map) = &mut schema {
            map.insert("$schema".into(), json!(DRAFT_2020_12));
            map.insert(
                "description".into(),
                json!(format!(
                    "Inferred by Busbar from {} events with source {source:?} and type {event_type:?}",
                    self.events
                )),
            );
        }
        schema
    }
}

/// A discovered schema as the API shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Discovered {
    /// The events' source.
    pub source: String,
    /// The events' type.
    pub event_type: String,
    /// What was seen.
    pub summary: Summary,
}

type PendingKey = (String, String, String, String);

/// Folds payloads in memory and writes them to the store.
pub struct Discovery {
    store: Arc<dyn SchemaStore>,
    clock: SharedClock,
    pending: Mutex<HashMap<PendingKey, Summary>>,
    /// Held for the whole of a flush. A summary leaves `pending` before it
    /// reaches the store, so without this a `list` during the background
    /// flush would find it in neither place and show counts going back.
    flushing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").finish_non_exhaustive()
    }
}

/// How often a write races another node before this one gives up (and
/// keeps its summary for the next round).
const CAS_ROUNDS: usize = 8;

impl Discovery {
    /// Discovery over `store`.
    pub fn new(store: Arc<dyn SchemaStore>, clock: SharedClock) -> Self {
        Self {
            store,
            clock,
            pending: Mutex::new(HashMap::new()),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<PendingKey, Summary>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Folds one accepted payload in (`None`: binary data, nothing to learn).
    pub fn observe(&self, tenant: &str, bus: &str, source: &str, event_type: &str, data: &Value) {
        let now = self.clock.now_ms();
        let mut pending = self.pending();
        let key = (
            tenant.to_owned(),
            bus.to_owned(),
            source.to_owned(),
            event_type.to_owned(),
        );
        if !pending.contains_key(&key) && pending.len() >= MAX_PENDING {
            tracing::debug!(%tenant, %bus, "schema discovery is full until the next write");
            return;
        }
        let summary = pending.entry(key).or_insert_with(|| Summary {
            first_seen_ms: now,
            ..Summary::default()
        });
        summary.events += 1;
        summary.last_seen_ms = now;
        summary.shape.observe(data);
    }

    /// Writes what was folded in (of one bus, or of all when `only` is
    /// `None`) into the store. What cannot be written stays pending.
    pub async fn flush(&self, only: Option<(&str, &str)>) -> StoreResult<()> {
        let _one_at_a_time = self.flushing.lock().await;
        let taken: Vec<(PendingKey, Summary)> = {
            let mut pending = self.pending();
            let keys: Vec<PendingKey> = pending
                .keys()
                .filter(|(t, b, _, _)| only.is_none_or(|(ot, ob)| t == ot && b == ob))
                .cloned()
                .collect();
            keys.into_iter()
                .filter_map(|k| pending.remove(&k).map(|s| (k, s)))
                .collect()
        };
        let mut failed = Vec::new();
        let mut error = None;
        for (key, summary) in taken {
            match self.write(&key, &summary).await {
                Ok(true) => {}
                Ok(false) => failed.push((key, summary)),
                Err(e) => {
                    failed.push((key, summary));
                    error = Some(e);
                }
            }
        }
        if !failed.is_empty() {
            let mut pending = self.pending();
            for (key, summary) in failed {
                pending.entry(key).or_default().merge(&summary);
            }
        }
        error.map_or(Ok(()), Err)
    }

    /// Merges one summary into the stored one; false when other writers
    /// kept winning.
    async fn write(&self, key: &PendingKey, summary: &Summary) -> StoreResult<bool> {
        let (tenant, bus, source, event_type) = key;
        for _ in 0..CAS_ROUNDS {
            let stored = self
                .store
                .discovered_schemas(tenant, bus)
                .await?
                .into_iter()
                .find(|d| &d.source == source && &d.event_type == event_type);
            let (mut merged, revision) = match stored {
                Some(d) => (
                    serde_json::from_value::<Summary>(d.summary).unwrap_or_default(),
                    d.revision,
                ),
                None => (Summary::default(), 0),
            };
            merged.merge(summary);
            let record = DiscoveredSchema {
                tenant: tenant.clone(),
                bus: bus.clone(),
                source: source.clone(),
                event_type: event_type.clone(),
                summary: serde_json::to_value(&merged).unwrap_or_default(),
                revision,
                updated_ms: self.clock.now_ms(),
            };
            if self.store.put_discovered_schema(record).await?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A bus's discovered schemas (after writing what is pending for it).
    pub async fn list(&self, tenant: &str, bus: &str) -> StoreResult<Vec<Discovered>> {
        self.flush(Some((tenant, bus))).await?;
        Ok(self
            .store
            .discovered_schemas(tenant, bus)
            .await?
            .into_iter()
            .map(|d| Discovered {
                summary: serde_json::from_value(d.summary).unwrap_or_default(),
                source: d.source,
                event_type: d.event_type,
            })
            .collect())
    }

    /// Drops what is pending for a deleted bus.
    pub fn forget_bus(&self, tenant: &str, bus: &str) {
        self.pending()
            .retain(|(t, b, _, _), _| !(t == tenant && b == bus));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infer(values: &[Value]) -> Value {
        let mut shape = Shape::default();
        for v in values {
            shape.observe(v);
        }
        shape.to_schema()
    }

    #[test]
    fn types_required_formats_and_enums() {
        let events = [
            json!({"id": "123e4567-e89b-12d3-a456-426614174000", "at": "2026-01-02T03:04:05Z",
                   "status": "paid", "total": 10, "tags": ["a"], "note": null}),
            json!({"id": "9b2f0e1a-0000-4000-8000-000000000001", "at": "2026-01-02T03:04:05.5+01:00",
                   "status": "paid", "total": 2.5, "tags": [], "note": "x"}),
            json!({"id": "9b2f0e1a-0000-4000-8000-000000000002", "at": "2026-01-03T00:00:00Z",
                   "status": "shipped", "total": 3, "tags": ["b", "c"]}),
            json!({"id": "9b2f0e1a-0000-4000-8000-000000000003", "at": "2026-01-03T00:00:00Z",
                   "status": "shipped", "total": 3}),
        ];
        let schema = infer(&events);
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["required"], json!(["at", "id", "status", "total"]));
        let p = &schema["properties"];
        assert_eq!(p["id"], json!({"type": "string", "format": "uuid"}));
        assert_eq!(p["at"], json!({"type": "string", "format": "date-time"}));
        assert_eq!(
            p["status"],
            json!({"type": "string", "enum": ["paid", "shipped"]})
        );
        assert_eq!(p["total"], json!({"type": "number"}));
        assert_eq!(
            p["tags"],
            json!({"type": "array", "items": {"type": "string"}})
        );
        assert_eq!(p["note"], json!({"type": ["null", "string"]}));
        // The same events validate against what was inferred.
        let v = super::super::schema::compile(&schema).unwrap();
        for e in &events {
            assert!(v.is_valid(e), "{e}");
        }
    }

    #[test]
    fn merging_equals_observing_everything_in_one_place() {
        let a = [json!({"x": 1, "s": "a"}), json!({"x": 2, "s": "a"})];
        let b = [json!({"y": true, "s": "b"}), json!({"x": 1.5, "s": "b"})];
        let mut one = Shape::default();
        let (mut left, mut right) = (Shape::default(), Shape::default());
        for v in &a {
            one.observe(v);
            left.observe(v);
        }
        for v in &b {
            one.observe(v);
            right.observe(v);
        }
        left.merge(&right);
        assert_eq!(left, one);
        assert_eq!(left.to_schema()["required"], json!(["s"]));
    }

    #[test]
    fn many_distinct_strings_are_no_enum_and_near_misses_no_format() {
        let values: Vec<Value> = (0..30).map(|i| json!(format!("v{}", i % 15))).collect();
        assert_eq!(infer(&values), json!({"type": "string"}));
        assert!(!is_date_time("2026-01-02 03:04:05Z"));
        assert!(!is_date_time("2026-13-02T03:04:05Z"));
        assert!(is_date_time("2026-01-02T03:04:05.123-05:30"));
        assert!(!is_uuid("{123e4567-e89b-12d3-a456-426614174000}"));
    }

    use crate::clock::ManualClock;
    use crate::store::SchemaVersion;
    use crate::store::memory::MemoryStore;
    use async_trait::async_trait;
    use tokio::sync::{Notify, Semaphore};

    /// A memory store whose writes of discovered schemas wait for a permit,
    /// so a test can hold a flush half-way.
    struct HeldWrites {
        inner: MemoryStore,
        writing: Notify,
        permits: Semaphore,
    }

    #[async_trait]
    impl SchemaStore for HeldWrites {
        async fn add_schema_version(&self, version: SchemaVersion) -> StoreResult<()> {
            self.inner.add_schema_version(version).await
        }
        async fn schema_versions(
            &self,
            tenant: &str,
            bus: &str,
            name: &str,
        ) -> StoreResult<Vec<SchemaVersion>> {
            self.inner.schema_versions(tenant, bus, name).await
        }
        async fn latest_schema_versions(&self) -> StoreResult<Vec<SchemaVersion>> {
            self.inner.latest_schema_versions().await
        }
        async fn delete_schema(&self, tenant: &str, bus: &str, name: &str) -> StoreResult<bool> {
            self.inner.delete_schema(tenant, bus, name).await
        }
        async fn discovered_schemas(
            &self,
            tenant: &str,
            bus: &str,
        ) -> StoreResult<Vec<DiscoveredSchema>> {
            self.inner.discovered_schemas(tenant, bus).await
        }
        async fn put_discovered_schema(
            &self,
            schema: DiscoveredSchema,
        ) -> StoreResult<Option<u64>> {
            self.writing.notify_one();
            self.permits
                .acquire()
                .await
                .expect("the semaphore stays open")
                .forget();
            self.inner.put_discovered_schema(schema).await
        }
        async fn delete_bus_schemas(&self, tenant: &str, bus: &str) -> StoreResult<u64> {
            self.inner.delete_bus_schemas(tenant, bus).await
        }
    }

    #[tokio::test]
    async fn a_list_during_the_background_flush_waits_for_its_write() {
        let clock: SharedClock = Arc::new(ManualClock::new(1_000));
        let store = Arc::new(HeldWrites {
            inner: MemoryStore::new(clock.clone()),
            writing: Notify::new(),
            permits: Semaphore::new(0),
        });
        let discovery = Arc::new(Discovery::new(store.clone(), clock));
        for i in 0..3 {
            discovery.observe("t", "b", "shop", "order", &json!({"n": i}));
        }
        let background = tokio::spawn({
            let d = discovery.clone();
            async move { d.flush(None).await }
        });
        // The background flush has taken the summary and is writing it.
        store.writing.notified().await;
        let listing = tokio::spawn({
            let d = discovery.clone();
            async move { d.list("t", "b").await }
        });
        // Give the listing every chance to answer before the write lands:
        // on this single-threaded runtime it runs to its first real wait.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!listing.is_finished(), "a list answered mid-flush");
        store.permits.add_permits(1);
        background.await.unwrap().unwrap();
        let listed = listing.await.unwrap().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].summary.events, 3);
    }
}
