//! What history costs the SQLite store per event, apart from HTTP and
//! routing: a commit of 10 ~1 KB events plain and with each event in one
//! archive (the archive row refers to the log entry), traced (the head in
//! the entry) alone and with an archive by rows or by a range of the log,
//! and a commit of the 10 routed events' traces (each refers to its log
//! entry).
//! Run with `cargo bench -p busbar --bench history`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use busbar::store::traces::{RuleOutcome, RuleTrace, TargetState, TargetTrace, TraceBody};
use busbar::store::{EventLog, NewEvent, Trace, TraceState, Traces};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

const BATCH: u64 = 10;
/// Traces per commit in `record_100_traces`.
const WIDE: u64 = 100;

fn body(i: u64) -> Bytes {
    let data = json!({
        "order_id": format!("ord-{i:08}"), "customer_id": "cus-000042", "customer_tier": "gold",
        "email": "someone@example.com", "currency": "EUR", "total": 159.92, "subtotal": 139.95,
        "notes": "leave at the door, please",
        "items": (0..5).map(|k| json!({"sku": format!("SKU-{k:05}"), "qty": k + 1, "price": 19.99,
                                        "title": "A reasonably long product title"})).collect::<Vec<_>>(),
        "address": {"street": "1 Main Street", "city": "Springfield", "zip": "12345", "country": "DE"},
    });
    Bytes::from(
        json!({"specversion": "1.0", "id": format!("ev-{i}"), "source": "shop",
               "type": "order.placed", "data": data})
        .to_string(),
    )
}

fn trace(i: u64, at: i64, event: Bytes) -> Trace {
    Trace {
        tenant: "t".into(),
        bus: "b".into(),
        event_id: format!("ev-{i}"),
        received_ms: at,
        source: "shop".into(),
        event_type: "order.placed".into(),
        size_bytes: event.len() as u64,
        event,
        position: Some(i as i64),
        replay: None,
        // As the bus records them: the log entry keeps the head.
        head_in_log: true,
        body: TraceBody {
            routed: true,
            rules: vec![RuleTrace {
                rule: "orders".into(),
                outcome: RuleOutcome::Matched,
                filter: None,
                transform: None,
                error: None,
                targets: vec![TargetTrace {
                    state: TargetState::Delivered,
                    ..TargetTrace::new("hook")
                }],
            }],
            replays: Vec::new(),
        },
        state: TraceState::Delivered,
    }
}

/// The received time of the `i`th event: ~32 per millisecond, as under
/// load (a trace's time decides whether its id may be among the merged
/// ones, which a lookup then reads).
fn received(start: i64, i: u64) -> i64 {
    start + (i / 32) as i64
}

fn bench(c: &mut Criterion) {
    let (rt, _dir, store, now) = support::sqlite_store();
    let batch = |first: u64, archives: &[&str]| -> Vec<NewEvent> {
        (first..first + BATCH)
            .map(|i| NewEvent {
                tenant: "t".into(),
                bus: "b".into(),
                event_id: format!("ev-{i}"),
                body: body(i),
                ingested_ms: now,
                archives: archives.iter().map(|a| (*a).to_owned()).collect(),
                ..Default::default()
            })
            .collect()
    };
    // As a bus that traces writes them (the head in the entry), with the
    // event in an archive with a pattern (a row each) or without one (the
    // archive's range of the log).
    let traced = |first: u64, rows: &[&str], range: &[&str]| -> Vec<NewEvent> {
        batch(first, rows)
            .into_iter()
            .map(|e| NewEvent {
                traced: true,
                bus_archives: range.iter().map(|a| (*a).to_owned()).collect(),
                ..e
            })
            .collect()
    };
    // Grow the files and the WALs first, so no figure pays for it.
    for chunk in 0..50u64 {
        rt.block_on(store.append(batch(1_000_000_000 + chunk * BATCH, &["a"])))
            .unwrap();
    }

    let mut group = c.benchmark_group("history");
    group.throughput(Throughput::Elements(BATCH));
    let mut next = 0u64;
    group.bench_function("append_10", |b| {
        b.iter(|| {
            next += BATCH;
            rt.block_on(store.append(batch(next, &[]))).unwrap()
        })
    });
    group.bench_function("append_10_archived", |b| {
        b.iter(|| {
            next += BATCH;
            rt.block_on(store.append(batch(next, &["a"]))).unwrap()
        })
    });
    group.bench_function("append_10_traced", |b| {
        b.iter(|| {
            next += BATCH;
            rt.block_on(store.append(traced(next, &[], &[]))).unwrap()
        })
    });
    group.bench_function("append_10_traced_archived_rows", |b| {
        b.iter(|| {
            next += BATCH;
            rt.block_on(store.append(traced(next, &["a"], &[])))
                .unwrap()
        })
    });
    group.bench_function("append_10_traced_archived_range", |b| {
        b.iter(|| {
            next += BATCH;
            rt.block_on(store.append(traced(next, &[], &["w"])))
                .unwrap()
        })
    });
    let event = body(0);
    group.bench_function("record_10_traces", |b| {
        b.iter(|| {
            next += BATCH;
            let traces = (next..next + BATCH)
                .map(|i| trace(i, received(now, i), event.clone()))
                .collect::<Vec<_>>();
            rt.block_on(store.record_traces(traces.into())).unwrap()
        })
    });
    group.finish();
    // The router writes its traces in batches of up to a few hundred: the
    // cost per trace without a commit's fixed cost in it.
    let mut group = c.benchmark_group("history");
    group.throughput(Throughput::Elements(WIDE));
    group.bench_function("record_100_traces", |b| {
        b.iter(|| {
            next += WIDE;
            let traces = (next..next + WIDE)
                .map(|i| trace(i, received(now, i), event.clone()))
                .collect::<Vec<_>>();
            rt.block_on(store.record_traces(traces.into())).unwrap()
        })
    });
    // Most traces under load are of events no rule matched.
    group.bench_function("record_100_traces_no_match", |b| {
        b.iter(|| {
            next += WIDE;
            let traces = (next..next + WIDE)
                .map(|i| {
                    let mut t = trace(i, received(now, i), event.clone());
                    t.body.rules.clear();
                    t.state = TraceState::NoMatch;
                    t
                })
                .collect::<Vec<_>>();
            rt.block_on(store.record_traces(traces.into())).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
