//! Busbar load generator: end-to-end figures for BENCHMARKS.md.
//!
//! Starts a bus in this process (temp data dir, default durability) and a
//! local HTTP sink, then drives ingestion over real HTTP on loopback:
//!
//! - `ingest`: events/s acknowledged, single events and batches, no rules;
//! - `e2e`: N rules (one matching) delivering to the sink: delivered events/s
//!   at full speed, and ingest-to-delivery latency percentiles at a fixed rate;
//!   with `--batch N`, delivered events/s to one http target unbatched and
//!   with `batch.max_events` = N (ingest in batches of N both times).
//! - `nodes`: the same full-speed e2e figure against bus nodes running
//!   elsewhere (`--nodes URL,URL,...`, any store), senders spread over them,
//!   with the CPU time each process in `--pids` spent per delivered event
//!   (from `/proc/<pid>/stat`), so a figure on this machine can be scaled to
//!   others. `examples/scale.sh` runs it for SQLite and 1-3 nodes on NATS.
//! - `nats-ceiling`: JetStream alone: 1 KB publishes acknowledged per second on a
//!   stream of `--replicas` at `--nats` — the most a bus on that cluster could
//!   accept, one publish per event.
//! - `door`: the ingest door's costs: single-event ingest of a ~1 KB event
//!   with 20 payload properties on a plain bus, on a bus with an `enforce`
//!   schema of those 20 properties, and on a bus with a deduplication
//!   window; then delivered events/s to the sink with a rule that keeps
//!   order per partition key (1,000 keys) against the same rule unordered;
//! - `history`: ingest and e2e with tracing and archiving off, then on (the
//!   `--history on|off|both` switch; `both` runs each phase off and on back
//!   to back, in alternating order, and prints the ratio of the medians,
//!   each pair's ratio and their median, and the CPU per event of the
//!   store's and the traces' writer threads, where history's own work runs,
//!   with the deliveries parked as jobs and the trace facts written per
//!   event: work beyond one log write and one trace row), then replay speed
//!   and live latency during a replay;
//! - `traces`: fills a store with `--traces` (1,000,000) traces and measures
//!   trace lookup and search latency;
//! - `ceiling`: no bus: the same client against a bare axum handler that reads
//!   the body, parses the JSON and answers 202 (single events and batches of
//!   10), and the bare sink round trip (client → sink handler). `all` runs it
//!   first and prints every figure also as a fraction of it, because on a
//!   shared machine absolute figures drift between runs and ratios within one
//!   run much less;
//! - `memory`: `--tenants` tenants with `--total-rules` rules between them at
//!   a paced `--memory-rate` events/s (batches of 10, one rule per event
//!   matching and delivering to the sink): the process's resident set above
//!   the baseline measured before the bus started, idle and under load.
//!
//! `--fsync always` runs the bus with power-loss durability (`fsync = "always"`);
//! the default is `normal`.
//!
//! Run: `cargo run --release -p busbar --example loadgen -- all`

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use busbar::config::Config;
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Scenario {
    Ingest,
    E2e,
    /// Built-in transform vs Wasm filter + transformer, with a live swap.
    Plugins,
    /// Delivered events/s through bus nodes running elsewhere (`--nodes`).
    Nodes,
    /// JetStream publishes acknowledged per second (`--nats`).
    NatsCeiling,
    /// Schema validation, deduplication and FIFO costs.
    Door,
    /// Tracing and archiving off vs on; replay speed; latency during a replay.
    History,
    /// Trace lookup and search latency with many stored traces.
    Traces,
    /// A bare axum ingest handler and the bare sink round trip: this run's ceiling.
    Ceiling,
    /// Resident set with many tenants and rules, idle and at a paced rate.
    Memory,
    All,
}

/// Tracing and archiving in the `history` scenario.
#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum HistorySwitch {
    Off,
    On,
    Both,
}

/// How hard the bus's store syncs commits (config `fsync`).
#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Fsync {
    /// WAL, survives a crash of the process.
    Normal,
    /// fsync on every commit, survives power loss.
    Always,
}

/// Busbar load generator.
#[derive(Debug, Parser)]
struct Args {
    /// What to measure.
    #[arg(value_enum, default_value = "all")]
    scenario: Scenario,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent HTTP connections sending events.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Rules on the bus for e2e (one matches).
    #[arg(long, default_value_t = 10)]
    rules: usize,
    /// Rounds per measurement for `door` (medians are reported) and `history`
    /// (off/on alternate each round, to even out drift).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Event rate for the latency measurement.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Directory with the built example plugins (amount_filter.wasm, enrich.wasm),
    /// e.g. plugins/target/wasm32-wasip2/release after
    /// `cargo build --target wasm32-wasip2 --release` in plugins/.
    #[arg(long, default_value = "plugins/target/wasm32-wasip2/release")]
    guests: std::path::PathBuf,
    /// `nodes`: base URLs of running bus nodes, comma-separated.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    /// `nodes`: the nodes' admin key.
    #[arg(long, env = "BUSBAR_ADMIN_KEY", default_value = "bench-admin")]
    admin_key: String,
    /// `nodes`: processes whose CPU time to report, as `name=pid`
    /// (comma-separated), e.g. the bus nodes and the NATS servers.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<String>,
    /// `nats-ceiling`: NATS server URLs, comma-separated.
    #[arg(long)]
    nats: Option<String>,
    /// `nats-ceiling`: replicas of the measured stream.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Address of the local sink deliveries go to (`nodes`: must be an
    /// address the nodes may reach).
    #[arg(long, default_value = "127.0.0.1:0")]
    sink: std::net::SocketAddr,
    /// `history`: tracing and archiving off, on, or both in turn.
    #[arg(long, value_enum, default_value = "both")]
    history: HistorySwitch,
    /// `traces`: how many traces to store before measuring.
    #[arg(long, default_value_t = 1_000_000)]
    traces: u64,
    /// `traces`: each trace keeps its own copy of the event (as traces not
    /// made from a log entry do) instead of referring to its log entry.
    #[arg(long)]
    trace_copies: bool,
    /// `e2e`: measure batched delivery instead: the http target with
    /// `batch.max_events` = N against the same target unbatched, both fed
    /// with ingest batches of N, in the same run.
    #[arg(long)]
    batch: Option<usize>,
    /// The bus's durability: `normal` (the default) or `always` (power loss).
    #[arg(long, value_enum, default_value = "normal")]
    fsync: Fsync,
    /// `memory`: tenants, each with its share of `--total-rules`.
    #[arg(long, default_value_t = 100)]
    tenants: usize,
    /// `memory`: rules over all tenants.
    #[arg(long, default_value_t = 10_000)]
    total_rules: usize,
    /// `memory`: events/s offered (batches of 10 spread over the tenants).
    #[arg(long, default_value_t = 20_000)]
    memory_rate: u64,
}

/// Uploads a component as plugin `name`; returns the answer's text.
async fn upload(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    name: &str,
    wasm: Vec<u8>,
) -> anyhow::Result<String> {
    let r = client
        .put(format!("{url}/v1/plugins/{name}"))
        .bearer_auth(key)
        .header("content-type", "application/wasm")
        .body(wasm)
        .send()
        .await?;
    Ok(r.text().await?)
}

/// Appends an empty custom section: the same component under a new sha256,
/// so uploading it makes a new version with identical behaviour.
fn with_custom_section(mut wasm: Vec<u8>, tag: &str) -> Vec<u8> {
    let name = tag.as_bytes();
    let payload_len = 1 + name.len();
    wasm.push(0); // custom section id
    wasm.push(payload_len as u8); // LEB128, small
    wasm.push(name.len() as u8);
    wasm.extend_from_slice(name);
    wasm
}

/// What the sink saw: count and per-event latency (µs since the event was sent).
#[derive(Default)]
struct Sink {
    count: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

fn started() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

async fn sink_handler(State(sink): State<Arc<Sink>>, body: Bytes) -> &'static str {
    if let Ok(v) = serde_json::from_slice::<Value>(&body)
        && let Some(sent) = v["sent_us"].as_u64()
    {
        let now = started().elapsed().as_micros() as u64;
        if let Ok(mut l) = sink.latencies_us.lock() {
            l.push(now.saturating_sub(sent));
        }
    }
    sink.count.fetch_add(1, Ordering::Relaxed);
    "ok"
}

/// A sink that only counts (replayed events carry their old send times,
/// which must not count as live latency).
async fn count_sink_handler(State(sink): State<Arc<Sink>>) -> &'static str {
    sink.count.fetch_add(1, Ordering::Relaxed);
    "ok"
}

/// The sink of batched deliveries: counts the events in each array.
async fn batch_sink_handler(State(sink): State<Arc<Sink>>, body: Bytes) -> &'static str {
    if let Ok(events) = serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(&body) {
        sink.count.fetch_add(events.len() as u64, Ordering::Relaxed);
    }
    "ok"
}

/// `e2e --batch N`: full-speed delivered events/s to one http target,
/// unbatched and then with `batch.max_events` = N (ingest in batches of N
/// both times), and their ratio.
async fn batched_e2e(
    args: &Args,
    bench: &Arc<Bench>,
    sink: &Sink,
    sink_url: &str,
    n: usize,
) -> anyhow::Result<()> {
    let batch_url = sink_url.replace("/sink", "/sink-batch");
    let mut rates = Vec::new();
    for batched in [false, true] {
        let target = if batched {
            json!({"id": "sink", "type": "http", "url": batch_url,
                   "batch": {"max_events": n, "max_wait_ms": 5}})
        } else {
            json!({"id": "sink", "type": "http", "url": sink_url})
        };
        let rule = json!({"pattern": {"source": ["bench.match"], "type": [{"prefix": "order."}]},
                          "targets": [target]});
        let status = bench
            .client
            .put(format!("{}/v1/buses/default/rules/r0", bench.urls[0]))
            .bearer_auth(&bench.key)
            .json(&rule)
            .send()
            .await?
            .status();
        anyhow::ensure!(status.is_success(), "rule not saved: {status}");
        let before = sink.count.load(Ordering::Relaxed);
        let t0 = Instant::now();
        let sent = bench
            .flood(args.connections, args.seconds, n, "bench.match")
            .await;
        let delivered = drained(sink, before, sent, Duration::from_secs(60)).await;
        let elapsed = t0.elapsed().as_secs_f64();
        let rate = delivered as f64 / elapsed;
        println!(
            "e2e {} rules, ingest batches of {n}, delivery {}: {sent} sent, {delivered} delivered in {elapsed:.1} s = {rate:.0} events/s delivered",
            args.rules,
            if batched {
                format!("batched ({n} per request)")
            } else {
                "one event per request".to_owned()
            }
        );
        rates.push(rate);
    }
    println!(
        "e2e batched/unbatched delivery: {:.2}x",
        rates[1] / rates[0].max(1.0)
    );
    Ok(())
}

/// Event `i`'s id: a random-looking UUID (version 4 layout), as producers
/// send them, derived from `i` so a scenario can name an event it sent.
/// Counting ids ("ev-1", "ev-2", ...) would arrive nearly in key order and
/// hide what an index on ids costs the store.
fn event_id(i: u64) -> String {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let (hi, lo) = (mix(i), mix(i ^ 0x5555_5555_5555_5555));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xfff,
        0x8000 | ((lo >> 48) & 0x3fff),
        lo & 0xffff_ffff_ffff
    )
}

fn event(i: u64, source: &str) -> Value {
    // About 1 KB, like the pattern benchmarks.
    json!({"specversion": "1.0", "id": event_id(i), "source": source, "type": "order.created",
           "datacontenttype": "application/json",
           "data": {"sent_us": started().elapsed().as_micros() as u64, "order": i, "customer": "c-42",
                    "items": (0..8).map(|k| json!({"sku": format!("sku-{k}"), "qty": k, "price": 9.99})).collect::<Vec<_>>(),
                    "note": "x".repeat(400)}})
}

struct Bench {
    /// Where events go: one URL, or several nodes (connection `i` sends to
    /// `urls[i % len]`).
    urls: Vec<String>,
    key: String,
    client: reqwest::Client,
}

impl Bench {
    async fn post(&self, content_type: &str, body: String) -> bool {
        self.post_to(0, "default", content_type, body).await
    }

    async fn post_to(
        &self,
        connection: usize,
        bus: &str,
        content_type: &str,
        body: String,
    ) -> bool {
        let url = &self.urls[connection % self.urls.len()];
        match self
            .client
            .post(format!("{url}/v1/buses/{bus}/events"))
            .bearer_auth(&self.key)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
        {
            Ok(r) => r.status().as_u16() == 202,
            Err(_) => false,
        }
    }

    /// Sends door events to `bus` as fast as `connections` allow for
    /// `seconds`, in batches of `batch` (1: structured single events);
    /// returns acked events.
    async fn flood_door(
        self: &Arc<Self>,
        connections: usize,
        seconds: u64,
        bus: &'static str,
        batch: usize,
        keys: u64,
    ) -> u64 {
        // Ids never repeat across runs (the dedup bus would drop repeats).
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let acked = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let (me, acked) = (self.clone(), acked.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let i = NEXT.fetch_add(batch as u64, Ordering::Relaxed);
                    let (content_type, body) = if batch == 1 {
                        (
                            "application/cloudevents+json",
                            door_event(i, keys).to_string(),
                        )
                    } else {
                        let events: Vec<Value> =
                            (0..batch as u64).map(|k| door_event(i + k, keys)).collect();
                        (
                            "application/cloudevents-batch+json",
                            Value::Array(events).to_string(),
                        )
                    };
                    let ok = match me
                        .client
                        .post(format!("{}/v1/buses/{bus}/events", me.urls[0]))
                        .bearer_auth(&me.key)
                        .header("content-type", content_type)
                        .body(body)
                        .send()
                        .await
                    {
                        Ok(r) => r.status().as_u16() == 202,
                        Err(_) => false,
                    };
                    if ok {
                        acked.fetch_add(batch as u64, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        acked.load(Ordering::Relaxed)
    }

    /// Sends as fast as `connections` allow for `seconds`; returns acked events.
    async fn flood(
        self: &Arc<Self>,
        connections: usize,
        seconds: u64,
        batch: usize,
        source: &'static str,
    ) -> u64 {
        self.flood_to("default", connections, seconds, batch, source)
            .await
    }

    /// [`Self::flood`] to one bus.
    async fn flood_to(
        self: &Arc<Self>,
        bus: &'static str,
        connections: usize,
        seconds: u64,
        batch: usize,
        source: &'static str,
    ) -> u64 {
        // Ids never repeat within a process, as a producer's ids do not:
        // ids that came back every phase let a store that indexes them by
        // key (SQLite's recent trace ids) hold one entry for many events.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let acked = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for connection in 0..connections {
            let (me, acked) = (self.clone(), acked.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let i = NEXT.fetch_add(batch as u64, Ordering::Relaxed);
                    let ok = if batch == 1 {
                        me.post_to(
                            connection,
                            bus,
                            "application/cloudevents+json",
                            event(i, source).to_string(),
                        )
                        .await
                    } else {
                        let events: Vec<Value> =
                            (0..batch as u64).map(|k| event(i + k, source)).collect();
                        me.post_to(
                            connection,
                            bus,
                            "application/cloudevents-batch+json",
                            Value::Array(events).to_string(),
                        )
                        .await
                    };
                    if ok {
                        acked.fetch_add(batch as u64, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        acked.load(Ordering::Relaxed)
    }
}

/// CPU time this process has used (user + system; 0 where `/proc` is
/// missing). Throughput on a shared machine swings with other work, CPU
/// time per event much less.
fn own_cpu_seconds() -> f64 {
    cpu_seconds("self").unwrap_or(0.0)
}

/// A ~1 KB order event whose payload has 20 properties (what the door
/// benchmarks validate), keyed by one of `keys` partition keys.
fn door_event(i: u64, keys: u64) -> Value {
    json!({"specversion": "1.0", "id": format!("door-{i}"), "source": "shop", "type": "order.created",
           "datacontenttype": "application/json", "partitionkey": format!("k{}", i % keys.max(1)),
           "data": door_data(i)})
}

/// The 20-property payload of [`door_event`] (and of the criterion bench).
fn door_data(i: u64) -> Value {
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

/// The 20-property JSON Schema of [`door_data`].
fn door_schema() -> Value {
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

/// The median: the middle value, or the mean of the middle two for an
/// even count (the upper of the two, which this used to take, biased
/// every median of six rounds upward).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

/// CPU time (user + system, seconds) a process has used, from
/// `/proc/<pid>/stat` (clock ticks of 1/100 s).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// CPU time (seconds) of the bus's two writer threads in this process:
/// the store's writer (`busbar-store-wr…`) and the traces' writer
/// (`busbar-trace-wr…`), each with its file's checkpointer
/// (`busbar-store-ck…`, `busbar-trace-ck…`), which since session 11 does
/// the checkpoints the writer did inside its commits. History's direct
/// cost is on these threads, and a thread's own CPU per event moves far
/// less with a shared machine's load than throughput does.
fn writer_cpu_seconds() -> [f64; 2] {
    let mut out = [0.0; 2];
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let tid = task.file_name().to_string_lossy().into_owned();
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let slot = if comm.starts_with("busbar-store-wr") || comm.starts_with("busbar-store-ck") {
            0
        } else if comm.starts_with("busbar-trace-wr") || comm.starts_with("busbar-trace-ck") {
            1
        } else {
            continue;
        };
        out[slot] += cpu_seconds(&format!("self/task/{tid}")).unwrap_or(0.0);
    }
    out
}

/// The keys of the store's and the traces' writer figures of `phase`.
fn writer_keys(phase: &str) -> [&'static str; 2] {
    match phase {
        "single" => ["store writer single", "trace writer single"],
        "batch10" => ["store writer batch10", "trace writer batch10"],
        _ => ["store writer e2e", "trace writer e2e"],
    }
}

/// The key of the event counts behind `phase`'s writer figures.
fn events_key(phase: &str) -> &'static str {
    match phase {
        "single" => "events single",
        "batch10" => "events batch10",
        _ => "events e2e",
    }
}

/// Per-phase figures of the `history` scenario: (mode, figure) → one value a round.
type HistoryFigures<'a> = std::collections::BTreeMap<(&'a str, &'static str), Vec<f64>>;

/// The writers' CPU per event since `before` (see [`writer_cpu_seconds`]),
/// recorded under `phase` (`single`, `batch10` or `e2e`); returns it.
fn writers_us<'a>(
    figures: &mut HistoryFigures<'a>,
    mode: &'a str,
    phase: &str,
    before: [f64; 2],
    events: u64,
) -> [f64; 2] {
    let after = writer_cpu_seconds();
    let us = [0, 1].map(|i| (after[i] - before[i]) * 1e6 / events.max(1) as f64);
    for (key, value) in writer_keys(phase).into_iter().zip(us) {
        figures.entry((mode, key)).or_default().push(value);
    }
    figures
        .entry((mode, events_key(phase)))
        .or_default()
        .push(events as f64);
    us
}

/// `name=pid` pairs, this load generator included as `loadgen`.
fn watched(args: &Args) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = args
        .pids
        .iter()
        .filter_map(|p| p.split_once('='))
        .map(|(n, p)| (n.to_owned(), p.to_owned()))
        .collect();
    out.push(("loadgen".into(), std::process::id().to_string()));
    out
}

/// `nodes`: full-speed e2e through running nodes, with CPU per event.
async fn external(
    args: &Args,
    client: &reqwest::Client,
    sink: &Arc<Sink>,
    sink_url: &str,
) -> anyhow::Result<()> {
    let nodes = args.nodes.clone();
    anyhow::ensure!(
        !nodes.is_empty(),
        "--nodes: give the URLs of running bus nodes"
    );
    let tenant = format!(
        "bench{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let created: Value = client
        .post(format!("{}/v1/admin/tenants", nodes[0]))
        .bearer_auth(&args.admin_key)
        .json(&json!({"name": tenant}))
        .send()
        .await?
        .json()
        .await?;
    let key = created["api_key"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("creating a tenant: {created}"))?
        .to_owned();
    for r in 0..args.rules {
        let source = if r == 0 {
            "bench.match".to_owned()
        } else {
            format!("bench.other{r}")
        };
        let rule = json!({"pattern": {"source": [source], "type": [{"prefix": "order."}]},
                          "targets": [{"id": "sink", "type": "http", "url": sink_url}]});
        let put = client
            .put(format!("{}/v1/buses/default/rules/r{r}", nodes[0]))
            .bearer_auth(&key)
            .json(&rule)
            .send()
            .await?;
        anyhow::ensure!(put.status().is_success(), "rule: {}", put.text().await?);
    }
    // Every node has the rules before the clock starts.
    for node in &nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = client
                .get(format!("{node}/v1/buses/default/rules/r0"))
                .bearer_auth(&key)
                .send()
                .await?;
            if r.status().is_success() {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "{node} has no rule after 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let bench = Arc::new(Bench {
        urls: nodes.clone(),
        key,
        client: client.clone(),
    });
    let pids = watched(args);
    let cpu_before: Vec<Option<f64>> = pids.iter().map(|(_, p)| cpu_seconds(p)).collect();
    let before = sink.count.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let sent = bench
        .flood(args.connections, args.seconds, 10, "bench.match")
        .await;
    let drain_deadline = Instant::now() + Duration::from_secs(120);
    while sink.count.load(Ordering::Relaxed) - before < sent && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = sink.count.load(Ordering::Relaxed) - before;
    let elapsed = t0.elapsed().as_secs_f64();
    println!(
        "nodes={} rules={}: {sent} sent, {delivered} delivered in {elapsed:.1} s = {:.0} events/s delivered",
        nodes.len(),
        args.rules,
        delivered as f64 / elapsed
    );
    // Routing is done when every node has acknowledged its log entries
    // (their traces written first), which may trail the deliveries. The
    // CPU figures cover that too: it is work the events cost, and a node
    // stopped before it is done hands its entries to the next phase.
    for node in &nodes {
        routed(client, node, Duration::from_secs(120)).await;
    }
    let whole = t0.elapsed().as_secs_f64();
    println!(
        "  routing acknowledged on every node {:.1} s after the start",
        whole
    );
    for ((name, pid), before) in pids.iter().zip(cpu_before) {
        if let (Some(before), Some(after)) = (before, cpu_seconds(pid)) {
            let used = after - before;
            println!(
                "  cpu {name:>10}: {used:6.2} s = {:4.2} cores, {:6.1} µs per delivered event",
                used / whole,
                used * 1e6 / delivered.max(1) as f64
            );
        }
    }
    Ok(())
}

/// Waits until the sink has seen `want` more events than `before` (bounded).
async fn drained(sink: &Sink, before: u64, want: u64, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    while sink.count.load(Ordering::Relaxed) - before < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sink.count.load(Ordering::Relaxed) - before
}

/// Waits until the bus has routed everything it accepted: its
/// `busbar_routing_backlog_events` gauge (log entries handed to the router
/// and not yet acknowledged, traces written first) reads 0 five times in a
/// row, 100 ms apart — a router that is behind always has entries out.
/// Returns how long that took.
async fn routed(client: &reqwest::Client, url: &str, limit: Duration) -> Duration {
    let t0 = Instant::now();
    let mut quiet = 0;
    while quiet < 5 && t0.elapsed() < limit {
        let backlog = metric(client, url, "busbar_routing_backlog_events").await;
        quiet = if backlog == Some(0.0) { quiet + 1 } else { 0 };
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if quiet < 5 {
        eprintln!("warning: the router did not drain within {limit:?}; the next phase pays for it");
    }
    t0.elapsed()
}

/// The sum of a metric's series on the bus's `/metrics` (`None` when it has
/// none yet). Lines carry labels: `busbar_routing_backlog_events{node="…"} 0`.
async fn metric(client: &reqwest::Client, url: &str, name: &str) -> Option<f64> {
    let text = match client.get(format!("{url}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

/// Sends `rate` single events/s to `bus` for `seconds`; latency percentiles at the sink.
async fn latency(
    bench: &Arc<Bench>,
    sink: &Sink,
    bus: &'static str,
    rate: u64,
    seconds: u64,
    base: u64,
) -> String {
    if let Ok(mut l) = sink.latencies_us.lock() {
        l.clear();
    }
    let total = rate * seconds;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let before = sink.count.load(Ordering::Relaxed);
    for i in 0..total {
        ticker.tick().await;
        let me = bench.clone();
        tokio::spawn(async move {
            me.post_to(
                i as usize,
                bus,
                "application/cloudevents+json",
                event(base + i, "bench.live").to_string(),
            )
            .await
        });
    }
    drained(sink, before, total, Duration::from_secs(30)).await;
    let mut l = sink
        .latencies_us
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    l.sort_unstable();
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} delivered)",
        percentile(&l, 0.50),
        percentile(&l, 0.90),
        percentile(&l, 0.99),
        l.last().copied().unwrap_or(0) as f64 / 1000.0,
        l.len()
    )
}

/// The `traces` scenario: a store with `n` traces, then lookup and search latency.
async fn traces_scenario(n: u64, copies: bool) -> anyhow::Result<()> {
    use busbar::store::traces::{RuleOutcome, RuleTrace, TargetState, TargetTrace, TraceBody};
    use busbar::store::{EventLog, NewEvent, Trace, TraceQuery, TraceState, Traces};
    let dir = tempfile::tempdir()?;
    let clock: busbar::clock::SharedClock = Arc::new(busbar::clock::SystemClock);
    let store = busbar::store::sqlite::SqliteStore::open(dir.path(), Default::default(), clock)?;
    let t0_ms = busbar::clock::now_ms() - n as i64;
    let body = Bytes::from(event(0, "bench.trace").to_string());
    // One event in ten on a second bus: a search across buses merges them.
    let bus_of = |i: u64| if i % 10 == 9 { "audit" } else { "default" };
    let make = |i: u64| {
        // Rare values (10 in 1,000,000) are the searches that walk longest.
        let state = match i % 10 {
            _ if i % 100_000 == 33_333 => TraceState::Retrying,
            0 => TraceState::NoMatch,
            1 => TraceState::DeadLettered,
            _ => TraceState::Delivered,
        };
        let rules = if state == TraceState::NoMatch {
            Vec::new()
        } else {
            vec![RuleTrace {
                rule: format!("rule-{}", i % 20),
                outcome: RuleOutcome::Matched,
                filter: None,
                transform: None,
                error: None,
                targets: vec![TargetTrace {
                    state: if state == TraceState::DeadLettered {
                        TargetState::DeadLettered
                    } else {
                        TargetState::Delivered
                    },
                    ..TargetTrace::new("hook")
                }],
            }]
        };
        Trace {
            tenant: "bench".into(),
            bus: bus_of(i).into(),
            event_id: event_id(i),
            received_ms: t0_ms + i as i64,
            source: if i % 100_000 == 77_777 {
                "source-rare".into()
            } else {
                format!("source-{}", i % 50)
            },
            event_type: format!("type-{}", i % 100),
            size_bytes: body.len() as u64,
            event: body.clone(),
            position: None,
            replay: None,
            head_in_log: !copies,
            body: TraceBody {
                routed: true,
                rules,
                replays: Vec::new(),
            },
            state,
        }
    };
    // As the bus does: each event is appended to the log and routed, and
    // its trace refers to its log entry (the store keeps no copy in the
    // trace). Only the trace writes are timed.
    let consumer = store.consumer().await?;
    let mut tracing = Duration::ZERO;
    let mut i = 0;
    while i < n {
        let end = (i + 2000).min(n);
        let events = (i..end)
            .map(|k| {
                // The head the log keeps is the trace's (the events alike
                // but for their trace's source and type).
                let trace = make(k);
                NewEvent {
                    tenant: "bench".into(),
                    bus: bus_of(k).into(),
                    event_id: event_id(k),
                    body: body.clone(),
                    ingested_ms: t0_ms + k as i64,
                    traced: !copies,
                    head: busbar::store::HeadHint(Some(Arc::new(busbar::event::EventHead {
                        source: trace.source,
                        event_type: trace.event_type,
                        replayname: None,
                    }))),
                    ..Default::default()
                }
            })
            .collect();
        store.append(events).await?;
        let mut entries = Vec::new();
        while entries.len() < (end - i) as usize {
            let more = (end - i) as usize - entries.len();
            entries.extend(consumer.next(more, Duration::from_secs(5)).await?);
        }
        let batch: Vec<Trace> = (i..end)
            .zip(&entries)
            .map(|(k, entry)| Trace {
                position: (!copies).then_some(entry.position),
                ..make(k)
            })
            .collect();
        let t = Instant::now();
        store.record_traces(batch.into()).await?;
        tracing += t.elapsed();
        consumer
            .ack(entries.into_iter().map(|e| e.ack).collect())
            .await?;
        i = end;
    }
    println!(
        "stored {n} traces in {:.1} s of trace writes ({:.0} traces/s)",
        tracing.as_secs_f64(),
        n as f64 / tracing.as_secs_f64()
    );
    let timed = |label: &'static str, mut times: Vec<Duration>| {
        times.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{label}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} calls)",
            ms(times[times.len() / 2]),
            ms(times[times.len() * 99 / 100]),
            ms(*times.last().unwrap_or(&Duration::ZERO)),
            times.len()
        );
    };
    let mut lookups = Vec::new();
    for k in 0..1000u64 {
        let id = event_id((k * 7919) % n);
        let t = Instant::now();
        let found = store.trace("bench", &id, None).await?;
        lookups.push(t.elapsed());
        anyhow::ensure!(
            found.is_some_and(|t| !t.event.is_empty()),
            "{id} not found with its event"
        );
    }
    timed("trace lookup by id", lookups);
    let queries: Vec<(&str, TraceQuery)> = vec![
        ("search newest (no filter)", TraceQuery::default()),
        (
            "search by source",
            TraceQuery {
                source: Some("source-7".into()),
                ..Default::default()
            },
        ),
        (
            "search by type",
            TraceQuery {
                event_type: Some("type-42".into()),
                ..Default::default()
            },
        ),
        (
            "search by state dead_lettered",
            TraceQuery {
                state: Some(TraceState::DeadLettered),
                ..Default::default()
            },
        ),
        (
            "search by rule",
            TraceQuery {
                rule: Some("rule-3".into()),
                ..Default::default()
            },
        ),
        (
            "search by time range (middle)",
            TraceQuery {
                from_ms: Some(t0_ms + n as i64 / 2),
                to_ms: Some(t0_ms + n as i64 / 2 + 10_000),
                ..Default::default()
            },
        ),
        (
            "search by a rare source (10 in 1,000,000)",
            TraceQuery {
                source: Some("source-rare".into()),
                ..Default::default()
            },
        ),
        (
            "search by a rare state retrying (10 in 1,000,000)",
            TraceQuery {
                state: Some(TraceState::Retrying),
                ..Default::default()
            },
        ),
        (
            "search by bus (audit, 1 in 10)",
            TraceQuery {
                bus: Some("audit".into()),
                ..Default::default()
            },
        ),
        (
            "search source + state",
            TraceQuery {
                source: Some("source-11".into()),
                state: Some(TraceState::DeadLettered),
                ..Default::default()
            },
        ),
    ];
    for (label, q) in queries {
        let mut times = Vec::new();
        let mut next = None;
        // A search that filters scans a bounded stretch per call: a rare
        // value's calls may answer an empty page with a cursor. A pass is
        // the calls from the newest trace to the end of the results.
        let (mut found, mut empty, mut pass) = (0usize, 0usize, Duration::ZERO);
        let mut passes = Vec::new();
        for _ in 0..100 {
            let t = Instant::now();
            let (page, cursor) = store.search_traces("bench", &q, next.as_ref(), 100).await?;
            let took = t.elapsed();
            times.push(took);
            pass += took;
            anyhow::ensure!(
                !page.is_empty() || cursor.is_some() || found > 0,
                "{label}: nothing found"
            );
            found += page.len();
            empty += usize::from(page.is_empty());
            next = cursor;
            if next.is_none() {
                passes.push((pass, found));
                (found, pass) = (0, Duration::ZERO);
            }
        }
        if let Some((slowest, t)) = times.iter().enumerate().max_by_key(|(_, t)| **t)
            && t.as_millis() >= 10
        {
            println!("  the slowest call was call {} of 100", slowest + 1);
        }
        timed(label, times);
        if let Some((pass, found)) = passes.first() {
            println!(
                "  {empty} of the 100 calls answered an empty page with a cursor; a whole pass found {found} in {:.1} ms",
                pass.as_secs_f64() * 1000.0
            );
        }
    }
    Ok(())
}

/// `nats-ceiling`: 1 KB publishes acknowledged per second by a JetStream stream.
async fn ceiling(args: &Args) -> anyhow::Result<()> {
    let urls = args
        .nats
        .clone()
        .ok_or_else(|| anyhow::anyhow!("--nats: give the NATS server URLs"))?;
    let client = async_nats::connect(urls.as_str()).await?;
    let js = async_nats::jetstream::new(client);
    let name = "LOADGEN_CEILING";
    let _ = js.delete_stream(name).await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.into(),
        subjects: vec!["loadgen.ceiling".into()],
        num_replicas: args.replicas,
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let payload = bytes::Bytes::from(event(0, "bench.ceiling").to_string());
    let acked = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    // Each task keeps 10 publishes in flight, like a batch of 10 events.
    for _ in 0..args.connections {
        let (js, acked, payload) = (js.clone(), acked.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let mut acks = Vec::new();
                for _ in 0..10 {
                    if let Ok(ack) = js.publish("loadgen.ceiling", payload.clone()).await {
                        acks.push(ack);
                    }
                }
                for ack in acks {
                    if ack.await.is_ok() {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let n = acked.load(Ordering::Relaxed);
    println!(
        "ceiling: R{} stream, {} publishers x 10 in flight: {n} acknowledged = {:.0} publishes/s",
        args.replicas,
        args.connections,
        n as f64 / t0.elapsed().as_secs_f64()
    );
    let _ = js.delete_stream(name).await;
    Ok(())
}

/// This run's ceiling: what the same client and HTTP stack do with no bus
/// behind them.
#[derive(Clone, Copy, Debug)]
struct Ceiling {
    /// Single-event requests/s to a bare handler (reads, parses, answers 202).
    single: f64,
    /// Events/s in batches of 10 to the same handler.
    batch: f64,
    /// Requests/s from the client straight to the sink handler.
    sink: f64,
}

impl Ceiling {
    /// `figure` as a fraction of the ingest ceiling for `batch`.
    fn ingest(ceiling: Option<Self>, batch: usize, figure: f64) -> String {
        ceiling.map_or_else(String::new, |c| {
            let top = if batch == 1 { c.single } else { c.batch };
            format!(" = {:.2} of the ceiling ({top:.0})", figure / top)
        })
    }

    /// `figure` (delivered events/s) as a fraction of the sink round trip.
    fn sink(ceiling: Option<Self>, figure: f64) -> String {
        ceiling.map_or_else(String::new, |c| {
            format!(
                " = {:.2} of the sink round-trip ceiling ({:.0})",
                figure / c.sink,
                c.sink
            )
        })
    }
}

/// The bare ingest handler of the ceiling: read the body, parse the JSON, answer 202.
async fn bare_ingest(body: Bytes) -> axum::http::StatusCode {
    match serde_json::from_slice::<Value>(&body) {
        Ok(_) => axum::http::StatusCode::ACCEPTED,
        Err(_) => axum::http::StatusCode::BAD_REQUEST,
    }
}

/// Serves `app` on a fresh loopback port; returns its base URL and the server task.
async fn serve_local(app: Router) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, task))
}

/// The `ceiling` scenario: the ingest shapes against [`bare_ingest`], then the
/// client posting events straight to a sink handler (what one delivery costs
/// the machine without a bus), each for `--seconds`.
async fn http_ceiling(args: &Args, client: &reqwest::Client) -> anyhow::Result<Ceiling> {
    let (url, server) =
        serve_local(Router::new().route("/v1/buses/{bus}/events", post(bare_ingest))).await?;
    let bench = Arc::new(Bench {
        urls: vec![url],
        key: "ceiling".into(),
        client: client.clone(),
    });
    let mut rates = [0.0; 2];
    for (rate, batch) in rates.iter_mut().zip([1usize, 10]) {
        let n = bench
            .flood(args.connections, args.seconds, batch, "bench.ceiling")
            .await;
        *rate = n as f64 / args.seconds as f64;
        println!("ceiling ingest batch={batch:>2}: {rate:>9.0} events/s (bare handler)");
    }
    server.abort();

    let sink = Arc::new(Sink::default());
    let (url, server) = serve_local(
        Router::new()
            .route("/sink", post(sink_handler))
            .with_state(sink.clone()),
    )
    .await?;
    let sink_url = format!("{url}/sink");
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for connection in 0..args.connections {
        let (client, sink_url) = (client.clone(), sink_url.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = connection as u64 * 1_000_000_000;
            while Instant::now() < deadline {
                i += 1;
                // The body the bus delivers: the event's data.
                let body = event(i, "bench.ceiling")["data"].to_string();
                let _ = client
                    .post(&sink_url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let sink_rate = sink.count.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();
    server.abort();
    println!("ceiling sink round trip:  {sink_rate:>9.0} requests/s (client → sink handler)");
    Ok(Ceiling {
        single: rates[0],
        batch: rates[1],
        sink: sink_rate,
    })
}

/// `(VmRSS, VmHWM)` of this process in kB, from `/proc/self/status` (zeros
/// where it is missing).
fn memory_kb() -> (u64, u64) {
    memory_kb_of(None)
}

/// `(VmRSS, VmHWM)` in kB of process `pid` (this one if `None`).
fn memory_kb_of(pid: Option<u32>) -> (u64, u64) {
    let path = pid.map_or("/proc/self/status".to_owned(), |p| {
        format!("/proc/{p}/status")
    });
    let status = std::fs::read_to_string(path).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Rule `i` of a tenant in the `memory` scenario: rule 0 matches the events
/// sent (`source` `bench.mem`); the others are decoys of the kinds users write.
fn memory_rule(i: usize, sink_url: &str) -> Value {
    let pattern = match i % 5 {
        0 if i == 0 => json!({"source": ["bench.mem"]}),
        0 => json!({"source": [format!("svc.{i}")], "type": [{"prefix": "order."}]}),
        1 => json!({"data": {"customer": [format!("c-{i}")]}}),
        2 => {
            json!({"data": {"order": [{"numeric": [">", 1_000_000_000 + i, "<=", 2_000_000_000]}]}})
        }
        3 => json!({"type": [{"anything-but": ["order.created", format!("t-{i}")]}]}),
        _ => json!({"data": {"note": [{"wildcard": format!("y*{i}*")}]}}),
    };
    json!({"pattern": pattern, "targets": [{"id": "sink", "type": "http", "url": sink_url}]})
}

/// The `memory` scenario; `baseline` is this process's VmRSS (kB) before the
/// bus started, so the figures are the bus's (plus the client's sending state).
async fn memory_scenario(
    args: &Args,
    url: &str,
    client: &reqwest::Client,
    sink: &Arc<Sink>,
    sink_url: &str,
    baseline: u64,
    bus_pid: Option<u32>,
) -> anyhow::Result<()> {
    let memory_kb = || memory_kb_of(bus_pid);
    let mb = |kb: u64| kb.saturating_sub(baseline) as f64 / 1024.0;
    // The in-process bus takes the fixed bench key; a bus of its own, the
    // operator's.
    let admin_key = if bus_pid.is_some() {
        args.admin_key.as_str()
    } else {
        "bench-admin"
    };
    let (rss, _) = memory_kb();
    println!(
        "memory: baseline before the bus {:.1} MB; bus started, one tenant: +{:.1} MB",
        baseline as f64 / 1024.0,
        mb(rss)
    );
    let per_tenant = args.total_rules.div_ceil(args.tenants.max(1)).max(1);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..args.tenants {
        let (client, url, sink_url) = (client.clone(), url.to_owned(), sink_url.to_owned());
        let admin_key = admin_key.to_owned();
        tasks.push(tokio::spawn(async move {
            let tenant: Value = client
                .post(format!("{url}/v1/admin/tenants"))
                .bearer_auth(&admin_key)
                .json(&json!({"name": format!("mem{t}")}))
                .send()
                .await?
                .json()
                .await?;
            let key = tenant["api_key"].as_str().unwrap_or_default().to_owned();
            for r in 0..per_tenant {
                let answer = client
                    .put(format!("{url}/v1/buses/default/rules/r{r}"))
                    .bearer_auth(&key)
                    .json(&memory_rule(r, &sink_url))
                    .send()
                    .await?;
                anyhow::ensure!(
                    answer.status().is_success(),
                    "rule: {}",
                    answer.text().await?
                );
            }
            anyhow::Ok(key)
        }));
    }
    let mut keys = Vec::new();
    for t in tasks {
        keys.push(t.await??);
    }
    println!(
        "memory: {} tenants x {per_tenant} rules loaded in {:.1} s",
        keys.len(),
        t0.elapsed().as_secs_f64()
    );
    // One event per tenant, so every bus has built its rule index.
    let keys = Arc::new(keys);
    let before = sink.count.load(Ordering::Relaxed);
    for key in keys.iter() {
        client
            .post(format!("{url}/v1/buses/default/events"))
            .bearer_auth(key)
            .header("content-type", "application/cloudevents+json")
            .body(event(0, "bench.mem").to_string())
            .send()
            .await?;
    }
    drained(sink, before, keys.len() as u64, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle, _) = memory_kb();
    println!(
        "memory idle with {} tenants, {} rules (indexes built): {:.1} MB above the baseline (VmRSS {:.1} MB)",
        keys.len(),
        keys.len() * per_tenant,
        mb(idle),
        idle as f64 / 1024.0
    );

    // Paced load: batches of 10, tenants in turn; a batch is skipped when all
    // connections are busy (the rate reported is what was acknowledged).
    let batches_per_s = (args.memory_rate / 10).max(1);
    let total = batches_per_s * args.seconds;
    let permits = Arc::new(tokio::sync::Semaphore::new(args.connections));
    let acked = Arc::new(AtomicU64::new(0));
    let skipped = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling, sink) = (peak.clone(), sampling.clone(), sink.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(memory_kb_of(bus_pid).0, Ordering::Relaxed);
                // The sink's latency list is the loadgen's, not the bus's.
                if let Ok(mut l) = sink.latencies_us.lock() {
                    l.clear();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let before = sink.count.load(Ordering::Relaxed);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / batches_per_s as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let t0 = Instant::now();
    for b in 0..total {
        ticker.tick().await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (client, url, keys, acked) =
            (client.clone(), url.to_owned(), keys.clone(), acked.clone());
        tokio::spawn(async move {
            let key = &keys[b as usize % keys.len()];
            let events: Vec<Value> = (0..10).map(|k| event(b * 10 + k, "bench.mem")).collect();
            let ok = client
                .post(format!("{url}/v1/buses/default/events"))
                .bearer_auth(key)
                .header("content-type", "application/cloudevents-batch+json")
                .body(Value::Array(events).to_string())
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 202);
            if ok {
                acked.fetch_add(10, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
    let sent = acked.load(Ordering::Relaxed);
    let send_s = t0.elapsed().as_secs_f64();
    let delivered = drained(sink, before, sent, Duration::from_secs(60)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let (after, hwm) = memory_kb();
    println!(
        "memory under load: offered {} events/s, acknowledged {:.0} events/s ({} batches skipped: all {} connections busy), \
         delivered {delivered} in {elapsed:.1} s = {:.0} events/s",
        args.memory_rate,
        sent as f64 / send_s,
        skipped.load(Ordering::Relaxed),
        args.connections,
        delivered as f64 / elapsed,
    );
    println!(
        "memory under load: peak VmRSS {:.1} MB above the baseline, VmHWM {:.1} MB above it, {:.1} MB after draining (fsync {:?})",
        mb(peak.load(Ordering::Relaxed)),
        mb(hwm),
        mb(after),
        args.fsync
    );
    Ok(())
}

/// What a scenario against buses of their own needs: the client, and the
/// sink they deliver to, listening on `--sink`.
async fn external_setup(args: &Args) -> anyhow::Result<(reqwest::Client, Arc<Sink>, String)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .build()?;
    let sink = Arc::new(Sink::default());
    let app = Router::new()
        .route("/sink", post(sink_handler))
        .with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind(args.sink).await?;
    let sink_url = format!("http://{}/sink", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((client, sink, sink_url))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    started();
    if args.scenario == Scenario::NatsCeiling {
        return ceiling(&args).await;
    }
    if args.scenario == Scenario::Nodes {
        let (client, sink, sink_url) = external_setup(&args).await?;
        println!(
            "machine: {} cores; connections {}; {} s; sink {sink_url}",
            std::thread::available_parallelism()?,
            args.connections,
            args.seconds
        );
        return external(&args, &client, &sink, &sink_url).await;
    }
    if args.scenario == Scenario::Memory && !args.nodes.is_empty() {
        // A bus of its own (`--nodes URL --pids bus=PID`): the figures are
        // that process's resident set, the load generator's own excluded.
        let (client, sink, sink_url) = external_setup(&args).await?;
        let pid = args
            .pids
            .iter()
            .find_map(|p| p.split_once('=').and_then(|(_, pid)| pid.parse().ok()))
            .ok_or_else(|| anyhow::anyhow!("memory --nodes URL needs --pids bus=PID"))?;
        println!("memory: bus process {pid} at {}", args.nodes[0]);
        return memory_scenario(
            &args,
            &args.nodes[0],
            &client,
            &sink,
            &sink_url,
            0,
            Some(pid),
        )
        .await;
    }
    if args.scenario == Scenario::Traces {
        return traces_scenario(args.traces, args.trace_copies).await;
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .build()?;
    let ceiling = if matches!(args.scenario, Scenario::Ceiling | Scenario::All) {
        println!(
            "machine: {} cores; connections {}; {} s per figure",
            std::thread::available_parallelism()?,
            args.connections,
            args.seconds
        );
        Some(http_ceiling(&args, &client).await?)
    } else {
        None
    };
    if args.scenario == Scenario::Ceiling {
        return Ok(());
    }
    let baseline = memory_kb().0;
    let dir = tempfile::tempdir()?;
    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        data_dir: dir.path().to_owned(),
        admin_key: Some("bench-admin".into()),
        // The sink the bus delivers to listens on loopback.
        egress: busbar::net::EgressConfig {
            allow: vec!["127.0.0.1".into()],
            ..Default::default()
        },
        fsync: match args.fsync {
            Fsync::Normal => busbar::store::sqlite::Durability::Normal,
            Fsync::Always => busbar::store::sqlite::Durability::Always,
        },
        ..Config::default()
    };
    let running = busbar::server::start(config).await?;
    let url = format!("http://{}", running.addr);

    let sink = Arc::new(Sink::default());
    let app = Router::new()
        .route("/sink", post(sink_handler))
        .route("/sink-batch", post(batch_sink_handler))
        .route("/sink-count", post(count_sink_handler))
        .with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sink_url = format!("http://{}/sink", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let tenant: Value = client
        .post(format!("{url}/v1/admin/tenants"))
        .bearer_auth("bench-admin")
        .json(&json!({"name": "bench"}))
        .send()
        .await?
        .json()
        .await?;
    let key = tenant["api_key"].as_str().unwrap_or_default().to_owned();
    let bench = Arc::new(Bench {
        urls: vec![url.clone()],
        key: key.clone(),
        client: client.clone(),
    });
    println!(
        "machine: {} cores; connections {}; {} s per figure; fsync {:?}",
        std::thread::available_parallelism()?,
        args.connections,
        args.seconds,
        args.fsync
    );

    if matches!(args.scenario, Scenario::Ingest | Scenario::All) {
        for batch in [1usize, 10] {
            let n = bench
                .flood(args.connections, args.seconds, batch, "bench.nomatch")
                .await;
            let rate = n as f64 / args.seconds as f64;
            println!(
                "ingest batch={batch:>2}: {rate:>9.0} events/s acknowledged{}",
                Ceiling::ingest(ceiling, batch, rate)
            );
        }
    }

    if matches!(args.scenario, Scenario::E2e | Scenario::All) {
        for r in 0..args.rules {
            let source = if r == 0 {
                "bench.match".to_owned()
            } else {
                format!("bench.other{r}")
            };
            let rule = json!({"pattern": {"source": [source], "type": [{"prefix": "order."}]},
                              "targets": [{"id": "sink", "type": "http", "url": sink_url}]});
            client
                .put(format!("{url}/v1/buses/default/rules/r{r}"))
                .bearer_auth(&key)
                .json(&rule)
                .send()
                .await?;
        }
        if let Some(n) = args.batch {
            return batched_e2e(&args, &bench, &sink, &sink_url, n).await;
        }
        // Full speed, batches of 10: delivered events/s over the same window.
        let before = sink.count.load(Ordering::Relaxed);
        let t0 = Instant::now();
        let sent = bench
            .flood(args.connections, args.seconds, 10, "bench.match")
            .await;
        // Let deliveries drain (bounded) and count what arrived.
        let drain_deadline = Instant::now() + Duration::from_secs(60);
        while sink.count.load(Ordering::Relaxed) - before < sent && Instant::now() < drain_deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let delivered = sink.count.load(Ordering::Relaxed) - before;
        let elapsed = t0.elapsed().as_secs_f64();
        println!(
            "e2e {} rules, full speed: {sent} sent, {delivered} delivered in {elapsed:.1} s = {:.0} events/s delivered{}",
            args.rules,
            delivered as f64 / elapsed,
            Ceiling::sink(ceiling, delivered as f64 / elapsed)
        );

        // Fixed rate, single events: latency percentiles.
        if let Ok(mut l) = sink.latencies_us.lock() {
            l.clear();
        }
        let total = args.rate * args.seconds;
        let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let before = sink.count.load(Ordering::Relaxed);
        for i in 0..total {
            ticker.tick().await;
            let me = bench.clone();
            tokio::spawn(async move {
                me.post(
                    "application/cloudevents+json",
                    event(1_000_000_000 + i, "bench.match").to_string(),
                )
                .await
            });
        }
        let drain_deadline = Instant::now() + Duration::from_secs(30);
        while sink.count.load(Ordering::Relaxed) - before < total && Instant::now() < drain_deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut l = sink
            .latencies_us
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        l.sort_unstable();
        println!(
            "e2e latency at {} events/s ({} delivered): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            args.rate,
            l.len(),
            percentile(&l, 0.50),
            percentile(&l, 0.90),
            percentile(&l, 0.99),
            l.last().copied().unwrap_or(0) as f64 / 1000.0
        );
    }
    if matches!(args.scenario, Scenario::Door) {
        let put = |path: String, body: Value| {
            let (client, key) = (client.clone(), key.clone());
            async move {
                let r = client
                    .put(path)
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "PUT: {}", r.text().await?);
                anyhow::Ok(())
            }
        };
        put(format!("{url}/v1/buses/plain"), json!({})).await?;
        put(format!("{url}/v1/buses/schema"), json!({})).await?;
        put(
            format!("{url}/v1/buses/schema/schemas/orders"),
            json!({"source": "shop", "type": "order.created", "mode": "enforce", "schema": door_schema()}),
        )
        .await?;
        put(
            format!("{url}/v1/buses/dedup"),
            json!({"dedup_window_s": 300}),
        )
        .await?;
        println!("door event: {} bytes", door_event(0, 1).to_string().len());
        // Rounds in turn, so drift of the shared machine hits all alike.
        // (bus, events/s per round, CPU µs per event per round)
        let mut figures: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
            ("plain", vec![], vec![]),
            ("schema", vec![], vec![]),
            ("dedup", vec![], vec![]),
        ];
        for _round in 0..args.rounds {
            for (bus, rates, cpu) in figures.iter_mut() {
                let cpu0 = own_cpu_seconds();
                let n = bench
                    .flood_door(args.connections, args.seconds, bus, 1, 1)
                    .await;
                cpu.push((own_cpu_seconds() - cpu0) * 1e6 / n.max(1) as f64);
                rates.push(n as f64 / args.seconds as f64);
            }
        }
        let (plain_rate, plain_cpu) = (median(&figures[0].1), median(&figures[0].2));
        for (bus, rates, cpu) in &figures {
            println!(
                "door ingest on {bus:>6}: median {:>7.0} events/s ({:.0}% of plain; rounds {:?}), \
                 median {:>5.1} µs CPU per event (client included; {:+.1}% vs plain; rounds {:?})",
                median(rates),
                100.0 * median(rates) / plain_rate,
                rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
                median(cpu),
                100.0 * (median(cpu) - plain_cpu) / plain_cpu,
                cpu.iter().map(|c| c.round()).collect::<Vec<_>>(),
            );
        }

        // FIFO: the same rule, unordered and ordered by 1,000 keys.
        for (bus, ordering) in [("unordered", "none"), ("fifo", "partition_key")] {
            put(format!("{url}/v1/buses/{bus}"), json!({})).await?;
            put(
                format!("{url}/v1/buses/{bus}/rules/all"),
                json!({"pattern": {"source": ["shop"]}, "ordering": ordering,
                       "targets": [{"id": "sink", "type": "http", "url": sink_url}]}),
            )
            .await?;
            let before = sink.count.load(Ordering::Relaxed);
            let t0 = Instant::now();
            let cpu0 = own_cpu_seconds();
            let sent = bench
                .flood_door(args.connections, args.seconds, bus, 10, 1_000)
                .await;
            let drain_deadline = Instant::now() + Duration::from_secs(120);
            while sink.count.load(Ordering::Relaxed) - before < sent
                && Instant::now() < drain_deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let delivered = sink.count.load(Ordering::Relaxed) - before;
            let elapsed = t0.elapsed().as_secs_f64();
            println!(
                "door e2e {bus:>9} (ordering {ordering}, 1,000 keys): {sent} sent, {delivered} delivered in {elapsed:.1} s = {:.0} events/s delivered, {:.1} µs CPU per delivered event",
                delivered as f64 / elapsed,
                (own_cpu_seconds() - cpu0) * 1e6 / delivered.max(1) as f64
            );
        }
    }
    if matches!(args.scenario, Scenario::Plugins) {
        let put = |path: String, body: Value| {
            let (client, key) = (client.clone(), key.clone());
            async move { client.put(path).bearer_auth(&key).json(&body).send().await }
        };
        let filter = std::fs::read(args.guests.join("amount_filter.wasm"))?;
        let enrich = std::fs::read(args.guests.join("enrich.wasm"))?;
        println!(
            "upload filter: {}",
            upload(&client, &url, &key, "gate", filter.clone()).await?
        );
        println!(
            "upload transformer: {}",
            upload(&client, &url, &key, "enrich", enrich).await?
        );
        let mut figures = Vec::new();
        for (label, rule) in [
            (
                "built-in transform",
                json!({"pattern": {"source": ["bench.plug"]},
                       "transform": {"input_paths_map": {"order": "$.data.order", "sent": "$.data.sent_us"},
                                     "input_template": "{\"order\": <order>, \"sent_us\": <sent>, \"region\": \"eu\"}"},
                       "targets": [{"id": "sink", "type": "http", "url": sink_url}]}),
            ),
            (
                "wasm filter + transformer",
                json!({"pattern": {"source": ["bench.plug"]},
                       "filter": {"plugin": "gate", "config": {"field": "/order", "threshold": -1}},
                       "transform": {"plugin": "enrich", "config": {"region": "eu"}},
                       "targets": [{"id": "sink", "type": "http", "url": sink_url}]}),
            ),
        ] {
            put(format!("{url}/v1/buses/default/rules/plug"), rule).await?;
            let before = sink.count.load(Ordering::Relaxed);
            let t0 = Instant::now();
            let swap = if label.starts_with("wasm") {
                // Live swap half-way: a new version of the filter while events flow.
                let (client, url, key) = (client.clone(), url.clone(), key.clone());
                let (filter, half) = (filter.clone(), args.seconds / 2);
                Some(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(half)).await;
                    upload(
                        &client,
                        &url,
                        &key,
                        "gate",
                        with_custom_section(filter, "v2"),
                    )
                    .await
                }))
            } else {
                None
            };
            let sent = bench
                .flood(args.connections, args.seconds, 10, "bench.plug")
                .await;
            let drain_deadline = Instant::now() + Duration::from_secs(60);
            while sink.count.load(Ordering::Relaxed) - before < sent
                && Instant::now() < drain_deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let delivered = sink.count.load(Ordering::Relaxed) - before;
            let rate = delivered as f64 / t0.elapsed().as_secs_f64();
            println!(
                "{label}: {sent} sent, {delivered} delivered, lost {}, {rate:.0} events/s delivered",
                sent.saturating_sub(delivered)
            );
            if let Some(swap) = swap {
                println!("live swap during the run: {}", swap.await??);
            }
            figures.push(rate);
        }
        if let [builtin, wasm] = figures[..] {
            println!("wasm / built-in throughput: {:.2}", wasm / builtin);
        }
    }

    if args.scenario == Scenario::Memory {
        memory_scenario(&args, &url, &client, &sink, &sink_url, baseline, None).await?;
    }

    if matches!(args.scenario, Scenario::History) {
        history_scenario(&args, &bench, &sink, &client, &url, &key, &sink_url).await?;
    }

    running.stop().await?;
    Ok(())
}

/// Tracing and archiving off vs on (same run), replay speed, live latency during a replay.
/// One phase of the `history` scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HistoryPhase {
    /// Single-event requests of events no rule matches.
    Single,
    /// Batches of 10 such events.
    Batch10,
    /// Batches of 10 events one rule matches, delivered to the sink.
    E2e,
}

impl HistoryPhase {
    /// The name of its throughput figure.
    fn rate(self) -> &'static str {
        match self {
            Self::Single => "ingest single",
            Self::Batch10 => "ingest batch10",
            Self::E2e => "e2e delivered",
        }
    }

    /// The name of its CPU-per-event figure.
    fn cpu(self) -> &'static str {
        match self {
            Self::Single => "cpu single",
            Self::Batch10 => "cpu batch10",
            Self::E2e => "cpu e2e",
        }
    }

    /// The name its writers' figures go under (see [`writer_keys`]).
    fn writers(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Batch10 => "batch10",
            Self::E2e => "e2e",
        }
    }
}

/// Runs one phase against `bus`: returns its rate (events/s acknowledged,
/// or delivered end to end), the process's CPU per event until the
/// phase's events are routed (and traced), and the events sent.
#[allow(clippy::too_many_arguments)]
async fn history_phase<'a>(
    args: &Args,
    bench: &Arc<Bench>,
    sink: &Arc<Sink>,
    client: &reqwest::Client,
    url: &str,
    figures: &mut HistoryFigures<'a>,
    mode: &'a str,
    bus: &'static str,
    phase: HistoryPhase,
) -> (f64, f64, u64) {
    // Each phase starts with the router idle, so no phase pays for the
    // routing (and tracing) of the one before it.
    routed(client, url, Duration::from_secs(120)).await;
    let side = |name| async move { metric(client, url, name).await.unwrap_or(0.0) };
    let (parked0, facts0) = (
        side("busbar_deliveries_parked_total").await,
        side("busbar_trace_facts_total").await,
    );
    let before = sink.count.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let cpu0 = own_cpu_seconds();
    let writers0 = writer_cpu_seconds();
    let (batch, source) = match phase {
        HistoryPhase::Single => (1, "bench.nomatch"),
        HistoryPhase::Batch10 => (10, "bench.nomatch"),
        HistoryPhase::E2e => (10, "bench.match"),
    };
    let sent = bench
        .flood_to(bus, args.connections, args.seconds, batch, source)
        .await;
    let (rate, events) = if phase == HistoryPhase::E2e {
        let delivered = drained(sink, before, sent, Duration::from_secs(60)).await;
        (delivered as f64 / t0.elapsed().as_secs_f64(), delivered)
    } else {
        (sent as f64 / args.seconds as f64, sent)
    };
    // CPU per event until the phase's events are routed (and traced):
    // what history costs, much less disturbed by other work on a shared
    // machine than throughput is.
    routed(client, url, Duration::from_secs(120)).await;
    let cpu_us = (own_cpu_seconds() - cpu0) * 1e6 / events.max(1) as f64;
    let [store_us, trace_us] = writers_us(figures, mode, phase.writers(), writers0, events);
    // Deliveries parked as jobs and trace facts written later: each is work
    // beyond the one log write and one trace row an event costs at best.
    let parked = side("busbar_deliveries_parked_total").await - parked0;
    let facts = side("busbar_trace_facts_total").await - facts0;
    println!(
        "  {mode} {}: store writer {store_us:4.1} µs, trace writer {trace_us:4.1} µs CPU per event; {:.3} parked, {:.3} trace facts per event",
        phase.writers(),
        parked / events.max(1) as f64,
        facts / events.max(1) as f64,
    );
    (rate, cpu_us, sent)
}

async fn history_scenario(
    args: &Args,
    bench: &Arc<Bench>,
    sink: &Arc<Sink>,
    client: &reqwest::Client,
    url: &str,
    key: &str,
    sink_url: &str,
) -> anyhow::Result<()> {
    let put = |path: String, body: Value| {
        let (client, key) = (client.clone(), key.to_owned());
        async move {
            let r = client
                .put(path)
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await?;
            anyhow::ensure!(
                r.status().is_success(),
                "{}",
                r.text().await.unwrap_or_default()
            );
            anyhow::Ok(())
        }
    };
    // Two buses alike but for history: `plain` (no trace, no archive), `kept` (both).
    put(format!("{url}/v1/buses/plain"), json!({"trace": false})).await?;
    put(format!("{url}/v1/buses/kept"), json!({})).await?;
    put(
        format!("{url}/v1/buses/kept/archives/all"),
        json!({"pattern": null}),
    )
    .await?;
    put(format!("{url}/v1/buses/replayed"), json!({"trace": false})).await?;
    put(format!("{url}/v1/buses/live"), json!({"trace": false})).await?;
    for bus in ["plain", "kept", "replayed", "live"] {
        let sink_url = if bus == "replayed" {
            sink_url.replace("/sink", "/sink-count")
        } else {
            sink_url.to_owned()
        };
        for r in 0..args.rules {
            let source = if r == 0 {
                "bench.match".to_owned()
            } else {
                format!("bench.other{r}")
            };
            let rule = json!({"pattern": {"source": [source]}, "targets": [{"id": "sink", "type": "http", "url": sink_url}]});
            put(format!("{url}/v1/buses/{bus}/rules/r{r}"), rule).await?;
        }
        let live = json!({"pattern": {"source": ["bench.live"]}, "targets": [{"id": "sink", "type": "http", "url": sink_url}]});
        put(format!("{url}/v1/buses/{bus}/rules/live"), live).await?;
    }
    let modes: Vec<(&str, &'static str)> = match args.history {
        HistorySwitch::Off => vec![("off", "plain")],
        HistorySwitch::On => vec![("on", "kept")],
        HistorySwitch::Both => vec![("off", "plain"), ("on", "kept")],
    };
    let mut figures: HistoryFigures = Default::default();
    let archive_from = busbar::clock::now_ms();
    let mut kept_matching = 0;
    for round in 0..args.rounds {
        // Each phase runs `off` and `on` back to back, in turns `off, on`
        // and `on, off`: the two runs a ratio compares are seconds apart,
        // and a host that slows down or speeds up over a pair weighs on
        // each side alike over the rounds.
        let mut order = modes.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for phase in [
            HistoryPhase::Single,
            HistoryPhase::Batch10,
            HistoryPhase::E2e,
        ] {
            for (mode, bus) in &order {
                let (rate, cpu_us, sent) = history_phase(
                    args,
                    bench,
                    sink,
                    client,
                    url,
                    &mut figures,
                    mode,
                    bus,
                    phase,
                )
                .await;
                if *bus == "kept" && phase == HistoryPhase::E2e {
                    kept_matching += sent;
                }
                figures.entry((mode, phase.cpu())).or_default().push(cpu_us);
                figures.entry((mode, phase.rate())).or_default().push(rate);
                println!(
                    "round {round} history {mode}: {}: {rate:>9.0} events/s, {cpu_us:6.1} µs CPU per event",
                    phase.rate()
                );
            }
        }
    }
    if args.history == HistorySwitch::Both {
        for what in [
            "ingest single",
            "ingest batch10",
            "e2e delivered",
            "cpu single",
            "cpu batch10",
            "cpu e2e",
        ] {
            // Medians of the rounds: one disturbed round (the machine is
            // shared) moves a mean far more than a median.
            let (off, on) = (
                median(&figures[&("off", what)]),
                median(&figures[&("on", what)]),
            );
            // The ratio of each pair of runs, and their median: what one
            // run of each side, seconds apart, says.
            let mut pairs: Vec<f64> = figures[&("on", what)]
                .iter()
                .zip(&figures[&("off", what)])
                .map(|(on, off)| on / off)
                .collect();
            pairs.sort_by(f64::total_cmp);
            println!(
                "history on/off, {what} (medians of {} rounds): {on:.0} / {off:.0} = {:.3}; pairs: median {:.3} of {}",
                args.rounds,
                on / off,
                median(&pairs),
                pairs
                    .iter()
                    .map(|r| format!("{r:.3}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        // What history adds on its own threads, against what the whole
        // process spends on an event without it.
        for (phase, whole) in [
            ("single", "cpu single"),
            ("batch10", "cpu batch10"),
            ("e2e", "cpu e2e"),
        ] {
            let [store, trace] = writer_keys(phase);
            let of = |m, what| median(&figures[&(m, what)]);
            let added = of("on", store) - of("off", store) + of("on", trace) - of("off", trace);
            println!(
                "history on/off, writers' CPU per event, {phase} (medians): store writer {:.1} / {:.1} µs, trace writer {:.1} / {:.1} µs; history adds {added:.1} µs = {:.3} of the {:.1} µs an event costs the process without it",
                of("on", store),
                of("off", store),
                of("on", trace),
                of("off", trace),
                added / of("off", whole),
                of("off", whole),
            );
            // A trace-id merge lands in whichever phase triggers it, which
            // the medians leave out: the mean over all of a mode's events
            // counts it.
            let mean = |m, what| {
                let events = &figures[&(m, events_key(phase))];
                let total: f64 = figures[&(m, what)]
                    .iter()
                    .zip(events)
                    .map(|(us, n)| us * n)
                    .sum();
                total / events.iter().sum::<f64>().max(1.0)
            };
            let added =
                mean("on", store) - mean("off", store) + mean("on", trace) - mean("off", trace);
            println!(
                "history on/off, writers' CPU per event, {phase} (means over every round's events): store writer {:.1} / {:.1} µs, trace writer {:.1} / {:.1} µs; history adds {added:.1} µs",
                mean("on", store),
                mean("off", store),
                mean("on", trace),
                mean("off", trace),
            );
        }
    }
    if args.history == HistorySwitch::Off {
        return Ok(());
    }
    // Replay speed: the matching events archived on `kept`, to `replayed` (its rule r0 → sink).
    let to = busbar::clock::now_ms();
    let start = |name: String| {
        let (client, key) = (client.clone(), key.to_owned());
        let body = json!({"name": name, "bus": "kept", "archive": "all", "rules": ["r0"],
                          "from": busbar::clock::rfc3339(archive_from), "to": busbar::clock::rfc3339(to),
                          "destination_bus": "replayed"});
        let url = format!("{url}/v1/replays");
        async move {
            let r: Value = client
                .post(url)
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await?
                .json()
                .await?;
            anyhow::Ok(r["replay_id"].as_str().unwrap_or_default().to_owned())
        }
    };
    let status = |id: String| {
        let (client, key) = (client.clone(), key.to_owned());
        let url = format!("{url}/v1/replays/{id}");
        async move {
            anyhow::Ok(
                client
                    .get(url)
                    .bearer_auth(&key)
                    .send()
                    .await?
                    .json::<Value>()
                    .await?,
            )
        }
    };
    let before = sink.count.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let id = start("bench-speed".into()).await?;
    let total = loop {
        let r = status(id.clone()).await?;
        if r["state"] != "starting" && r["state"] != "running" {
            break r["events_replayed"].as_u64().unwrap_or(0);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let appended = t0.elapsed().as_secs_f64();
    let matching = drained(sink, before, kept_matching, Duration::from_secs(120)).await;
    println!(
        "replay: {total} events appended in {appended:.1} s = {:.0} events/s; {matching} delivered by the replay's rule in {:.1} s",
        total as f64 / appended,
        t0.elapsed().as_secs_f64()
    );
    // Let the router finish the replay's other events before measuring.
    let waited = routed(client, url, Duration::from_secs(300)).await;
    println!(
        "router drained {:.1} s after the replay",
        waited.as_secs_f64()
    );
    // Live latency on another bus, without and with a replay running.
    println!(
        "live latency at {} events/s, no replay: {}",
        args.rate,
        latency(bench, sink, "live", args.rate, args.seconds, 5_000_000_000).await
    );
    routed(client, url, Duration::from_secs(120)).await;
    let id = start("bench-background".into()).await?;
    let during = latency(bench, sink, "live", args.rate, args.seconds, 6_000_000_000).await;
    let r = status(id).await?;
    println!(
        "live latency at {} events/s, during a replay ({} of {} replayed by the end, {}): {during}",
        args.rate, r["events_replayed"], r["events_total"], r["state"]
    );
    Ok(())
}
