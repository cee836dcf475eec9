//! Plugin runtime benchmarks with real components built from `plugins/`:
//! filter cost per event on a fresh instance and on a reused one,
//! transformer cost per event, compile time, and cached (artifact) load time.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use busbar::event::Event;
use busbar::ingest::{IngestLimits, parse_structured};
use busbar::plugin::{
    FilterPlugin, InvokeContext, PluginLimits, PluginRuntime, RuntimeConfig, TransformerPlugin,
};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

/// Builds the guest plugins (release, wasm32-wasip2) and returns a component.
fn guest(name: &str) -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let target: PathBuf = match std::env::var("CARGO_TARGET_DIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => std::env::current_exe()
            .unwrap()
            .ancestors()
            .nth(3)
            .unwrap()
            .to_owned(),
    }
    .join("guests");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--target", "wasm32-wasip2", "--release"])
        .current_dir(root.join("plugins"))
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .unwrap();
    assert!(status.success(), "building the guest plugins failed");
    std::fs::read(
        target
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", name.replace('-', "_"))),
    )
    .unwrap()
}

fn event() -> Event {
    let e = serde_json::json!({"specversion": "1.0", "id": "e-1", "source": "shop.orders",
        "type": "order.created", "datacontenttype": "application/json",
        "data": {"amount": 150, "customer": "c-42", "email": "ann@example.com"}});
    parse_structured(e.to_string().as_bytes(), &IngestLimits::default()).unwrap()
}

fn bench(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rt = PluginRuntime::new(RuntimeConfig::new(dir.path())).unwrap();
    let filter_wasm = guest("amount-filter");
    let transformer_wasm = guest("enrich");
    let filter: FilterPlugin = rt
        .load_as(&rt.prepare(&filter_wasm).unwrap().sha256)
        .unwrap();
    let transformer: TransformerPlugin = rt
        .load_as(&rt.prepare(&transformer_wasm).unwrap().sha256)
        .unwrap();
    let config: BTreeMap<String, String> = [
        ("field", "/amount"),
        ("threshold", "100"),
        ("region", "eu-west-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let limits = PluginLimits::default();
    let cx = InvokeContext {
        tenant: "acme",
        plugin: "bench",
        version: 1,
        event_id: "e-1",
        config: &config,
        limits: &limits,
        allowed_hosts: &[],
    };
    let ev = event();

    c.bench_function("plugin/filter/fresh_instance", |b| {
        b.iter(|| tokio.block_on(rt.filter(&filter, &cx, &ev)).unwrap().value)
    });
    let mut reused = tokio.block_on(rt.reused_filter(&filter, &cx)).unwrap();
    c.bench_function("plugin/filter/reused_instance", |b| {
        b.iter(|| tokio.block_on(reused.filter(&ev)).unwrap())
    });
    drop(reused);
    c.bench_function("plugin/transformer/fresh_instance", |b| {
        b.iter(|| {
            tokio
                .block_on(rt.transform(&transformer, &cx, &ev))
                .unwrap()
                .value
                .len()
        })
    });

    let mut g = c.benchmark_group("plugin/compile");
    g.sample_size(10);
    g.bench_function("prepare_amount_filter", |b| {
        b.iter_batched(
            || {
                let d = tempfile::tempdir().unwrap();
                let mut cfg = RuntimeConfig::new(d.path());
                cfg.max_instances = 4;
                (PluginRuntime::new(cfg).unwrap(), d)
            },
            |(rt, _d)| rt.prepare(&filter_wasm).unwrap().compile_ms,
            BatchSize::PerIteration,
        )
    });
    let sha = rt.prepare(&filter_wasm).unwrap().sha256;
    g.bench_function("load_from_artifact", |b| {
        b.iter_batched(
            || {
                let mut cfg = RuntimeConfig::new(dir.path());
                cfg.max_instances = 4;
                PluginRuntime::new(cfg).unwrap()
            },
            |rt| {
                rt.load(&sha).unwrap();
                assert_eq!(rt.stats().compiles, 0);
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
