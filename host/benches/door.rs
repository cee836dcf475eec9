//! The ingest door's costs on a ~1 KB event whose payload has 20
//! properties: parsing alone (the ingest floor), parsing plus validation
//! against a 20-property `enforce` schema, validation alone, the
//! deduplication key and front-cache lookup, and a single-event SQLite
//! append with and without deduplication.
//! Run with `cargo bench -p busbar --bench door`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use busbar::clock::{SharedClock, SystemClock};
use busbar::door::dedup::{FrontCache, key};
use busbar::door::registry::Registry;
use busbar::door::schema::SchemaSpec;
use busbar::ingest::{CloudEventsBody, IngestLimits, parse_cloudevents};
use busbar::store::memory::MemoryStore;
use busbar::store::sqlite::{Durability, SqliteStore};
use busbar::store::{AdmittedEvent, Dedup, DedupLog, EventLog, NewEvent};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

fn data(i: u64) -> Value {
    json!({
        "order_id": format!("ord-{i:08}"), "customer_id": "cus-000042", "customer_tier": "gold",
        "email": "someone@example.com", "currency": "EUR", "total": 159.92, "subtotal": 139.95,
        "tax": 19.97, "shipping": 4.99, "discount": 4.99, "placed_at": "2026-11-22T08:04:05Z",
        "status": "paid", "channel": "web", "coupon": "SPRING", "notes": "leave at the door, please",
        "items": (0..5).map(|k| json!({"sku": format!("SKU-{k:05}"), "qty": k + 1, "price": 19.99,
                                        "title": "A reasonably long product title"})).collect::<Vec<_>>(),
        "address": {"street": "1 Main Street", "city": "Springfield", "zip": "12345", "country": "DE"},
        "gift": false, "priority": 2, "tags": ["new", "promo"]
    })
}

fn schema() -> Value {
    json!({
        "type": "object",
        "required": ["order_id", "customer_id", "total", "currency", "items", "status", "placed_at"],
        "properties": {
            "order_id": {"type": "string", "pattern": "^ord-[0-9]+$"},
            "customer_id": {"type": "string"},
            "customer_tier": {"enum": ["bronze", "silver", "gold"]},
            "email": {"type": "string", "maxLength": 254},
            "currency": {"type": "string", "minLength": 3, "maxLength": 3},
            "total": {"type": "number", "minimum": 0},
            "subtotal": {"type": "number", "minimum": 0},
            "tax": {"type": "number", "minimum": 0},
            "shipping": {"type": "number", "minimum": 0},
            "discount": {"type": "number", "minimum": 0},
            "placed_at": {"type": "string", "format": "date-time"},
            "status": {"enum": ["new", "paid", "shipped", "cancelled"]},
            "channel": {"type": "string"},
            "coupon": {"type": ["string", "null"]},
            "notes": {"type": "string", "maxLength": 1000},
            "items": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["sku", "qty", "price"],
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1},
                               "price": {"type": "number"}, "title": {"type": "string"}}}},
            "address": {"type": "object", "required": ["city", "country"],
                        "properties": {"street": {"type": "string"}, "city": {"type": "string"},
                                       "zip": {"type": "string"}, "country": {"type": "string"}}},
            "gift": {"type": "boolean"},
            "priority": {"type": "integer", "minimum": 0, "maximum": 9},
            "tags": {"type": "array", "items": {"type": "string"}}
        }
    })
}

fn event(i: u64) -> Value {
    json!({"specversion": "1.0", "id": format!("door-{i}"), "source": "shop", "type": "order.created",
           "datacontenttype": "application/json", "data": data(i)})
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let clock: SharedClock = Arc::new(SystemClock);
    let registry = Registry::new(Arc::new(MemoryStore::new(clock.clone())), clock.clone());
    let spec =
        SchemaSpec::parse(&json!({"source": "shop", "type": "order.created", "schema": schema()}))
            .unwrap();
    rt.block_on(registry.put("t", "b", "orders", spec)).unwrap();

    let limits = IngestLimits::default();
    let body = event(1).to_string().into_bytes();
    eprintln!("event: {} bytes", body.len());
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/cloudevents+json"),
    );
    let parse = || match parse_cloudevents(&headers, black_box(&body), &limits).unwrap() {
        CloudEventsBody::Single(e) => e,
        CloudEventsBody::Batch(_) => unreachable!(),
    };
    let parsed = parse();
    assert!(
        registry
            .check("t", "b", parsed.event())
            .unwrap()
            .violations
            .is_empty()
    );

    let mut group = c.benchmark_group("door");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_structured", |b| b.iter(parse));
    group.bench_function("parse_and_validate", |b| {
        b.iter(|| {
            let e = parse();
            registry.check("t", "b", e.event()).unwrap()
        })
    });
    group.bench_function("validate_only", |b| {
        b.iter(|| registry.check("t", "b", black_box(parsed.event())).unwrap())
    });

    let cache = FrontCache::new(100_000);
    let now = clock.now_ms();
    group.bench_function("dedup_key_and_front_cache", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let k = key("t", "b", "shop", &format!("door-{i}"));
            let seen = cache.seen_within(&k, now, 300_000);
            cache.accepted(k, now);
            seen
        })
    });

    // The store's side, one event per commit (the worst case: under load,
    // group commit spreads a commit over many requests).
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), Durability::Normal, clock.clone()).unwrap();
    let new_event = |i: u64| NewEvent {
        tenant: "t".into(),
        bus: "b".into(),
        event_id: format!("door-{i}"),
        body: Bytes::from(body.clone()),
        ingested_ms: now,
        ..Default::default()
    };
    // Grow the file and the WAL first, so neither append pays for it.
    for chunk in 0..50u64 {
        let events = (0..1_000)
            .map(|i| new_event(1_000_000_000 + chunk * 1_000 + i))
            .collect();
        rt.block_on(store.append(events)).unwrap();
    }
    group.bench_function("sqlite_append_deduplicated", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let dedup = Some(Dedup {
                key: key("t", "b", "shop", &format!("door-{i}")),
                window_ms: 300_000,
            });
            rt.block_on(store.append_deduplicated(vec![AdmittedEvent {
                event: new_event(i),
                dedup,
            }]))
            .unwrap()
        })
    });
    group.bench_function("sqlite_append", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            rt.block_on(store.append(vec![new_event(i)])).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
