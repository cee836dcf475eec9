//! Ingest throughput: one structured event (compact, as producers' JSON
//! libraries write it, and pretty-printed), one binary-mode event, a batch of
//! 100 and a PutEvents request of 10, each a typical ~1 KiB order event.
//! The CloudEvents cases end with the JSON the store keeps.
//! Run with `cargo bench -p busbar --bench ingest`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use busbar::ingest::{IngestLimits, parse_cloudevents, parse_put_events};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

fn order(i: usize) -> Value {
    let lines: Vec<Value> = (0..8)
        .map(|n| json!({"sku": format!("SKU-{n:05}"), "qty": n + 1, "price": 19.99, "title": "A reasonably long product title"}))
        .collect();
    json!({"order_id": format!("ord-{i}"), "customer": {"id": "c-42", "tier": "gold"}, "total": 159.92, "lines": lines})
}

fn structured(i: usize) -> Value {
    json!({
        "specversion": "1.0", "id": format!("evt-{i}"), "source": "https://shop.example/orders",
        "type": "com.example.order.created", "time": "2024-05-06T07:08:09.123Z",
        "datacontenttype": "application/json", "tenant": "acme", "data": order(i)
    })
}

fn bench(c: &mut Criterion) {
    let limits = IngestLimits::default();
    let mut group = c.benchmark_group("ingest");

    let body = structured(1).to_string().into_bytes();
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/cloudevents+json"),
    );
    group.throughput(Throughput::Elements(1));
    // The floor: parsing the same body into a JSON map, with no validation.
    group.bench_function("json_parse_only", |b| {
        b.iter(|| serde_json::from_slice::<Value>(black_box(&body)).unwrap())
    });
    // What ingest did per event before it wrote the stored JSON while reading
    // (session 13): a map of the whole event, printed again for the store.
    // `structured` below does all of its work (validation included) and
    // should stay under this.
    group.bench_function("json_parse_and_print", |b| {
        b.iter(|| {
            let value = serde_json::from_slice::<Value>(black_box(&body)).unwrap();
            serde_json::to_vec(&value).unwrap()
        })
    });
    group.bench_function("structured", |b| {
        b.iter(|| parse_cloudevents(black_box(&headers), black_box(&body), &limits).unwrap())
    });
    // The same event pretty-printed: `data` is not in stored form, so it is
    // parsed and printed (the path every event took before).
    let spaced = serde_json::to_vec_pretty(&structured(1)).unwrap();
    group.bench_function("structured_spaced", |b| {
        b.iter(|| parse_cloudevents(black_box(&headers), black_box(&spaced), &limits).unwrap())
    });

    let data = order(1).to_string().into_bytes();
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "evt-1"),
        ("ce-source", "https://shop.example/orders"),
        ("ce-type", "com.example.order.created"),
        ("ce-time", "2024-05-06T07:08:09.123Z"),
        ("ce-tenant", "acme"),
        ("content-type", "application/json"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    group.bench_function("binary", |b| {
        b.iter(|| parse_cloudevents(black_box(&headers), black_box(&data), &limits).unwrap())
    });

    let batch = Value::Array((0..100).map(structured).collect())
        .to_string()
        .into_bytes();
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/cloudevents-batch+json"),
    );
    group.throughput(Throughput::Elements(100));
    group.bench_function("batch_100", |b| {
        b.iter(|| parse_cloudevents(black_box(&headers), black_box(&batch), &limits).unwrap())
    });

    let entries: Vec<Value> = (0..10)
        .map(|i| json!({"Source": "com.example.shop", "DetailType": "OrderCreated", "Detail": order(i).to_string(), "Resources": ["arn:aws:shop:::order/1"]}))
        .collect();
    let put = json!({ "Entries": entries }).to_string().into_bytes();
    group.throughput(Throughput::Elements(10));
    group.bench_function("put_events_10", |b| {
        b.iter(|| parse_put_events(black_box(&put), &limits).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
