//! The egress policy through the bus: webhooks (`http` targets) and
//! connectors (`wasm` targets) alike reach a loopback receiver only when the
//! operator allows it, for every tenant or for one.

use crate::support::*;
use busbar::config::Config;
use busbar::net::{EgressConfig, egress::TenantEgressConfig};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

/// Guests these tests run through the bus.
pub const TESTED: &[&str] = &["signed-webhook", "ssrf"];

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A bus with `egress` as its only egress setting.
async fn bus_with(egress: EgressConfig) -> TestBus {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        egress,
        ..config_for(dir.path())
    };
    TestBus::start_with(dir, config).await
}

/// Waits for `n` dead letters of `rule`; returns them by target id.
async fn dead_letters(bus: &TestBus, key: &str, rule: &str, n: usize) -> Vec<Value> {
    let mut items = wait_for(
        &format!("{n} dead letters of {rule}"),
        Duration::from_secs(20),
        || async {
            let path = format!("/v1/dlq?rule={rule}");
            let (_, dlq) = bus.call(Method::GET, &path, key, None).await;
            let items = dlq["items"].as_array().cloned().unwrap_or_default();
            (items.len() >= n).then_some(items)
        },
    )
    .await;
    items.sort_by_key(|item| item["target"].as_str().unwrap_or_default().to_owned());
    items
}

fn webhook(id: &str, url: &str) -> Value {
    json!({"id": id, "type": "http", "url": url})
}

fn connector(id: &str, url: &str, host: &str) -> Value {
    json!({"id": id, "type": "wasm", "plugin": "hook",
           "config": {"url": url, "secret": SECRET}, "allowed_hosts": [host]})
}

fn rule(targets: Value) -> Value {
    json!({"pattern": {"source": ["shop"]}, "targets": targets,
           "retry_policy": fast_retry(3)})
}

fn order(id: &str) -> Value {
    event(id, "shop", json!({"total": 1}))
}

#[tokio::test]
async fn a_loopback_receiver_that_is_not_allowed_gets_nothing() {
    let bus = bus_with(EgressConfig::default()).await;
    let key = bus.tenant("acme").await;
    let sink = Receiver::start().await;
    let port = sink.addr.port();
    bus.install(&key, "hook", "signed-webhook").await;
    bus.install(&key, "ssrf", "ssrf").await;
    let targets = json!([
        webhook("a-literal", &sink.url("/literal")),
        webhook("b-localhost", &format!("http://localhost:{port}/name")),
        webhook("c-mapped", &format!("http://[::ffff:127.0.0.1]:{port}/mapped")),
        webhook("d-metadata", "http://169.254.169.254/latest/meta-data/"),
        connector("e-connector", &sink.url("/connector"), "127.0.0.1"),
        connector("f-connector-localhost", &format!("http://localhost:{port}/c"), "localhost"),
        {"id": "g-ssrf", "type": "wasm", "plugin": "ssrf", "config": {},
         "allowed_hosts": ["169.254.169.254"]},
    ]);
    bus.put(&key, "/v1/buses/default/rules/r", rule(targets))
        .await;
    bus.send(&key, "default", order("o-1")).await;

    let dead = dead_letters(&bus, &key, "r", 7).await;
    for entry in &dead[..4] {
        assert_eq!(entry["error_code"], "forbidden_destination", "{entry}");
        assert_eq!(entry["exhausted"], "permanent", "{entry}");
        assert_eq!(entry["attempts"], 1, "{entry}");
        assert_eq!(entry["last_status"], Value::Null, "{entry}");
    }
    let message = |i: usize| dead[i]["error_message"].as_str().unwrap().to_owned();
    assert!(
        message(0).starts_with("127.0.0.1 is in 127.0.0.0/8 (loopback)"),
        "{}",
        message(0)
    );
    assert!(
        message(1).starts_with("localhost resolves to "),
        "{}",
        message(1)
    );
    assert!(message(3).contains("cloud metadata"), "{}", message(3));
    for entry in &dead[4..] {
        assert_eq!(entry["error_code"], "connector_permanent", "{entry}");
        assert!(
            entry["error_message"].as_str().unwrap().contains("denied"),
            "{entry}"
        );
    }
    assert!(sink.received().is_empty(), "{:?}", sink.received());
}

#[tokio::test]
async fn an_allowed_loopback_receiver_gets_webhooks_and_connector_calls() {
    let bus = bus_with(EgressConfig {
        allow: vec!["127.0.0.1".into()],
        ..EgressConfig::default()
    })
    .await;
    let key = bus.tenant("acme").await;
    let sink = Receiver::start().await;
    bus.install(&key, "hook", "signed-webhook").await;
    let targets = json!([
        webhook("webhook", &sink.url("/webhook")),
        connector("connector", &sink.url("/connector"), "127.0.0.1"),
        // An allowed address does not open a name that resolves to it.
        webhook(
            "by-name",
            &format!("http://localhost:{}/name", sink.addr.port())
        ),
    ]);
    bus.put(&key, "/v1/buses/default/rules/r", rule(targets))
        .await;
    bus.send(&key, "default", order("o-2")).await;

    let mut paths: Vec<String> = sink.wait_for(2).await.into_iter().map(|r| r.path).collect();
    paths.sort();
    assert_eq!(paths, ["/connector", "/webhook"]);
    let dead = dead_letters(&bus, &key, "r", 1).await;
    assert_eq!(dead[0]["target"], "by-name");
    assert_eq!(dead[0]["error_code"], "forbidden_destination");
}

#[tokio::test]
async fn a_tenants_own_allow_list_opens_loopback_for_that_tenant_only() {
    let mut egress = EgressConfig::default();
    egress.tenants.insert(
        "acme".into(),
        TenantEgressConfig {
            allow: vec!["127.0.0.1".into()],
        },
    );
    let bus = bus_with(egress).await;
    let acme = bus.tenant("acme").await;
    let globex = bus.tenant("globex").await;
    let sink = Receiver::start().await;
    for (key, name) in [(&acme, "acme"), (&globex, "globex")] {
        bus.install(key, "hook", "signed-webhook").await;
        let targets = json!([
            webhook("webhook", &sink.url(&format!("/{name}/webhook"))),
            connector(
                "connector",
                &sink.url(&format!("/{name}/connector")),
                "127.0.0.1"
            ),
        ]);
        bus.put(key, "/v1/buses/default/rules/r", rule(targets))
            .await;
        bus.send(key, "default", order(&format!("{name}-1"))).await;
    }

    let dead = dead_letters(&bus, &globex, "r", 2).await;
    assert_eq!(dead[0]["target"], "connector");
    assert_eq!(dead[0]["error_code"], "connector_permanent");
    assert_eq!(dead[1]["target"], "webhook");
    assert_eq!(dead[1]["error_code"], "forbidden_destination");
    let mut paths: Vec<String> = sink.wait_for(2).await.into_iter().map(|r| r.path).collect();
    paths.sort();
    assert_eq!(paths, ["/acme/connector", "/acme/webhook"]);
    let (_, acme_dlq) = bus.call(Method::GET, "/v1/dlq", &acme, None).await;
    assert_eq!(acme_dlq["items"], json!([]));

    // Rules compiled again at start-up keep their tenant's list.
    let dir = bus.stop().await;
    let mut config = config_for(dir.path());
    config.egress.allow.clear();
    config.egress.tenants.insert(
        "acme".into(),
        TenantEgressConfig {
            allow: vec!["127.0.0.1".into()],
        },
    );
    let bus = TestBus::start_with(dir, config).await;
    bus.send(&acme, "default", order("acme-2")).await;
    bus.send(&globex, "default", order("globex-2")).await;
    dead_letters(&bus, &globex, "r", 4).await;
    let got = sink.wait_for(4).await;
    assert!(got.iter().all(|r| r.path.starts_with("/acme/")), "{got:?}");
}

/// `busbar serve` with the given arguments and environment; it must exit
/// (with an error) on its own.
fn serve_fails(args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_busbar"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .env_remove("BUSBAR_EGRESS_ALLOW");
    for (name, value) in env {
        command.env(name, value);
    }
    let out = command.output().unwrap();
    assert!(!out.status.success(), "{out:?}");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn bad_egress_entries_stop_the_bus_naming_where_they_are() {
    let err = serve_fails(&["--egress-allow", "10.0.0.0/33"], &[]);
    assert!(err.contains("--egress-allow"), "{err}");
    assert!(
        err.contains("has a prefix length that is not 0 to 32"),
        "{err}"
    );

    let err = serve_fails(&[], &[("BUSBAR_EGRESS_ALLOW", "127.0.0.1,not a host")]);
    assert!(err.contains("\"not a host\" is not an IP address"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("busbar.toml");
    std::fs::write(
        &file,
        "[egress]\nallow = [\"::1\"]\n[egress.tenants.acme]\nallow = [\"10.1.0.0/8\"]\n",
    )
    .unwrap();
    let err = serve_fails(&["--config", file.to_str().unwrap()], &[]);
    assert!(
        err.contains(
            "egress.tenants.acme.allow[0]: \"10.1.0.0/8\" has bits set after the prefix; \
             the block is 10.0.0.0/8"
        ),
        "{err}"
    );
}

crate::also_on_nats!(
    a_loopback_receiver_that_is_not_allowed_gets_nothing,
    an_allowed_loopback_receiver_gets_webhooks_and_connector_calls,
    a_tenants_own_allow_list_opens_loopback_for_that_tenant_only,
);
