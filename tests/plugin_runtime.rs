//! The plugin runtime with real components built from `plugins/`: every
//! example runs with a real event, every hostile plugin fails only its own
//! invocation with the right kind, uploads are validated, and compiled
//! artifacts are reused across runtimes but never trusted blindly.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use busbar::event::Event;
use busbar::ingest::{IngestLimits, parse_structured};
use busbar::plugin::{
    DeliveryResult, FailureKind, InvokeContext, LoadedPlugin, LogSource, PluginErrorCode,
    PluginKind, PluginLimits, PluginRuntime, RuntimeConfig,
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
];

fn config(dir: &std::path::Path) -> RuntimeConfig {
    let mut c = RuntimeConfig::new(dir);
    c.max_instances = 16;
    // Test receivers listen on loopback; production never opts in.
    c.outbound.allow_private = vec!["127.0.0.1".into()];
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

async fn load_in(rt: &'static PluginRuntime, name: &str) -> Arc<LoadedPlugin> {
    let bytes = guest_bytes(name);
    let prepared = tokio::task::spawn_blocking(move || rt.prepare(&bytes))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("preparing {name}: {e:?}"));
    rt.load(&prepared.sha256).unwrap()
}

async fn load(name: &str) -> Arc<LoadedPlugin> {
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
    assert_eq!(upload_error(&rt, &garbage).0, PluginErrorCode::CompileFailed);
    // Nothing was stored for refused uploads.
    let stored = std::fs::read_dir(dir.path().join("plugins/wasm")).unwrap().count();
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
    assert_eq!(upload_error(rt, &hollow).0, PluginErrorCode::IncompatibleWorld);
}
