//! The SQLite store's commit as ingest drives it: one ~1 KB event a commit
//! (single-event requests arriving one at a time) and ten. Run long enough,
//! the WAL passes its checkpoint threshold again and again, so a checkpoint
//! done inside a commit — SQLite's automatic one, before session 11 — shows
//! in the mean and the spread; since then a thread of its own does it
//! (`store/sqlite/checkpoint.rs`). Run with `cargo bench -p busbar --bench store`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use busbar::store::{EventLog, NewEvent};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let (rt, _dir, store, now) = support::sqlite_store();
    let pad = "x".repeat(900);
    let events = |first: u64, n: u64| -> Vec<NewEvent> {
        (first..first + n)
            .map(|i| NewEvent {
                tenant: "t".into(),
                bus: "b".into(),
                event_id: format!("ev-{i}"),
                body: Bytes::from(format!(
                    r#"{{"specversion":"1.0","id":"ev-{i}","source":"shop","type":"order.placed","data":{{"pad":"{pad}"}}}}"#
                )),
                ingested_ms: now,
                ..Default::default()
            })
            .collect()
    };
    let mut next = 0u64;
    let mut group = c.benchmark_group("store");
    for n in [1, 10] {
        group.throughput(Throughput::Elements(n));
        group.bench_function(format!("append_{n}"), |b| {
            b.iter(|| {
                next += n;
                rt.block_on(store.append(events(next, n))).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
