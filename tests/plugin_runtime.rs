//! The plugin runtime with real components built from `plugins/`: every
//! example runs with a real event, every hostile plugin fails only its own
//! invocation with the right kind, uploads are validated, and compiled
//! artifacts are reused across runtimes but never trusted blindly.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use busbar::event::{Event, StoredEvent};
use busbar::ingest::{IngestLimits, parse_structured};
use busbar::plugin::{
    ConnectorPlugin, DeliveryResult, FailureKind, FilterPlugin, InvokeContext, LogSource,
    PluginErrorCode, PluginHandle, PluginKind, PluginLimits, PluginRuntime, RuntimeConfig,
    TransformerPlugin,
};
use serde_json::{Value, json};

use crate::support::Receiver;
use crate::support::guests::guest_bytes;

/// Guests these tests exercise (see `support::guests`).
pub const TESTED: &[&str] = &[
    "amount-filter",
    "pii-redact",
    "splitter",
    "enrich",
    "signed-webhook",
    "chat-notify",
    "spin",
    "hog",
    "deep",
    "panic",
    "flood-output",
    "flood-log",
    "snoop",
    "ssrf",
    "mislabel",
];

fn config(dir: &std::path::Path) -> RuntimeConfig {
    let mut c = RuntimeConfig::new(dir);
    c.max_instances = 16;
    // Test receivers listen on loopback; production never opts in.
    c.outbound.egress = busbar::net::EgressPolicy::allowing(&["127.0.0.1"]).unwrap();
    c
}

/// One runtime for the tests that do not look at the data dir, so each
/// guest compiles once per run.
fn shared() -> &'static PluginRuntime {
    static RT: OnceLock<(PluginRuntime, tempfile::TempDir)> = OnceLock::new();
    &RT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        (PluginRuntime::new(config(dir.path())).unwrap(), dir)
    })
    .0
}

/// Prepares guest `name` in `rt` and loads it as the handle of kind `P`.
async fn load_in<P: PluginHandle>(rt: &'static PluginRuntime, name: &str) -> P {
    let bytes = guest_bytes(name);
    let prepared = tokio::task::spawn_blocking(move || rt.prepare(&bytes))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("preparing {name}: {e:?}"));
    rt.load_as(&prepared.sha256).unwrap()
}

async fn load<P: PluginHandle>(name: &str) -> P {
    load_in(shared(), name).await
}

fn event(id: &str, data: Value) -> Event {
    let e = json!({"specversion": "1.0", "id": id, "source": "shop.orders", "type": "order.created",
                   "datacontenttype": "application/json", "data": data});
    parse_structured(e.to_string().as_bytes(), &IngestLimits::default()).unwrap()
}

/// Owns what an `InvokeContext` borrows.
struct Cx {
    config: BTreeMap<String, String>,
    limits: PluginLimits,
    hosts: Vec<String>,
}

impl Cx {
    fn new(config: &[(&str, &str)]) -> Self {
        Self {
            config: config
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            limits: PluginLimits::default(),
            hosts: Vec::new(),
        }
    }

    fn hosts(mut self, hosts: &[&str]) -> Self {
        self.hosts = hosts.iter().map(|h| (*h).to_owned()).collect();
        self
    }

    fn get(&self, plugin: &'static str) -> InvokeContext<'_> {
        InvokeContext {
            tenant: "acme",
            plugin,
            version: 1,
            event_id: "e-1",
            config: &self.config,
            limits: &self.limits,
            allowed_hosts: &self.hosts,
        }
    }
}

// ---------------------------------------------------------------- uploads

fn upload_error(rt: &PluginRuntime, bytes: &[u8]) -> (PluginErrorCode, String) {
    let e = rt.prepare(bytes).unwrap_err();
    (e.code, e.message)
}

#[test]
fn uploads_that_are_not_components_are_refused_precisely() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.max_upload_bytes = 1 << 20;
    let rt = PluginRuntime::new(c).unwrap();

    let core = wat::parse_str("(module (func (export \"f\")))").unwrap();
    let (code, msg) = upload_error(&rt, &core);
    assert_eq!(code, PluginErrorCode::NotAComponent);
    assert!(msg.contains("core WebAssembly module"), "{msg}");

    let random: Vec<u8> = (0..4096).map(|i| (i * 7919 % 251) as u8).collect();
    assert_eq!(upload_error(&rt, &random).0, PluginErrorCode::NotAComponent);

    let mut big = b"\0asm\x0d\0\x01\0".to_vec();
    big.resize((1 << 20) + 1, 0);
    let (code, msg) = upload_error(&rt, &big);
    assert_eq!(code, PluginErrorCode::TooLarge);
    assert!(msg.contains("1048576"), "{msg}");

    let mut garbage = b"\0asm\x0d\0\x01\0".to_vec();
    garbage.extend_from_slice(b"definitely not sections");
    assert_eq!(
        upload_error(&rt, &garbage).0,
        PluginErrorCode::CompileFailed
    );
    // Nothing was stored for refused uploads.
    let stored = std::fs::read_dir(dir.path().join("plugins/wasm"))
        .unwrap()
        .count();
    assert_eq!(stored, 0);
}

#[test]
fn uploads_are_checked_against_the_worlds() {
    let rt = shared();
    let none = wat::parse_str("(component)").unwrap();
    let (code, msg) = upload_error(rt, &none);
    assert_eq!(code, PluginErrorCode::UnknownWorld);
    assert!(msg.contains("exports none of"), "{msg}");

    let two = wat::parse_str(
        r#"(component
             (instance $a) (instance $b)
             (export "busbar:plugin/filter@0.1.0" (instance $a))
             (export "busbar:plugin/transformer@0.1.0" (instance $b)))"#,
    )
    .unwrap();
    assert_eq!(upload_error(rt, &two).0, PluginErrorCode::AmbiguousWorld);

    let http_filter = wat::parse_str(
        r#"(component
             (import "wasi:http/outgoing-handler@0.2.12" (instance))
             (instance $a)
             (export "busbar:plugin/filter@0.1.0" (instance $a)))"#,
    )
    .unwrap();
    let (code, msg) = upload_error(rt, &http_filter);
    assert_eq!(code, PluginErrorCode::ForbiddenImport);
    assert!(msg.contains("wasi:http/outgoing-handler"), "{msg}");

    let foreign = wat::parse_str(
        r#"(component
             (import "acme:secrets/vault@1.0.0" (instance))
             (instance $a)
             (export "busbar:plugin/connector@0.1.0" (instance $a)))"#,
    )
    .unwrap();
    let (code, msg) = upload_error(rt, &foreign);
    assert_eq!(code, PluginErrorCode::ForbiddenImport);
    assert!(msg.contains("acme:secrets/vault"), "{msg}");

    // Exports the right name, but not the interface's functions.
    let hollow = wat::parse_str(
        r#"(component (instance $a) (export "busbar:plugin/filter@0.1.0" (instance $a)))"#,
    )
    .unwrap();
    assert_eq!(
        upload_error(rt, &hollow).0,
        PluginErrorCode::IncompatibleWorld
    );
}

// ---------------------------------------------------------------- examples

#[tokio::test]
async fn amount_filter_passes_big_orders_only() {
    let p: FilterPlugin = load("amount-filter").await;
    assert_eq!(p.kind(), PluginKind::Filter);
    let cx = Cx::new(&[("threshold", "100")]);
    let rt = shared();
    let big = rt
        .filter(
            &p,
            &cx.get("amount-filter"),
            &event("e-1", json!({"amount": 150})),
        )
        .await
        .unwrap();
    assert!(big.value);
    assert!(big.memory_peak > 0);
    let small = rt
        .filter(
            &p,
            &cx.get("amount-filter"),
            &event("e-2", json!({"amount": 50})),
        )
        .await
        .unwrap();
    assert!(!small.value);

    // A configuration problem is the guest's `invalid-config`.
    let bad = Cx::new(&[]);
    let err = rt
        .filter(
            &p,
            &bad.get("amount-filter"),
            &event("e-3", json!({"amount": 1})),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::InvalidConfig, "{err:?}");
    assert!(err.message.contains("threshold"), "{}", err.message);
}

#[tokio::test]
async fn pii_redact_masks_emails_phones_and_fields() {
    let p: TransformerPlugin = load("pii-redact").await;
    let cx = Cx::new(&[("fields", "ssn")]);
    let input = event(
        "e-1",
        json!({"note": "mail ann@example.com or call +1 415 555 0100", "ssn": "123-45-6789", "n": 3}),
    );
    let out = shared()
        .transform(&p, &cx.get("pii-redact"), &input)
        .await
        .unwrap()
        .value;
    assert_eq!(out.len(), 1);
    let data = &out[0].event().as_map()["data"];
    assert_eq!(data["note"], json!("mail [EMAIL] or call [PHONE]"));
    assert_eq!(data["ssn"], json!("[REDACTED]"));
    assert_eq!(data["n"], json!(3));
    assert_eq!(out[0].id(), "e-1");
}

#[tokio::test]
async fn splitter_emits_one_event_per_element_with_stable_ids() {
    let p: TransformerPlugin = load("splitter").await;
    let cx = Cx::new(&[("pointer", "/items"), ("type", "order.line")]);
    let input = event(
        "o-7",
        json!({"items": [{"sku": "a"}, {"sku": "b"}, {"sku": "c"}]}),
    );
    let out = shared()
        .transform(&p, &cx.get("splitter"), &input)
        .await
        .unwrap()
        .value;
    let ids: Vec<&str> = out.iter().map(StoredEvent::id).collect();
    assert_eq!(ids, ["o-7-0", "o-7-1", "o-7-2"]);
    assert_eq!(out[1].event().event_type(), "order.line");
    assert_eq!(out[1].event().as_map()["data"], json!({"sku": "b"}));
    assert_eq!(out[2].event().as_map()["partcount"], json!("3"));
    assert_eq!(out[0].event().as_map()["parentid"], json!("o-7"));

    // Not an array: the guest's `invalid-event`.
    let err = shared()
        .transform(&p, &cx.get("splitter"), &event("o-8", json!({"items": 5})))
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::InvalidEvent);
}

#[tokio::test]
async fn enrich_adds_configured_and_derived_fields() {
    let p: TransformerPlugin = load("enrich").await;
    let cx = Cx::new(&[
        ("region", "eu-west-1"),
        ("tenant_tier", "gold"),
        ("field.team", "payments"),
    ]);
    let out = shared()
        .transform(&p, &cx.get("enrich"), &event("e-1", json!({"amount": 5})))
        .await
        .unwrap()
        .value;
    let e = out[0].event();
    assert_eq!(
        e.as_map()["data"],
        json!({"amount": 5, "region": "eu-west-1", "tenant_tier": "gold", "team": "payments", "priority": "high"})
    );
    assert_eq!(e.as_map()["region"], json!("eu-west-1"));
}

#[tokio::test]
async fn signed_webhook_delivers_signed_requests_and_classifies_failures() {
    let receiver = Receiver::start().await;
    let p: ConnectorPlugin = load("signed-webhook").await;
    assert_eq!(p.kind(), PluginKind::Connector);
    let url = receiver.url("/hook");
    let cx = Cx::new(&[("url", &url), ("secret", "s3cret")]).hosts(&["127.0.0.1"]);
    let rt = shared();
    rt.validate_config(&p, &cx.get("signed-webhook"))
        .await
        .unwrap();
    let missing = Cx::new(&[("url", &url)]);
    let err = rt
        .validate_config(&p, &missing.get("signed-webhook"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::InvalidConfig);
    assert!(err.message.contains("secret"), "{}", err.message);

    let batch = [
        event("w-1", json!({"amount": 1})),
        event("w-2", json!({"amount": 2})),
    ];
    let out = rt
        .deliver(&p, &cx.get("signed-webhook"), &batch)
        .await
        .unwrap();
    assert_eq!(
        out.value,
        [DeliveryResult::Delivered, DeliveryResult::Delivered]
    );
    let got = receiver.wait_for(2).await;
    assert_eq!(got[0].path, "/hook");
    assert_eq!(got[0].header("webhook-id"), Some("w-1"));
    assert!(
        got[0]
            .header("webhook-signature")
            .unwrap()
            .starts_with("v1,")
    );
    assert_eq!(got[1].json()["data"], json!({"amount": 2}));

    receiver.fail_next(1, 503);
    let out = rt
        .deliver(&p, &cx.get("signed-webhook"), &batch[..1])
        .await
        .unwrap();
    assert!(
        matches!(out.value[0], DeliveryResult::Retryable { .. }),
        "{:?}",
        out.value
    );
    receiver.fail_next(1, 400);
    let out = rt
        .deliver(&p, &cx.get("signed-webhook"), &batch[..1])
        .await
        .unwrap();
    assert!(
        matches!(out.value[0], DeliveryResult::Permanent(_)),
        "{:?}",
        out.value
    );

    // The target does not allow the receiver's host: refused before any I/O.
    let before = receiver.received().len();
    let closed = Cx::new(&[("url", &url), ("secret", "s3cret")]).hosts(&["hooks.example.com"]);
    let out = rt
        .deliver(&p, &closed.get("signed-webhook"), &batch[..1])
        .await
        .unwrap();
    assert!(
        matches!(&out.value[0], DeliveryResult::Permanent(m) if m.contains("denied")),
        "{:?}",
        out.value
    );
    assert_eq!(receiver.received().len(), before);
}

#[tokio::test]
async fn chat_notify_posts_a_rendered_message() {
    let receiver = Receiver::start().await;
    let p: ConnectorPlugin = load("chat-notify").await;
    let url = receiver.url("/services/T0/B0");
    let cx = Cx::new(&[
        ("webhook_url", &url),
        ("channel", "#sales"),
        ("template", "order {data.id} for {data.amount}"),
    ])
    .hosts(&["127.0.0.1"]);
    let out = shared()
        .deliver(
            &p,
            &cx.get("chat-notify"),
            &[event("c-1", json!({"id": "A7", "amount": 250}))],
        )
        .await
        .unwrap();
    assert_eq!(out.value, [DeliveryResult::Delivered]);
    let got = receiver.wait_for(1).await;
    assert_eq!(
        got[0].json(),
        json!({"text": "order A7 for 250", "channel": "#sales"})
    );
}

// ---------------------------------------------------------------- hostile

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spin_hits_the_deadline_without_starving_other_invocations() {
    let spin: FilterPlugin = load("spin").await;
    let filter: FilterPlugin = load("amount-filter").await;
    let rt = shared();
    let spinning = tokio::spawn(async move {
        let mut cx = Cx::new(&[]);
        cx.limits.cpu_ms = 1500;
        let started = Instant::now();
        let err = rt
            .filter(&spin, &cx.get("spin"), &event("s-1", json!({})))
            .await
            .unwrap_err();
        (err, started.elapsed())
    });
    // While the spinner runs, other invocations complete promptly.
    let cx = Cx::new(&[("threshold", "1")]);
    for i in 0..5 {
        let started = Instant::now();
        let out = rt
            .filter(
                &filter,
                &cx.get("amount-filter"),
                &event(&format!("o-{i}"), json!({"amount": 2})),
            )
            .await
            .unwrap();
        assert!(out.value);
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "took {:?}",
            started.elapsed()
        );
    }
    assert!(
        !spinning.is_finished(),
        "the spinner should still be running"
    );
    let (err, elapsed) = spinning.await.unwrap();
    assert_eq!(err.kind, FailureKind::Deadline, "{err:?}");
    assert!(elapsed >= Duration::from_millis(1000), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_spinners_on_a_busy_machine_end_by_their_cpu_deadline() {
    // Sixteen spinners share two workers, and two more threads compete for
    // the machine's CPUs. Giving each its 100 ms of CPU takes the workers at
    // least 800 ms, beyond the 500 ms wall-clock timeout: waiting for a
    // worker is not the guest's doing and must not turn a CPU deadline into
    // a timeout.
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.max_instances = 16;
    let rt: &'static PluginRuntime = Box::leak(Box::new(PluginRuntime::new(c).unwrap()));
    let spin: FilterPlugin = load_in(rt, "spin").await;
    let busy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            let busy = busy.clone();
            std::thread::spawn(move || {
                while busy.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let spinners: Vec<_> = (0..16)
        .map(|i| {
            let spin = spin.clone();
            tokio::spawn(async move {
                let mut cx = Cx::new(&[]);
                cx.limits.cpu_ms = 100;
                cx.limits.timeout_ms = 500;
                let started = Instant::now();
                let err = rt
                    .filter(&spin, &cx.get("spin"), &event(&format!("s-{i}"), json!({})))
                    .await
                    .unwrap_err();
                (err.kind, started.elapsed())
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for s in spinners {
        outcomes.push(s.await.unwrap());
    }
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    for h in hogs {
        h.join().unwrap();
    }
    assert!(
        outcomes
            .iter()
            .all(|(kind, _)| *kind == FailureKind::Deadline),
        "{outcomes:?}"
    );
    let slowest = outcomes.iter().map(|(_, t)| *t).max().unwrap();
    assert!(slowest >= Duration::from_millis(500), "{slowest:?}");
}

#[tokio::test]
async fn hog_runs_out_of_memory() {
    let p: FilterPlugin = load("hog").await;
    let mut cx = Cx::new(&[]);
    cx.limits.memory_bytes = 16 << 20;
    let err = shared()
        .filter(&p, &cx.get("hog"), &event("h-1", json!({})))
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::OutOfMemory, "{err:?}");
    // Within the limit it succeeds: the limit, not the plugin, decides.
    let ok = Cx::new(&[("max_mib", "4")]);
    let out = shared()
        .filter(&p, &ok.get("hog"), &event("h-2", json!({})))
        .await
        .unwrap();
    assert!(out.value);
    assert!(out.memory_peak >= 4 << 20);
}

#[tokio::test]
async fn deep_recursion_is_a_stack_overflow_trap() {
    let p: FilterPlugin = load("deep").await;
    let cx = Cx::new(&[]);
    let err = shared()
        .filter(&p, &cx.get("deep"), &event("d-1", json!({})))
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Trap, "{err:?}");
    assert!(err.message.contains("stack overflow"), "{}", err.message);
}

#[tokio::test]
async fn panic_is_a_trap_with_the_panic_message_in_the_logs() {
    let p: FilterPlugin = load("panic").await;
    let cx = Cx::new(&[]);
    let err = shared()
        .filter(&p, &cx.get("panic"), &event("p-1", json!({})))
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Trap, "{err:?}");
    assert!(
        err.logs
            .iter()
            .any(|r| r.source == LogSource::Stderr && r.message.contains("panicked on purpose")),
        "{:?}",
        err.logs
    );
    // The next invocation of the same plugin is unaffected (fresh instance).
    let amount: FilterPlugin = load("amount-filter").await;
    let ok = Cx::new(&[("threshold", "1")]);
    assert!(
        shared()
            .filter(
                &amount,
                &ok.get("amount-filter"),
                &event("p-2", json!({"amount": 5}))
            )
            .await
            .unwrap()
            .value
    );
}

#[tokio::test]
async fn flood_output_hits_the_output_limits() {
    let p: TransformerPlugin = load("flood-output").await;
    let many = Cx::new(&[("events", "1000")]);
    let err = shared()
        .transform(&p, &many.get("flood-output"), &event("f-1", json!({})))
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::OutputLimit, "{err:?}");
    assert!(err.message.contains("1000 events"), "{}", err.message);
    let big = Cx::new(&[("events", "4"), ("bytes", "500000")]);
    let err = shared()
        .transform(&p, &big.get("flood-output"), &event("f-2", json!({})))
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::OutputLimit, "{err:?}");
    // Within the limits the output is converted back: binary data as base64.
    let few = Cx::new(&[("events", "2"), ("bytes", "3")]);
    let out = shared()
        .transform(&p, &few.get("flood-output"), &event("f-3", json!({})))
        .await
        .unwrap()
        .value;
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].id(), "f-3-1");
    assert_eq!(out[1].event().as_map()["data_base64"], json!("eHh4"));
}

#[tokio::test]
async fn an_output_flood_is_refused_while_copying_as_the_output_limit() {
    // Far more events than the copy budget of the output limits: wasmtime
    // stops copying the result at that budget, and it is the output limit,
    // not a trap (a trap would count toward pausing the plugin).
    let p: TransformerPlugin = load("flood-output").await;
    let flood = Cx::new(&[("events", "20000")]);
    let err = shared()
        .transform(&p, &flood.get("flood-output"), &event("f-4", json!({})))
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::OutputLimit, "{err:?}");
    assert!(err.message.contains("output limits"), "{}", err.message);
    // Few events, more bytes than one host call may carry.
    let bytes = Cx::new(&[("events", "2"), ("bytes", "3000000")]);
    let err = shared()
        .transform(&p, &bytes.get("flood-output"), &event("f-5", json!({})))
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::OutputLimit, "{err:?}");
    // Within the limits nothing changed.
    let few = Cx::new(&[("events", "100"), ("bytes", "10000")]);
    let out = shared()
        .transform(&p, &few.get("flood-output"), &event("f-6", json!({})))
        .await
        .unwrap();
    assert_eq!(out.value.len(), 100);
}

#[tokio::test]
async fn a_host_call_with_too_much_data_is_the_output_limit() {
    let p: FilterPlugin = load("flood-log").await;
    let mut cx = Cx::new(&[
        ("bytes", "2000000"),
        ("message_bytes", "2000000"),
        ("stdio_bytes", "0"),
    ]);
    cx.limits.hostcall_bytes = 1 << 20;
    let err = shared()
        .filter(&p, &cx.get("flood-log"), &event("l-2", json!({})))
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::OutputLimit, "{err:?}");
    assert!(err.message.contains("host call"), "{}", err.message);
}

#[tokio::test]
async fn transformer_outputs_are_validated_like_ingested_events() {
    let p: TransformerPlugin = load("mislabel").await;
    // Declared JSON, not JSON: ingest refuses such a body, so does the host.
    let cx = Cx::new(&[]);
    let err = shared()
        .transform(&p, &cx.get("mislabel"), &event("m-1", json!({})))
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::InvalidOutput, "{err:?}");
    assert!(err.message.contains("declared as JSON"), "{}", err.message);
    // The same bytes as text pass, as a string.
    let text = Cx::new(&[("datacontenttype", "text/plain")]);
    let out = shared()
        .transform(&p, &text.get("mislabel"), &event("m-2", json!({})))
        .await
        .unwrap()
        .value;
    assert_eq!(out[0].event().as_map()["data"], json!("{not json"));
    // A larger event than ingest accepts is refused as well.
    let big = "x".repeat(300_000);
    let large = Cx::new(&[("datacontenttype", "text/plain"), ("data", &big)]);
    let err = shared()
        .transform(&p, &large.get("mislabel"), &event("m-3", json!({})))
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::InvalidOutput, "{err:?}");
}

#[tokio::test]
async fn flood_log_succeeds_with_logs_truncated() {
    let p: FilterPlugin = load("flood-log").await;
    let mut cx = Cx::new(&[
        ("bytes", "1000000"),
        ("message_bytes", "10000"),
        ("stdio_bytes", "100000"),
    ]);
    cx.limits.log_bytes = 20_000;
    let out = shared()
        .filter(&p, &cx.get("flood-log"), &event("l-1", json!({})))
        .await
        .unwrap();
    assert!(out.value);
    let kept: usize = out
        .logs
        .iter()
        .filter(|r| r.source != LogSource::Host)
        .map(|r| r.message.len())
        .sum();
    assert!(kept <= 20_000, "{kept}");
    assert!(kept >= 10_000, "{kept}");
    let notice = out.logs.last().unwrap();
    assert_eq!(notice.source, LogSource::Host);
    assert!(notice.message.contains("dropped"), "{}", notice.message);
    let first = &out.logs[0];
    assert_eq!(
        (
            first.tenant.as_str(),
            first.plugin.as_str(),
            first.version,
            first.event_id.as_str()
        ),
        ("acme", "flood-log", 1, "e-1")
    );
}

#[tokio::test]
async fn snoop_sees_no_files_no_env_no_args() {
    let p: TransformerPlugin = load("snoop").await;
    let cx = Cx::new(&[("path", "/proc/self/environ")]);
    let out = shared()
        .transform(&p, &cx.get("snoop"), &event("n-1", json!({})))
        .await
        .unwrap()
        .value;
    let report = &out[0].event().as_map()["data"];
    assert_eq!(report["files"]["/etc/passwd"], Value::Null, "{report}");
    assert_eq!(
        report["files"]["/proc/self/environ"],
        Value::Null,
        "{report}"
    );
    assert_eq!(report["dirs"]["/"], Value::Null, "{report}");
    assert_eq!(report["dirs"]["."], Value::Null, "{report}");
    assert_eq!(report["env"], json!([]), "{report}");
    assert_eq!(report["args"], json!([]), "{report}");
    assert_eq!(report["errors"].as_array().unwrap().len(), 4, "{report}");
}

#[tokio::test]
async fn ssrf_is_denied_for_metadata_and_unlisted_hosts() {
    let p: ConnectorPlugin = load("ssrf").await;
    let rt = shared();
    // Metadata endpoint, even when the target lists it.
    let cx = Cx::new(&[("socket", "true")]).hosts(&["169.254.169.254"]);
    let out = rt
        .deliver(&p, &cx.get("ssrf"), &[event("x-1", json!({}))])
        .await
        .unwrap();
    assert!(
        matches!(&out.value[0], DeliveryResult::Permanent(m) if m.contains("denied")),
        "{:?}",
        out.value
    );
    // A host the target does not list.
    let receiver = Receiver::start().await;
    let cx = Cx::new(&[("url", &receiver.url("/"))]).hosts(&["hooks.example.com"]);
    let out = rt
        .deliver(&p, &cx.get("ssrf"), &[event("x-2", json!({}))])
        .await
        .unwrap();
    assert!(
        matches!(&out.value[0], DeliveryResult::Permanent(m) if m.contains("denied")),
        "{:?}",
        out.value
    );
    // A name that resolves to loopback, listed by the target but not opted in.
    let port = receiver.addr.port();
    let cx = Cx::new(&[("url", &format!("http://localhost:{port}/"))]).hosts(&["localhost"]);
    let out = rt
        .deliver(&p, &cx.get("ssrf"), &[event("x-3", json!({}))])
        .await
        .unwrap();
    assert!(
        matches!(&out.value[0], DeliveryResult::Permanent(m) if m.contains("denied")),
        "{:?}",
        out.value
    );
    assert!(receiver.received().is_empty());
}

#[tokio::test]
async fn every_special_range_is_refused_for_connectors() {
    let p = load("ssrf").await;
    let rt = shared();
    // The runtime allows 127.0.0.1 only; the target lists every host, so
    // egress alone refuses them.
    for host in crate::http_target::special_hosts() {
        let url = format!("http://{host}:9/");
        let listed = host.trim_start_matches('[').trim_end_matches(']');
        let cx = Cx::new(&[("url", &url)]).hosts(&[listed]);
        let out = rt
            .deliver(&p, &cx.get("ssrf"), &[event("r-1", json!({}))])
            .await
            .unwrap();
        assert!(
            matches!(&out.value[0], DeliveryResult::Permanent(m) if m.contains("denied")),
            "{url}: {:?}",
            out.value
        );
    }
}

// ---------------------------------------------------------------- artifacts

#[tokio::test]
async fn artifacts_are_reused_across_runtimes_and_never_trusted_blindly() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = guest_bytes("amount-filter");
    let sha = {
        let rt = PluginRuntime::new(config(dir.path())).unwrap();
        let prepared = rt.prepare(&wasm).unwrap();
        assert_eq!(prepared.kind, PluginKind::Filter);
        assert!(prepared.compile_ms > 0 || rt.stats().compiles == 1);
        // Idempotent: a second upload of the same bytes compiles nothing.
        assert_eq!(rt.prepare(&wasm).unwrap().sha256, prepared.sha256);
        assert_eq!(rt.stats().compiles, 1);
        assert!(
            dir.path()
                .join(format!("plugins/wasm/{}.wasm", prepared.sha256))
                .exists()
        );
        prepared.sha256
    };
    async fn run_in(rt: &PluginRuntime, sha: &str) -> bool {
        let p: FilterPlugin = rt.load_as(sha).unwrap();
        let cx = Cx::new(&[("threshold", "1")]);
        let ev = event("a-1", json!({"amount": 2}));
        rt.filter(&p, &cx.get("amount-filter"), &ev)
            .await
            .unwrap()
            .value
    }

    // A new runtime on the same data dir loads the artifact: no compile.
    let rt = PluginRuntime::new(config(dir.path())).unwrap();
    assert!(run_in(&rt, &sha).await);
    assert_eq!(rt.stats().compiles, 0);
    assert_eq!(rt.stats().artifact_loads, 1);
    let artifact = rt.artifact_path(&sha);
    drop(rt);
    // Uploading the same bytes again after a restart compiles nothing either.
    let rt = PluginRuntime::new(config(dir.path())).unwrap();
    assert_eq!(rt.prepare(&wasm).unwrap().compile_ms, 0);
    assert_eq!(rt.stats().compiles, 0);
    rt.evict(&sha);
    assert!(run_in(&rt, &sha).await);
    assert_eq!((rt.stats().compiles, rt.stats().artifact_loads), (0, 2));
    drop(rt);

    // A corrupted artifact is detected and recompiled, not deserialised.
    let mut bytes = std::fs::read(&artifact).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&artifact, &bytes).unwrap();
    let rt = PluginRuntime::new(config(dir.path())).unwrap();
    assert!(run_in(&rt, &sha).await);
    assert_eq!(rt.stats().compiles, 1);
    assert_eq!(rt.stats().artifact_rejects, 1);
    drop(rt);
    // ...and rewritten, so the next runtime loads it again.
    let rt = PluginRuntime::new(config(dir.path())).unwrap();
    assert!(run_in(&rt, &sha).await);
    assert_eq!(rt.stats().compiles, 0);
    drop(rt);

    // A foreign artifact (another engine configuration) under our name,
    // even with a valid digest, is refused by wasmtime and recompiled.
    let fuel_dir = tempfile::tempdir().unwrap();
    let mut fuel_config = config(fuel_dir.path());
    fuel_config.consume_fuel = true;
    let fuel_rt = PluginRuntime::new(fuel_config).unwrap();
    fuel_rt.prepare(&wasm).unwrap();
    let foreign = fuel_rt.artifact_path(&sha);
    assert_ne!(foreign.file_name(), artifact.file_name());
    std::fs::copy(&foreign, &artifact).unwrap();
    let rt = PluginRuntime::new(config(dir.path())).unwrap();
    assert!(run_in(&rt, &sha).await);
    assert_eq!(rt.stats().compiles, 1);
    assert_eq!(rt.stats().artifact_rejects, 1);

    // Fuel metering reports instructions used.
    let p: FilterPlugin = fuel_rt.load_as(&sha).unwrap();
    let cx = Cx::new(&[("threshold", "1")]);
    let out = fuel_rt
        .filter(
            &p,
            &cx.get("amount-filter"),
            &event("a-2", json!({"amount": 2})),
        )
        .await
        .unwrap();
    assert!(out.fuel_used.unwrap() > 0);
}

#[tokio::test]
async fn unknown_digests_are_not_found() {
    let rt = shared();
    assert_eq!(
        rt.load(&"0".repeat(64)).unwrap_err().code,
        PluginErrorCode::NotFound
    );
    assert_eq!(
        rt.load("../../etc/passwd").unwrap_err().code,
        PluginErrorCode::NotFound
    );
}

#[tokio::test]
async fn a_plugin_called_as_the_wrong_kind_fails_cleanly() {
    // Each call takes only its kind's handle (calling a filter as a
    // transformer does not compile); loading a version as the wrong kind is
    // refused with a typed error.
    let p: FilterPlugin = load("amount-filter").await;
    let err = shared()
        .load_as::<TransformerPlugin>(p.sha256())
        .unwrap_err();
    assert_eq!(err.code, PluginErrorCode::WrongKind);
    assert!(err.message.contains("is a filter"), "{}", err.message);
    assert_eq!(
        shared().load(p.sha256()).unwrap().kind(),
        PluginKind::Filter
    );
}

// ---------------------------------------------------------------- wall clock and pool

#[tokio::test]
async fn a_connector_blocked_on_a_silent_server_times_out() {
    // Accepts connections and never answers: the guest blocks in a host
    // call, where epochs cannot interrupt it; the wall-clock timeout does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let p: ConnectorPlugin = load("ssrf").await;
    let mut cx = Cx::new(&[("url", &format!("http://{addr}/"))]).hosts(&["127.0.0.1"]);
    cx.limits.timeout_ms = 300;
    let started = Instant::now();
    let err = shared()
        .deliver(&p, &cx.get("ssrf"), &[event("t-1", json!({}))])
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Timeout, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_makes_invocations_wait_not_fail() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.max_instances = 1;
    let rt: &'static PluginRuntime = Box::leak(Box::new(PluginRuntime::new(c).unwrap()));
    let spin: FilterPlugin = load_in(rt, "spin").await;
    let filter: FilterPlugin = load_in(rt, "amount-filter").await;
    let spinning = tokio::spawn(async move {
        let mut cx = Cx::new(&[]);
        cx.limits.cpu_ms = 300;
        rt.filter(&spin, &cx.get("spin"), &event("s-1", json!({})))
            .await
            .unwrap_err()
            .kind
    });
    // Wait until the spinner holds the only slot.
    crate::support::wait_for("the spinner to start", Duration::from_secs(10), || async {
        (rt.idle_instances() == 0).then_some(())
    })
    .await;
    let cx = Cx::new(&[("threshold", "1")]);
    let out = rt
        .filter(
            &filter,
            &cx.get("amount-filter"),
            &event("o-1", json!({"amount": 2})),
        )
        .await
        .unwrap();
    assert!(out.value);
    // It waited for the spinner's slot (about 300 ms of CPU).
    assert!(
        out.elapsed >= Duration::from_millis(150),
        "{:?}",
        out.elapsed
    );
    assert_eq!(spinning.await.unwrap(), FailureKind::Deadline);
}
