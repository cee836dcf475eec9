//! Several bus nodes on one NATS JetStream deployment: configuration made
//! on one node is live on the others within a second, events accepted by
//! any node are routed once, plugin components travel between nodes, and a
//! node follows the cluster's availability (readiness, 503s) by itself.

use crate::support::nats::{self, harness::Nats};
use crate::support::process::{BusProcess, create_tenant, post_event};
use crate::support::*;
use axum::http::StatusCode;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// The bound the issue sets on a change reaching every node.
const PROPAGATION: Duration = Duration::from_secs(1);

/// `n` nodes in this process on the shared server, one deployment.
async fn nodes(n: usize) -> Vec<TestBus> {
    let prefix = format!("N{:016X}", rand_u64());
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(node(&prefix, tempfile::tempdir().unwrap()).await);
    }
    out
}

/// One node of deployment `prefix` with the data dir `dir`.
async fn node(prefix: &str, dir: tempfile::TempDir) -> TestBus {
    let mut config = config_for(dir.path());
    config.store.url = Some(nats::shared_url().to_owned());
    config.store.prefix = prefix.to_owned();
    TestBus::start_with(dir, config).await
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

/// Waits until `check` holds, failing if that takes longer than
/// [`PROPAGATION`]; returns how long it took.
async fn propagated<F, Fut>(what: &str, check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let started = Instant::now();
    wait_for(what, PROPAGATION, check).await;
    let took = started.elapsed();
    eprintln!("{what}: {took:?}");
    took
}

async fn status(bus: &TestBus, method: Method, path: &str, key: &str) -> (StatusCode, Value) {
    bus.call(method, path, key, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_on_one_node_take_effect_on_the_others_within_a_second() {
    let nodes = nodes(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);

    // A tenant and its key, created on A, authenticate on B.
    let key = a.tenant("acme").await;
    propagated("a new tenant's key works on the other node", || async {
        let (s, _) = status(b, Method::GET, "/v1/buses", &key).await;
        (s == StatusCode::OK).then_some(())
    })
    .await;

    // A rule created on A routes events sent to B.
    a.put(&key, "/v1/queues/out", json!({})).await;
    let rule = json!({"pattern": {"source": ["shop"]},
                      "targets": [{"id": "q", "type": "queue", "queue": "out"}]});
    a.put(&key, "/v1/buses/default/rules/orders", rule).await;
    propagated("a new rule is live on the other node", || async {
        let (s, _) = status(b, Method::GET, "/v1/buses/default/rules/orders", &key).await;
        (s == StatusCode::OK).then_some(())
    })
    .await;
    for i in 0..20 {
        b.send(&key, "default", event(&format!("o{i}"), "shop", json!({})))
            .await;
    }
    let got = b.drain(&key, "out", 20).await;
    let ids: HashSet<String> = got
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 20, "{got:?}");

    // A changed rule, then a deleted one.
    let changed = json!({"pattern": {"source": ["elsewhere"]},
                         "targets": [{"id": "q", "type": "queue", "queue": "out"}]});
    a.put(&key, "/v1/buses/default/rules/orders", changed).await;
    propagated("a changed rule is live on the other node", || async {
        let (_, r) = status(b, Method::GET, "/v1/buses/default/rules/orders", &key).await;
        (r["pattern"]["source"][0] == "elsewhere").then_some(())
    })
    .await;
    let (s, _) = a
        .call(Method::DELETE, "/v1/buses/default/rules/orders", &key, None)
        .await;
    assert!(s.is_success());
    propagated("a deleted rule is gone from the other node", || async {
        let (s, _) = status(b, Method::GET, "/v1/buses/default/rules/orders", &key).await;
        (s == StatusCode::NOT_FOUND).then_some(())
    })
    .await;

    // A plugin uploaded on A is listed on B.
    a.install(&key, "big", "amount-filter").await;
    propagated("a new plugin is listed on the other node", || async {
        let (s, _) = status(b, Method::GET, "/v1/plugins/big", &key).await;
        (s == StatusCode::OK).then_some(())
    })
    .await;

    // The admin's plugin limits set on A apply on B.
    let limits = json!({"transformer": {"max_output_events": 2}});
    let (s, body) = a
        .admin(
            Method::PUT,
            "/v1/admin/tenants/acme/plugin-limits",
            Some(limits),
        )
        .await;
    assert!(s.is_success(), "{body}");
    propagated("new plugin limits apply on the other node", || async {
        let (_, l) = b
            .admin(Method::GET, "/v1/admin/tenants/acme/plugin-limits", None)
            .await;
        (l["effective"]["transformer"]["max_output_events"] == 2).then_some(())
    })
    .await;

    // A schema registered on A is enforced by B; deleted on A, B accepts again.
    let schema = json!({"source": "shop", "type": "order", "mode": "enforce",
                        "schema": {"type": "object", "required": ["data"],
                                   "properties": {"data": {"type": "object", "required": ["total"]}}}});
    let (s, body) = a
        .call(
            Method::PUT,
            "/v1/buses/default/schemas/orders",
            &key,
            Some(schema),
        )
        .await;
    assert!(s.is_success(), "{body}");
    let bad = || {
        json!({"specversion": "1.0", "id": format!("s{}", rand_u64()), "source": "shop",
               "type": "order", "data": {"qty": 1}})
        .to_string()
    };
    propagated("a new schema is enforced on the other node", || async {
        let (s, _) = b
            .raw(&key, "default", "application/cloudevents+json", bad(), &[])
            .await;
        (s == StatusCode::BAD_REQUEST).then_some(())
    })
    .await;
    let (s, _) = a
        .call(
            Method::DELETE,
            "/v1/buses/default/schemas/orders",
            &key,
            None,
        )
        .await;
    assert!(s.is_success());
    propagated(
        "a deleted schema is no longer enforced on the other node",
        || async {
            let (s, _) = b
                .raw(&key, "default", "application/cloudevents+json", bad(), &[])
                .await;
            (s == StatusCode::ACCEPTED).then_some(())
        },
    )
    .await;

    // A key revoked on A stops working on B.
    let (_, tenants) = a.admin(Method::GET, "/v1/admin/tenants", None).await;
    let key_id = tenants["items"][0]["key_ids"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _) = a
        .admin(
            Method::DELETE,
            &format!("/v1/admin/tenants/acme/keys/{key_id}"),
            None,
        )
        .await;
    assert!(s.is_success());
    propagated("a revoked key is refused on the other node", || async {
        let (s, _) = status(b, Method::GET, "/v1/buses", &key).await;
        (s == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_accepted_by_any_node_are_routed_once() {
    let nodes = nodes(3).await;
    let key = nodes[0].tenant("acme").await;
    let sink = Receiver::start().await;
    nodes[0]
        .put(
            &key,
            "/v1/buses/default/rules/all",
            json!({"pattern": {"source": ["load"]},
                   "targets": [{"id": "sink", "type": "http", "url": sink.url("/")}]}),
        )
        .await;
    for node in &nodes {
        wait_for("the rule on every node", PROPAGATION, || async {
            let (s, _) = status(node, Method::GET, "/v1/buses/default/rules/all", &key).await;
            (s == StatusCode::OK).then_some(())
        })
        .await;
    }
    let n = 150;
    for i in 0..n {
        nodes[i % 3]
            .send(
                &key,
                "default",
                event(&format!("e{i}"), "load", json!({"i": i})),
            )
            .await;
    }
    let got = sink.wait_for(n).await;
    let ids: Vec<&str> = got.iter().filter_map(|r| r.header("ce-id")).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), n, "every event delivered");
    // Give a duplicate the time to show up, then count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.received().len(), n, "and none twice");
}

/// The component file and this host's artifacts of `sha256` under a data dir.
fn local_copies(dir: &Path, sha256: &str) -> (bool, usize) {
    let wasm = dir
        .join("plugins/wasm")
        .join(format!("{sha256}.wasm"))
        .exists();
    let artifacts = std::fs::read_dir(dir.join("plugins/artifacts"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.starts_with(sha256) && name.ends_with(".cwasm")
                })
                .count()
        })
        .unwrap_or(0);
    (wasm, artifacts)
}

fn order(id: &str, total: f64) -> Value {
    event(id, "shop", json!({"total": total, "amount": total}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_uploaded_on_one_node_runs_on_the_others() {
    let prefix = format!("N{:016X}", rand_u64());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (path_a, path_b) = (dir_a.path().to_owned(), dir_b.path().to_owned());
    let a = node(&prefix, dir_a).await;
    let b = node(&prefix, dir_b).await;
    let key = a.tenant("acme").await;
    let (status, uploaded) = a
        .upload(&key, "big", guests::guest_bytes("amount-filter"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    let sha256 = uploaded["sha256"].as_str().unwrap().to_owned();
    a.put(&key, "/v1/queues/big", json!({})).await;
    a.put(
        &key,
        "/v1/buses/default/rules/big",
        json!({"pattern": {"source": ["shop"]},
               "filter": {"plugin": "big", "config": {"threshold": 100}},
               "targets": [{"id": "q", "type": "queue", "queue": "big"}]}),
    )
    .await;

    // A compiled it at upload; B fetched the component and compiled it
    // itself, ahead of any event.
    assert_eq!(local_copies(&path_a, &sha256), (true, 1));
    let started = Instant::now();
    wait_for(
        "B to fetch and compile the plugin",
        Duration::from_secs(60),
        || {
            let copies = local_copies(&path_b, &sha256);
            async move { (copies == (true, 1)).then_some(()) }
        },
    )
    .await;
    eprintln!("B had the plugin compiled after {:?}", started.elapsed());
    for i in 0..10 {
        let total = if i % 2 == 0 { 500.0 } else { 5.0 };
        b.send(&key, "default", order(&format!("b{i}"), total))
            .await;
    }
    let got = b.drain(&key, "big", 5).await;
    assert_eq!(got.len(), 5, "{got:?}");
    assert!(got.iter().all(|e| {
        let id = e["id"].as_str().unwrap();
        id[1..].parse::<u32>().unwrap() % 2 == 0
    }));

    // A node that starts later fetches it when an event needs it: the
    // others are gone, so it routes everything itself.
    a.stop().await;
    b.stop().await;
    let dir_c = tempfile::tempdir().unwrap();
    let path_c = dir_c.path().to_owned();
    let c = node(&prefix, dir_c).await;
    assert_eq!(local_copies(&path_c, &sha256), (false, 0));
    c.send(&key, "default", order("c-big", 900.0)).await;
    c.send(&key, "default", order("c-small", 1.0)).await;
    let got = c.drain(&key, "big", 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["id"], "c-big");
    assert_eq!(local_copies(&path_c, &sha256), (true, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nats_a_node_is_not_ready_refuses_events_and_recovers_by_itself() {
    let mut nats = Nats::single().await;
    let dir = tempfile::tempdir().unwrap();
    let store = nats.urls();
    let node = BusProcess::spawn(dir.path(), &["--store", &store, "--node-id", "edge-7"]);
    let client = reqwest::Client::new();
    let key = create_tenant(&client, &node.url, "acme").await;
    let ready = |client: reqwest::Client, url: String| async move {
        client
            .get(format!("{url}/readyz"))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    };
    assert_eq!(ready(client.clone(), node.url.clone()).await, Some(200));
    let metrics = metrics_at(&client, &node.url).await;
    assert!(
        metrics.contains(r#"node="edge-7""#),
        "metrics carry the node: {metrics}"
    );

    nats.server(0).kill();
    let down = Instant::now();
    wait_for("readiness to fail", Duration::from_secs(5), || {
        let (client, url) = (client.clone(), node.url.clone());
        async move { (ready(client, url).await == Some(503)).then_some(()) }
    })
    .await;
    eprintln!("not ready {:?} after the server died", down.elapsed());
    for i in 0..5 {
        let started = Instant::now();
        let status = post_event(
            &client,
            &node.url,
            &key,
            &event(&format!("d{i}"), "s", json!({})),
        )
        .await;
        assert_eq!(status, Some(503), "never 2xx without the server's ack");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    nats.server(0).start();
    nats.wait_ready().await;
    let back = Instant::now();
    wait_for(
        "events to be accepted again",
        Duration::from_secs(20),
        || {
            let (client, url, key) = (client.clone(), node.url.clone(), key.clone());
            async move {
                let status = post_event(&client, &url, &key, &event("again", "s", json!({}))).await;
                (status == Some(202)).then_some(())
            }
        },
    )
    .await;
    wait_for("readiness to come back", Duration::from_secs(10), || {
        let (client, url) = (client.clone(), node.url.clone());
        async move { (ready(client, url).await == Some(200)).then_some(()) }
    })
    .await;
    eprintln!(
        "ready and accepting {:?} after the server came back",
        back.elapsed()
    );
}

#[test]
fn an_unreachable_nats_url_stops_the_binary_with_a_clear_error_within_ten_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let port = nats::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_busbar"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &url,
            "--data-dir",
        ])
        .arg(dir.path())
        .env("BUSBAR_ADMIN_KEY", ADMIN_KEY)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            panic!("still running after 10 s with an unreachable store");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    eprintln!("exited after {:?}: {stderr}", started.elapsed());
    assert!(!status.success());
    assert!(stderr.contains("cannot connect to NATS"), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");

    // A store URL of no known kind is refused before anything starts.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_busbar"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "redis://x",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("BUSBAR_ADMIN_KEY", ADMIN_KEY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("store.url"), "{stderr}");
}
