//! The conformance and durability suites on real nats-server processes (one
//! server, and a 3-node cluster with R3 streams), and what only this
//! backend has: connecting, outages, the config watch.

use super::testing::Nats;
use super::*;
use crate::clock::ManualClock;
use crate::store::testing::{self, Subject, T0};
use crate::store::{
    Backend, ConfigChange, ConfigStore, EventLog, NewEvent, Resource, ResourceKind, StoreError,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

/// Options for a fresh deployment (its own prefix) on `nats`.
fn options(nats: &Nats, prefix: &str) -> NatsOptions {
    let mut o = NatsOptions::new(&nats.urls());
    o.prefix = prefix.into();
    o.replicas = nats.replicas();
    o
}

fn fresh_prefix() -> String {
    format!("T{:016X}", random_u64())
}

/// Deletes a test deployment's streams when the test is done with it.
struct Cleanup {
    client: async_nats::Client,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let js = jetstream::new(self.client.clone());
        let prefix = self.prefix.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for kind in [
                    "LOG", "JOBS", "DLQ", "QUEUES", "CONFIG", "QSTATE", "ARCHIVE", "DEDUP",
                    "CHAINS", "SCHEMAS", "TRACES", "REPLAYS",
                ] {
                    let _ = js.delete_stream(format!("{prefix}_{kind}")).await;
                }
            });
        }
    }
}

async fn conformance_on(nats: &Nats) {
    testing::conformance(|clock| async move {
        let prefix = fresh_prefix();
        let store = NatsStore::connect(options(nats, &prefix), clock)
            .await
            .expect("connect");
        let cleanup = Cleanup {
            client: store.client().clone(),
            prefix,
        };
        Subject::keeping(Arc::new(store), cleanup)
    })
    .await;
}

/// Reopening = a new client on the same servers and prefix, after the
/// previous one was dropped and its clean-shutdown naks went out.
async fn durability_on(nats: &Nats) {
    let drains: Mutex<HashMap<PathBuf, Arc<Drains>>> = Mutex::default();
    let drains = &drains;
    testing::durability(
        |dir: PathBuf, clock| async move {
            let tracker = drains
                .lock()
                .unwrap()
                .entry(dir.clone())
                .or_default()
                .clone();
            tracker.wait().await;
            let mut o = options(nats, &format!("D{:016X}", hash(&dir)));
            o.drains = tracker;
            Arc::new(NatsStore::connect(o, clock).await.expect("connect")) as Arc<dyn Backend>
        },
        false,
    )
    .await;
}

fn hash(dir: &std::path::Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut h);
    h.finish()
}

#[tokio::test]
async fn single_server_passes_the_conformance_suite() {
    let nats = Nats::single().await;
    let started = Instant::now();
    conformance_on(&nats).await;
    eprintln!("conformance on one server: {:?}", started.elapsed());
}

#[tokio::test]
async fn single_server_passes_the_durability_suite() {
    let nats = Nats::single().await;
    durability_on(&nats).await;
}

#[tokio::test]
async fn cluster_passes_the_conformance_suite() {
    let nats = Nats::cluster().await;
    let started = Instant::now();
    conformance_on(&nats).await;
    eprintln!("conformance on a 3-node cluster: {:?}", started.elapsed());
}

#[tokio::test]
async fn cluster_passes_the_durability_suite() {
    let nats = Nats::cluster().await;
    durability_on(&nats).await;
}

fn clock() -> SharedClock {
    Arc::new(ManualClock::new(T0))
}

#[tokio::test]
async fn an_unreachable_server_fails_fast_and_says_where() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let started = Instant::now();
    let err = NatsStore::connect(
        NatsOptions::new(&format!("nats://127.0.0.1:{port}")),
        clock(),
    )
    .await
    .expect_err("nothing listens there");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let text = err.to_string();
    assert!(matches!(err, ConnectError::Unreachable { .. }), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");

    let bad = NatsStore::connect(NatsOptions::new("nats://127.0.0.1:1,"), clock()).await;
    assert!(bad.is_err());
    let mut o = NatsOptions::new("nats://127.0.0.1:4222");
    o.prefix = "has.dot".into();
    assert!(matches!(
        NatsStore::connect(o, clock()).await,
        Err(ConnectError::Invalid(_))
    ));
}

fn event(id: &str) -> NewEvent {
    NewEvent {
        tenant: "acme".into(),
        bus: "orders".into(),
        event_id: id.into(),
        body: Bytes::from(format!(r#"{{"id":"{id}"}}"#)),
        ingested_ms: T0,
        ..Default::default()
    }
}

/// Retries `f` until it succeeds or `within` runs out.
async fn eventually<T>(within: Duration, mut f: impl AsyncFnMut() -> StoreResult<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "still failing after {within:?}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test]
async fn while_the_server_is_down_writes_are_unavailable_and_recover_by_themselves() {
    let mut nats = Nats::single().await;
    let mut o = options(&nats, &fresh_prefix());
    o.request_timeout = Duration::from_secs(1);
    let store = NatsStore::connect(o, clock()).await.expect("connect");
    let consumer = store.consumer().await.unwrap();
    store.append(vec![event("before")]).await.unwrap();

    nats.server(0).kill();
    let started = Instant::now();
    let down = store.append(vec![event("during")]).await;
    assert!(
        matches!(down, Err(StoreError::Unavailable(_))),
        "an append without a server: {down:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let read = store.setting("x").await;
    assert!(matches!(read, Err(StoreError::Unavailable(_))), "{read:?}");

    nats.server(0).start();
    nats.wait_ready().await;
    eventually(Duration::from_secs(20), async || {
        store.append(vec![event("after")]).await
    })
    .await;
    // Nothing acknowledged was lost (sync_interval: always), and the
    // consumer picks up after the outage without being reopened.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains(&"after".to_owned()) {
        assert!(Instant::now() < deadline, "saw only {seen:?}");
        if let Ok(batch) = consumer.next(10, Duration::from_millis(500)).await {
            seen.extend(batch.into_iter().map(|e| e.event.event_id));
        }
    }
    assert_eq!(seen.first().map(String::as_str), Some("before"), "{seen:?}");
}

#[tokio::test]
async fn one_node_down_of_three_loses_nothing_and_keeps_accepting() {
    let mut nats = Nats::cluster().await;
    let store = NatsStore::connect(options(&nats, &fresh_prefix()), clock())
        .await
        .expect("connect");
    // The routing consumer exists before the outage (a node opens it at
    // start-up). Creating one while a node is down is a later phase's
    // concern: it did not succeed within 20 s here.
    let consumer = store.consumer().await.unwrap();
    store.append(vec![event("e1")]).await.unwrap();
    nats.server(2).kill();
    eventually(Duration::from_secs(20), async || {
        store.append(vec![event("e2")]).await
    })
    .await;
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 2 {
        assert!(Instant::now() < deadline, "saw only {seen:?}");
        if let Ok(batch) = consumer.next(10, Duration::from_millis(500)).await {
            seen.extend(batch.into_iter().map(|e| e.event.event_id));
        }
    }
    assert_eq!(seen, ["e1", "e2"]);
}

#[tokio::test]
async fn config_changes_reach_a_watching_node() {
    let nats = Nats::single().await;
    let prefix = fresh_prefix();
    let a = NatsStore::connect(options(&nats, &prefix), clock())
        .await
        .unwrap();
    let b = NatsStore::connect(options(&nats, &prefix), clock())
        .await
        .unwrap();
    let mut watch = b.watch().await.unwrap().expect("NATS watches");
    let rule = Resource {
        tenant: "acme".into(),
        kind: ResourceKind::Rule,
        name: "orders/all.v1".into(),
        spec: serde_json::json!({"pattern": {}}),
        updated_ms: T0,
    };
    a.put_resource(rule.clone()).await.unwrap();
    a.put_setting("k", "v").await.unwrap();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("a change within 5 s")
            .unwrap()
    };
    assert_eq!(next().await, ConfigChange::Resource(rule.clone()));
    assert_eq!(
        next().await,
        ConfigChange::Setting {
            key: "k".into(),
            value: "v".into()
        }
    );
    // A key changed again before the watcher read it may report only its
    // latest state: the deletion must come, the put before it may.
    let mut replaced = rule.clone();
    replaced.updated_ms += 1;
    a.put_resource(replaced.clone()).await.unwrap();
    a.delete_resource("acme", ResourceKind::Rule, "orders/all.v1")
        .await
        .unwrap();
    let deleted = ConfigChange::ResourceDeleted {
        tenant: "acme".into(),
        kind: ResourceKind::Rule,
        name: "orders/all.v1".into(),
    };
    let change = next().await;
    if change != deleted {
        assert_eq!(change, ConfigChange::Resource(replaced));
        assert_eq!(next().await, deleted);
    }
}

#[test]
fn tokens_escape_what_subjects_cannot_hold_and_round_trip() {
    for name in ["acme", "orders/all", "a.b", "x y*>", "", "=", "ü"] {
        let t = token(name);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'='),
            "{t}"
        );
        assert_eq!(untoken(&t).as_deref(), Some(name));
    }
    assert_ne!(token("a.b"), token("a_b"));
    assert_eq!(untoken("=Z1"), None);
}

#[tokio::test]
async fn a_watch_tells_changes_this_handle_has_since_overwritten() {
    let nats = Nats::single().await;
    let prefix = fresh_prefix();
    let a = NatsStore::connect(options(&nats, &prefix), clock())
        .await
        .unwrap();
    let b = NatsStore::connect(options(&nats, &prefix), clock())
        .await
        .unwrap();
    let mut watch = a.watch().await.unwrap().expect("NATS watches");
    let rule = |source: &str| Resource {
        tenant: "acme".into(),
        kind: ResourceKind::Rule,
        name: "orders/r".into(),
        spec: serde_json::json!({"pattern": {"source": [source]}}),
        updated_ms: T0,
    };
    // B writes, then A writes the same key: B's change is older than what
    // A has (and applied); A's own write is no news to A either.
    b.put_resource(rule("from-b")).await.unwrap();
    a.put_resource(rule("from-a")).await.unwrap();
    // Another key B writes afterwards is news.
    b.put_setting("k", "v").await.unwrap();
    let mut seen = Vec::new();
    loop {
        let change = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("a change within 5 s")
            .unwrap();
        let last = matches!(change, ConfigChange::Setting { .. });
        seen.push((change, watch.superseded()));
        if last {
            break;
        }
    }
    for (change, superseded) in &seen {
        match change {
            ConfigChange::Resource(_) => assert!(superseded, "{seen:?}"),
            _ => assert!(!superseded, "{seen:?}"),
        }
    }
}

#[tokio::test]
async fn a_reconnect_ends_the_config_watch_so_the_reader_reloads() {
    let mut nats = Nats::single().await;
    let store = NatsStore::connect(options(&nats, &fresh_prefix()), clock())
        .await
        .unwrap();
    let mut watch = store.watch().await.unwrap().expect("NATS watches");
    nats.server(0).kill();
    nats.server(0).start();
    nats.wait_ready().await;
    let ended = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the watch ends within 10 s of the reconnect");
    assert!(
        matches!(ended, Err(StoreError::Unavailable(_))),
        "{ended:?}"
    );
    // A new watch works.
    let mut watch = eventually(Duration::from_secs(20), async || store.watch().await).await;
    eventually(Duration::from_secs(20), async || {
        store.put_setting("k", "v").await
    })
    .await;
    let change = tokio::time::timeout(Duration::from_secs(5), watch.as_mut().unwrap().next())
        .await
        .expect("a change")
        .unwrap();
    assert_eq!(
        change,
        ConfigChange::Setting {
            key: "k".into(),
            value: "v".into()
        }
    );
}

#[tokio::test]
async fn plugin_components_are_shared_by_digest_and_health_follows_the_server() {
    let mut nats = Nats::single().await;
    let store = NatsStore::connect(options(&nats, &fresh_prefix()), clock())
        .await
        .unwrap();
    let blobs = store.blobs();
    let bytes = Bytes::from(vec![7u8; 300_000]);
    let sha = "ab".repeat(32);
    assert_eq!(blobs.get_blob(&sha).await.unwrap(), None);
    blobs.put_blob(&sha, bytes.clone()).await.unwrap();
    // Stored once: a second put is a no-op.
    blobs.put_blob(&sha, bytes.clone()).await.unwrap();
    assert_eq!(blobs.get_blob(&sha).await.unwrap(), Some(bytes));

    let health = store.health();
    assert_eq!(health.check(), Ok(()));
    nats.server(0).kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    while health.check().is_ok() {
        assert!(Instant::now() < deadline, "still healthy without a server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(
        blobs.get_blob(&sha).await,
        Err(StoreError::Unavailable(_))
    ));
    nats.server(0).start();
    nats.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while health.check().is_err() {
        assert!(
            Instant::now() < deadline,
            "not healthy again: {:?}",
            health.check()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two bus nodes share the routing consumer behind a link that delays
/// every answer by 20 ms. Each routes as the router does: take entries,
/// write their traces, acknowledge them. Every entry must be routed within
/// 5 s. Writing one trace at a time (two round trips each: read the facts
/// waiting for it, put it) needs at least 250 × 40 ms = 10 s per node for
/// 500 entries, and that capped routing on a real cluster at a few hundred
/// entries a second: the routing backlog filled `max_ack_pending`, a
/// stopping node handed thousands of entries back, and two nodes on one
/// deployment collapsed.
#[tokio::test]
async fn two_nodes_route_traced_entries_without_a_round_trip_per_trace() {
    use crate::store::traces::{Trace, Traces};
    use std::sync::atomic::{AtomicUsize, Ordering};
    const ENTRIES: usize = 500;
    let nats = Nats::single().await;
    let link = super::testing::SlowLink::to(&nats.urls(), Duration::from_millis(20)).await;
    let mut o = options(&nats, &fresh_prefix());
    o.urls = vec![link.url()];
    let nodes = [
        NatsStore::connect(o.clone(), clock()).await.unwrap(),
        NatsStore::connect(o, clock()).await.unwrap(),
    ];
    let events: Vec<NewEvent> = (0..ENTRIES).map(|i| event(&format!("e{i}"))).collect();
    nodes[0].append(events).await.unwrap();

    let routed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for node in &nodes {
        let (node, routed) = (node.clone(), routed.clone());
        tasks.push(tokio::spawn(async move {
            let consumer = node.consumer().await.unwrap();
            while routed.load(Ordering::SeqCst) < ENTRIES {
                let entries = consumer
                    .next(100, Duration::from_millis(100))
                    .await
                    .unwrap();
                if entries.is_empty() {
                    continue;
                }
                let traces: Vec<Trace> =
                    entries.iter().map(|e| Trace::received(&e.event)).collect();
                node.record_traces(traces.into()).await.unwrap();
                let n = entries.len();
                consumer
                    .ack(entries.into_iter().map(|e| e.ack).collect())
                    .await
                    .unwrap();
                routed.fetch_add(n, Ordering::SeqCst);
            }
        }));
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(5);
    while routed.load(Ordering::SeqCst) < ENTRIES {
        assert!(
            Instant::now() < deadline,
            "{} of {ENTRIES} entries routed in {:?}",
            routed.load(Ordering::SeqCst),
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    for id in ["e0", "e499"] {
        let trace = nodes[1].trace("acme", id, Some("orders")).await.unwrap();
        assert_eq!(trace.map(|t| t.event_id).as_deref(), Some(id));
    }
}

/// A stopping node whose parked pull is handed an entry just as the node
/// stops waiting (a shutdown cancels the router's wait) gives that entry
/// back with the rest: another node gets it at once, not after `AckWait`.
/// The link delays the server's answers by 300 ms, so the entry is on its
/// way to the pull when the caller gives up and the node releases.
#[tokio::test]
async fn a_clean_stop_gives_back_an_entry_its_cancelled_pull_was_handed() {
    let nats = Nats::single().await;
    let link = super::testing::SlowLink::to(&nats.urls(), Duration::from_millis(300)).await;
    let direct = options(&nats, &fresh_prefix());
    let mut slow = direct.clone();
    slow.urls = vec![link.url()];
    slow.ack_wait = Duration::from_secs(30);
    let stopping = NatsStore::connect(slow, clock()).await.unwrap();
    let other = NatsStore::connect(direct, clock()).await.unwrap();
    let routing = stopping.consumer().await.unwrap();
    let waiting = tokio::spawn({
        let routing = routing.clone();
        async move { routing.next(10, Duration::from_secs(10)).await }
    });
    // Once its pull is parked on the server, an entry goes straight to it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = other.inner.log.consumer_info(log::ROUTER).await.unwrap();
        if info.num_waiting > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the pull never parked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    other.append(vec![event("e1")]).await.unwrap();
    waiting.abort();
    routing.release().await;

    let taking = other.consumer().await.unwrap();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(10);
    loop {
        let got = taking.next(10, Duration::from_millis(200)).await.unwrap();
        if got.iter().any(|e| e.event.event_id == "e1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "e1 not given back within {:?} (AckWait is 30 s)",
            started.elapsed()
        );
    }
}
