//! Every kind of target behind the one `Target` trait: batches for
//! connectors, the retry policy for queue and bus targets.

use crate::support::*;
use axum::http::StatusCode;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

// Not rerun on NATS: it compares the plugin-invocation counter, which is
// one per process (the highest value any bus in the process reported).

/// Guests these tests run through the bus.
pub const TESTED: &[&str] = &["signed-webhook"];

/// The value of a counter in the Prometheus text (whatever its labels:
/// every series carries the node's name).
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once('}')?.1,
                None => rest,
            };
            value.trim().parse::<f64>().ok()
        })
        .map_or(0, |v| v as u64)
}

async fn metrics(bus: &TestBus) -> String {
    bus.client
        .get(format!("{}/metrics", bus.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_connector_gets_the_deliveries_due_together_as_one_batch() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    let sink = Receiver::start().await;
    bus.install(&key, "hook", "signed-webhook").await;
    bus.put(&key, "/v1/buses/default/rules/r", json!({
        "pattern": {"source": ["shop"]},
        "targets": [{"id": "w", "type": "wasm", "plugin": "hook", "max_batch": 20,
                     "config": {"url": sink.url("/signed"), "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
                     "allowed_hosts": ["127.0.0.1"]}]})).await;
    let before = counter(&metrics(&bus).await, "busbar_plugin_invocations_total");
    // Twenty events in one request are committed together, routed together,
    // and due together for the connector: one invocation delivers them all.
    let batch: Vec<Value> = (0..20)
        .map(|i| json!({"specversion": "1.0", "id": format!("b{i}"), "source": "shop", "type": "t", "data": {"i": i}}))
        .collect();
    let (status, body) = bus
        .raw(
            &key,
            "default",
            "application/cloudevents-batch+json",
            Value::Array(batch).to_string(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let got = sink.wait_for(20).await;
    let mut ids: Vec<&str> = got.iter().filter_map(|r| r.header("webhook-id")).collect();
    ids.sort_unstable();
    assert_eq!(ids.len(), 20);
    let after = wait_for("the invocation counted", Duration::from_secs(5), || {
        let bus = &bus;
        async move {
            let n = counter(&metrics(bus).await, "busbar_plugin_invocations_total");
            (n > before).then_some(n)
        }
    })
    .await;
    assert_eq!(
        after - before,
        1,
        "twenty deliveries, one connector invocation"
    );

    // A batch larger than the target's max_batch is split.
    bus.put(&key, "/v1/buses/default/rules/r", json!({
        "pattern": {"source": ["shop"]},
        "targets": [{"id": "w", "type": "wasm", "plugin": "hook", "max_batch": 4,
                     "config": {"url": sink.url("/signed"), "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
                     "allowed_hosts": ["127.0.0.1"]}]})).await;
    // (Saving the rule ran the connector's validate-config: count from here.)
    let after = counter(&metrics(&bus).await, "busbar_plugin_invocations_total");
    let batch: Vec<Value> = (0..8)
        .map(
            |i| json!({"specversion": "1.0", "id": format!("c{i}"), "source": "shop", "type": "t"}),
        )
        .collect();
    bus.raw(
        &key,
        "default",
        "application/cloudevents-batch+json",
        Value::Array(batch).to_string(),
        &[],
    )
    .await;
    sink.wait_for(28).await;
    let n = wait_for("two more invocations", Duration::from_secs(5), || {
        let bus = &bus;
        async move {
            let n = counter(&metrics(bus).await, "busbar_plugin_invocations_total");
            (n >= after + 2).then_some(n)
        }
    })
    .await;
    assert_eq!(n - after, 2, "eight deliveries in batches of at most four");
    let (status, body) = bus
        .call(Method::PUT, "/v1/buses/default/rules/r", &key, Some(json!({
            "pattern": {"source": ["shop"]},
            "targets": [{"id": "w", "type": "wasm", "plugin": "hook", "max_batch": 0,
                         "config": {"url": sink.url("/signed"), "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}}]})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "targets[0].max_batch");
}
