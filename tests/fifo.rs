//! FIFO per partition key end to end: a rule with `"ordering":
//! "partition_key"` delivers each key's events one at a time in ingest
//! order through retries, without holding up other keys, and across a
//! `kill -9` of the real binary.

use crate::crash::{create_tenant, spawn_bus};
use crate::support::*;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::any;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A receiver that fails chosen ids a number of times (503 with
/// `Retry-After: 1`), takes 20 ms per request, and records, per
/// `ce-partitionkey`, how many requests it ever had at once.
#[derive(Default)]
struct Picky {
    fail: Mutex<HashMap<String, u32>>,
    got: Mutex<Vec<(Instant, String)>>,
    in_flight: Mutex<HashMap<String, usize>>,
    most_at_once: Mutex<HashMap<String, usize>>,
}

async fn picky(State(state): State<Arc<Picky>>, headers: HeaderMap) -> (StatusCode, HeaderMap) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, key) = (header("ce-id"), header("ce-partitionkey"));
    {
        let mut in_flight = state.in_flight.lock().unwrap();
        let n = in_flight.entry(key.clone()).or_insert(0);
        *n += 1;
        let mut most = state.most_at_once.lock().unwrap();
        let m = most.entry(key.clone()).or_insert(0);
        *m = (*m).max(*n);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    *state.in_flight.lock().unwrap().get_mut(&key).unwrap() -= 1;
    let fail = match state.fail.lock().unwrap().get_mut(&id) {
        Some(n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    };
    let mut out = HeaderMap::new();
    if fail {
        out.insert("retry-after", "1".parse().unwrap());
        return (StatusCode::SERVICE_UNAVAILABLE, out);
    }
    state.got.lock().unwrap().push((Instant::now(), id));
    (StatusCode::OK, out)
}

async fn start_picky(fail: &[(&str, u32)]) -> (String, Arc<Picky>) {
    let state = Arc::new(Picky::default());
    *state.fail.lock().unwrap() = fail.iter().map(|(id, n)| ((*id).to_owned(), *n)).collect();
    let app = Router::new().fallback(any(picky)).with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), state)
}

fn keyed(id: &str, key: &str, i: usize) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "orders", "type": "t", "partitionkey": key,
           "data": {"i": i}})
}

#[tokio::test]
async fn a_failing_event_holds_only_its_own_key_and_its_key_stays_in_order() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    let (url, receiver) = start_picky(&[("K3", 2)]).await;
    bus.put(
        &key,
        "/v1/buses/default/rules/ordered",
        json!({"pattern": {"source": ["orders"]}, "ordering": "partition_key",
               "targets": [{"id": "hook", "type": "http", "url": url}],
               "retry_policy": fast_retry(10)}),
    )
    .await;
    for i in 1..=6 {
        bus.send(&key, "default", keyed(&format!("K{i}"), "K", i))
            .await;
        bus.send(&key, "default", keyed(&format!("L{i}"), "L", i))
            .await;
    }
    // One without a key is delivered as before.
    bus.send(
        &key,
        "default",
        json!({"specversion": "1.0", "id": "free", "source": "orders", "type": "t"}),
    )
    .await;
    let me = receiver.clone();
    wait_for("13 deliveries", Duration::from_secs(30), || {
        let n = me.got.lock().unwrap().len();
        async move { (n == 13).then_some(()) }
    })
    .await;
    let got = receiver.got.lock().unwrap().clone();
    let ids = |prefix: &str| -> Vec<String> {
        got.iter()
            .filter(|(_, id)| id.starts_with(prefix))
            .map(|(_, id)| id.clone())
            .collect()
    };
    assert_eq!(ids("K"), ["K1", "K2", "K3", "K4", "K5", "K6"]);
    assert_eq!(ids("L"), ["L1", "L2", "L3", "L4", "L5", "L6"]);
    let at = |id: &str| got.iter().find(|(_, i)| i == id).unwrap().0;
    assert!(
        at("L6") < at("K3"),
        "L waited for K3's retries: {:?}",
        got.iter().map(|(_, id)| id).collect::<Vec<_>>()
    );
    assert!(
        at("K3") - at("K2") >= Duration::from_secs(2),
        "K3 was retried twice, a second apart"
    );
    let most = receiver.most_at_once.lock().unwrap().clone();
    assert_eq!(
        (most["K"], most["L"]),
        (1, 1),
        "one request at a time per key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_per_key_holds_across_kill_9_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Receiver::start().await;
    sink.slow_down(Duration::from_millis(5));
    let (mut child, url) = spawn_bus(dir.path());
    let client = reqwest::Client::new();
    let key = create_tenant(&client, &url, "fifo").await;
    let rule = json!({"pattern": {"source": ["orders"]}, "ordering": "partition_key",
                      "targets": [{"id": "sink", "type": "http", "url": sink.url("/")}],
                      "retry_policy": {"max_attempts": 1000, "base_delay_ms": 20, "max_delay_ms": 200}});
    let resp = client
        .put(format!("{url}/v1/buses/default/rules/ordered"))
        .bearer_auth(&key)
        .json(&rule)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());

    // One sender per key, each sending its key's events one after another
    // (so ingest order is send order), until the server dies.
    const KEYS: usize = 8;
    const PER_KEY: usize = 60;
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let mut senders = Vec::new();
    for k in 0..KEYS {
        let (client, url, key, acked) = (client.clone(), url.clone(), key.clone(), acked.clone());
        senders.push(tokio::spawn(async move {
            for i in 0..PER_KEY {
                let id = format!("k{k}-{i}");
                let sent = client
                    .post(format!("{url}/v1/buses/default/events"))
                    .bearer_auth(&key)
                    .header("content-type", "application/cloudevents+json")
                    .body(keyed(&id, &format!("k{k}"), i).to_string())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().as_u16() == 202 => {
                        acked.lock().unwrap().insert(id);
                    }
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => return,
                }
            }
        }));
    }
    wait_for("load to build up", Duration::from_secs(60), || {
        let n = acked.lock().unwrap().len();
        let delivered = sink.received().len();
        async move { (n >= KEYS * PER_KEY / 3 && delivered >= 20).then_some(()) }
    })
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for s in senders {
        s.await.unwrap();
    }
    let acked: HashSet<String> = acked.lock().unwrap().clone();
    let before_restart = sink.received().len();

    let (mut child, _url) = spawn_bus(dir.path());
    wait_for(
        "every acknowledged event delivered",
        Duration::from_secs(90),
        || {
            let delivered: HashSet<String> = sink
                .received()
                .iter()
                .filter_map(|r| r.header("ce-id").map(str::to_owned))
                .collect();
            let missing = acked.difference(&delivered).count();
            async move { (missing == 0).then_some(()) }
        },
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();

    // Per key, deliveries never go back: each one is the same event as the
    // one before (a repeat after the crash) or a later one.
    let mut per_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for r in sink.received() {
        let event = r.header("ce-partitionkey").unwrap().to_owned();
        let i: usize = r.json()["i"].as_u64().unwrap() as usize;
        per_key.entry(event).or_default().push(i);
    }
    for (k, seq) in &per_key {
        assert!(
            seq.windows(2).all(|w| w[0] <= w[1]),
            "key {k} went back: {seq:?}"
        );
    }
    eprintln!(
        "fifo crash: {} acknowledged, {} delivered before the kill, {} deliveries in all",
        acked.len(),
        before_restart,
        sink.received().len()
    );
}

// `order_per_key_holds_across_kill_9_and_restart` stays on SQLite: it spawns
// the binary on a data dir (a kill -9 on NATS is tests/failover.rs's part).
crate::also_on_nats!(a_failing_event_holds_only_its_own_key_and_its_key_stays_in_order);
