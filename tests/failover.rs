//! The failover acceptance: three bus nodes (real binaries) on a
//! 3-node NATS cluster (R3 streams, `sync_interval: always`), senders spread
//! over the nodes; one bus node is `kill -9`ed under load, then one NATS
//! server. Every acknowledged event must be delivered (at least once);
//! duplicates are counted and printed; delivery must resume within 10 s of
//! each kill.

use crate::support::nats::harness::Nats;
use crate::support::process::{BusProcess, create_tenant, post_event};
use crate::support::*;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a node may be silent before the server hands its work to
/// another (`[store] ack_wait_ms`): short here, so the killed node's
/// unfinished events come back within the test.
const ACK_WAIT_MS: u64 = 5_000;

/// The generous bound on "delivery resumes".
const RESUME_WITHIN: Duration = Duration::from_secs(10);

/// Samples how many deliveries the sink has, to find stalls.
struct Progress {
    samples: Mutex<Vec<(Instant, usize)>>,
}

impl Progress {
    /// The longest time within `[from, from + window]` during which the
    /// delivery count did not grow.
    fn longest_stall(&self, from: Instant, window: Duration) -> Duration {
        let samples = self.samples.lock().unwrap();
        let mut last_growth = from;
        let mut last_count = samples
            .iter()
            .take_while(|(t, _)| *t <= from)
            .last()
            .map_or(0, |(_, n)| *n);
        let mut longest = Duration::ZERO;
        for (t, n) in samples
            .iter()
            .filter(|(t, _)| *t > from && *t <= from + window)
        {
            if *n > last_count {
                longest = longest.max(*t - last_growth);
                last_growth = *t;
                last_count = *n;
            }
        }
        let end = samples.last().map_or(from, |(t, _)| *t).min(from + window);
        longest.max(end.saturating_duration_since(last_growth))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_bus_node_then_a_nats_server_under_load_loses_no_acknowledged_event() {
    let mut nats = Nats::cluster().await;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<BusProcess> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            let config = dir.path().join("busbar.toml");
            std::fs::write(
                &config,
                format!(
                    "[store]\nurl = \"{}\"\nprefix = \"FAILOVER\"\nreplicas = 3\nack_wait_ms = {ACK_WAIT_MS}\n",
                    nats.urls()
                ),
            )
            .unwrap();
            let id = format!("node-{i}");
            BusProcess::spawn(
                dir.path(),
                &["--config", config.to_str().unwrap(), "--node-id", &id],
            )
        })
        .collect();
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let client = reqwest::Client::new();
    let sink = Receiver::start().await;
    let key = create_tenant(&client, &urls[0], "failover").await;
    let rule = json!({"pattern": {"source": ["load"]},
                      "targets": [{"id": "sink", "type": "http", "url": sink.url("/")}],
                      "retry_policy": {"max_attempts": 1000, "base_delay_ms": 20, "max_delay_ms": 500}});
    let put = client
        .put(format!("{}/v1/buses/default/rules/all", urls[0]))
        .bearer_auth(&key)
        .json(&rule)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    for url in &urls {
        wait_for("the rule on every node", Duration::from_secs(5), || {
            let (client, url, key) = (client.clone(), url.clone(), key.clone());
            async move {
                let r = client
                    .get(format!("{url}/v1/buses/default/rules/all"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
    }

    // Progress sampling, and senders: each sends to the nodes in turn and
    // skips a node that does not answer (as a load balancer would).
    let progress = Arc::new(Progress {
        samples: Mutex::new(Vec::new()),
    });
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (progress, running, sink) = (progress.clone(), running.clone(), sink.clone());
        tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                let n = sink.received().len();
                progress.samples.lock().unwrap().push((Instant::now(), n));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let refused = Arc::new(Mutex::new(HashMap::<u16, usize>::new()));
    let mut senders = Vec::new();
    for worker in 0..6 {
        let (client, urls, key, acked, refused, running) = (
            client.clone(),
            urls.clone(),
            key.clone(),
            acked.clone(),
            refused.clone(),
            running.clone(),
        );
        senders.push(tokio::spawn(async move {
            let mut i = 0u64;
            while running.load(Ordering::Relaxed) {
                let id = format!("w{worker}-{i}");
                let url = &urls[(worker + i as usize) % urls.len()];
                i += 1;
                let body = json!({"specversion": "1.0", "id": id, "source": "load", "type": "t", "data": {"i": i}});
                match post_event(&client, url, &key, &body).await {
                    Some(202) => {
                        acked.lock().unwrap().insert(id);
                    }
                    Some(status) => {
                        *refused.lock().unwrap().entry(status).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    None => {
                        // No answer: the node is gone (or timed out).
                        *refused.lock().unwrap().entry(0).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    let acked_now = || acked.lock().unwrap().len();
    let grow_by = |n: usize, what: &'static str| {
        let start = acked_now();
        let (acked, sink) = (acked.clone(), sink.clone());
        async move {
            wait_for(what, Duration::from_secs(90), || {
                let ok = acked.lock().unwrap().len() >= start + n && !sink.received().is_empty();
                async move { ok.then_some(()) }
            })
            .await;
        }
    };
    grow_by(1000, "load to build up").await;

    // kill -9 one bus node under load.
    let started = Instant::now();
    nodes[2].kill9();
    let bus_killed = Instant::now();
    eprintln!(
        "killed node-2 after {} acknowledged, {} delivered",
        acked_now(),
        sink.received().len()
    );
    grow_by(1000, "load to go on without node-2").await;
    tokio::time::sleep_until((bus_killed + RESUME_WITHIN + Duration::from_secs(2)).into()).await;

    // Then one NATS server.
    nats.server(0).kill();
    let nats_killed = Instant::now();
    eprintln!(
        "killed nats n1 after {} acknowledged, {} delivered",
        acked_now(),
        sink.received().len()
    );
    grow_by(1000, "load to go on without a NATS server").await;
    tokio::time::sleep_until((nats_killed + RESUME_WITHIN + Duration::from_secs(2)).into()).await;
    running.store(false, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    let acked: HashSet<String> = acked.lock().unwrap().clone();

    // Every acknowledged event arrives (the dead node's held work after
    // its ack wait).
    let delivered_at = wait_for(
        "every acknowledged event to be delivered",
        Duration::from_secs(120),
        || {
            let delivered: HashSet<String> = sink
                .received()
                .iter()
                .filter_map(|r| r.header("ce-id").map(str::to_owned))
                .collect();
            let missing = acked.difference(&delivered).count();
            async move { (missing == 0).then(Instant::now) }
        },
    )
    .await;
    sampler.abort();
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for r in sink.received() {
        if let Some(id) = r.header("ce-id") {
            *per_id.entry(id.to_owned()).or_default() += 1;
        }
    }
    let twice = per_id.values().filter(|n| **n > 1).count();
    let extra: usize = per_id.values().map(|n| n - 1).sum();
    let cpu: Vec<String> = nodes
        .iter()
        .filter(|n| n.pid() != 0)
        .map(|n| format!("{:.1} s", n.cpu_seconds()))
        .collect();
    let after_bus = progress.longest_stall(bus_killed, RESUME_WITHIN);
    let after_nats = progress.longest_stall(nats_killed, RESUME_WITHIN);
    eprintln!(
        "failover: {} acknowledged, {} deliveries ({} events delivered more than once, {} extra deliveries); \
         not accepted while failing over (status: count, 0 = no answer): {:?}; CPU used by the surviving nodes: {:?}; longest delivery stall after the bus kill {:?}, after the NATS kill {:?}; \
         all delivered {:?} after the first kill",
        acked.len(),
        per_id.values().sum::<usize>(),
        twice,
        extra,
        refused.lock().unwrap(),
        cpu,
        after_bus,
        after_nats,
        delivered_at - started,
    );
    assert!(acked.len() >= 3000);
    assert!(
        after_bus < RESUME_WITHIN,
        "delivery stalled {after_bus:?} after the bus kill"
    );
    assert!(
        after_nats < RESUME_WITHIN,
        "delivery stalled {after_nats:?} after the NATS kill"
    );
}
