//! The bus end to end: a real server on 127.0.0.1:0, real HTTP receivers.

use crate::support::*;
use axum::http::StatusCode;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

fn http_rule(source: &str, targets: Value) -> Value {
    json!({"pattern": {"source": [source]}, "targets": targets, "retry_policy": fast_retry(5)})
}

#[tokio::test]
async fn structured_binary_and_batch_events_reach_a_webhook() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    let sink = Receiver::start().await;
    bus.put(
        &key,
        "/v1/buses/default/rules/all",
        http_rule(
            "shop",
            json!([{"id": "hook", "type": "http", "url": sink.url("/hook")}]),
        ),
    )
    .await;

    bus.send(&key, "default", event("e1", "shop", json!({"n": 1})))
        .await;
    let (status, body) = bus
        .raw(
            &key,
            "default",
            "application/json",
            r#"{"n": 2}"#,
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "e2"),
                ("ce-source", "shop"),
                ("ce-type", "test.event"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["ids"], json!(["e2"]));
    let batch = json!([event("e3", "shop", json!({"n": 3})), {"specversion": "0.3", "id": "bad"}, event("e4", "other", json!({}))]);
    let (status, body) = bus
        .raw(
            &key,
            "default",
            "application/cloudevents-batch+json",
            batch.to_string(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["failed_count"], 1, "{body}");
    assert_eq!(
        body["results"][1]["error"]["field"], "[1].specversion",
        "{body}"
    );

    let got = sink.wait_for(3).await;
    let ids: HashSet<String> = got
        .iter()
        .filter_map(|r| r.header("ce-id").map(str::to_owned))
        .collect();
    assert_eq!(
        ids,
        HashSet::from(["e1".to_owned(), "e2".to_owned(), "e3".to_owned()])
    );
    let e2 = got
        .iter()
        .find(|r| r.header("ce-id") == Some("e2"))
        .unwrap();
    assert_eq!(e2.header("ce-source"), Some("shop"));
    assert_eq!(e2.json(), json!({"n": 2}));
    assert_eq!(e2.path, "/hook");
}

#[tokio::test]
async fn put_events_reports_per_entry_results_and_patterns_use_detail_aliases() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    let sink = Receiver::start().await;
    bus.put(
        &key,
        "/v1/buses/default/rules/big",
        json!({"pattern": {"source": ["shop"], "detail-type": ["order"], "detail": {"total": [{"numeric": [">", 100]}]}},
               "targets": [{"id": "hook", "type": "http", "url": sink.url("/"), "mode": "structured"}]}),
    )
    .await;
    let (status, body) = bus
        .call(
            Method::POST,
            "/v1/events",
            &key,
            Some(json!({"Entries": [
                {"Source": "shop", "DetailType": "order", "Detail": "{\"total\": 250}"},
                {"Source": "shop", "DetailType": "order", "Detail": "{\"total\": 5}"},
                {"Source": "shop", "DetailType": "order", "Detail": "not json"},
                {"Source": "shop", "DetailType": "order", "Detail": "{}", "EventBusName": "nope"}
            ]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["FailedEntryCount"], 2, "{body}");
    assert!(body["Entries"][0]["EventId"].is_string());
    assert!(body["Entries"][2]["ErrorCode"].is_string());
    assert_eq!(body["Entries"][3]["ErrorCode"], "ResourceNotFoundException");
    let got = sink.wait_for(1).await;
    let ev = got[0].json();
    assert_eq!(ev["data"]["total"], 250);
    assert_eq!(ev["id"], body["Entries"][0]["EventId"]);
    let content_type = got[0].header("content-type").unwrap();
    assert!(
        content_type.starts_with("application/cloudevents+json"),
        "{content_type}"
    );
}

#[tokio::test]
async fn every_error_status_has_a_json_body_naming_the_field() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;

    // 401: no key, wrong key.
    let resp = bus
        .client
        .post(format!("{}/v1/buses/default/events", bus.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(body["error"]["field"], "Authorization");
    let (status, _) = bus
        .raw(
            "wrong",
            "default",
            "application/cloudevents+json",
            "{}",
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // 404: unknown bus.
    let (status, body) = bus
        .raw(
            &key,
            "nope",
            "application/cloudevents+json",
            event("x", "s", json!({})).to_string(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["field"], "bus");

    // 400: missing required attribute, named.
    let mut ev = event("x", "s", json!({}));
    ev.as_object_mut().unwrap().remove("type");
    let (status, body) = bus
        .raw(
            &key,
            "default",
            "application/cloudevents+json",
            ev.to_string(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "type", "{body}");

    // 400: bad specversion header in binary mode.
    let (status, body) = bus
        .raw(
            &key,
            "default",
            "application/json",
            "{}",
            &[
                ("ce-specversion", "0.3"),
                ("ce-id", "1"),
                ("ce-source", "s"),
                ("ce-type", "t"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "ce-specversion", "{body}");

    // 415: neither CloudEvents headers nor a CloudEvents content type.
    let (status, body) = bus.raw(&key, "default", "text/plain", "hello", &[]).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert!(body["error"]["code"].is_string());

    // 413: one event over 256 KiB, and a body far over the request limit.
    let big = event("big", "s", json!({"blob": "x".repeat(300 * 1024)}));
    let (status, body) = bus
        .raw(
            &key,
            "default",
            "application/cloudevents+json",
            big.to_string(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "event_too_large");
    let huge = vec![b'x'; 20 * 1024 * 1024];
    let (status, body) = bus
        .raw(&key, "default", "application/cloudevents+json", huge, &[])
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "event_too_large");

    // 400 for an invalid rule, naming the pattern path; 422 for a missing queue.
    let (status, body) = bus
        .call(
            Method::PUT,
            "/v1/buses/default/rules/r",
            &key,
            Some(json!({
                "pattern": {"data": {"n": [{"numeric": [">", "x"]}]}},
                "targets": [{"id": "a", "type": "http", "url": "http://127.0.0.1:1/"}]
            })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["field"]
            .as_str()
            .unwrap()
            .starts_with("pattern.data.n"),
        "{body}"
    );
    let (status, body) = bus
        .call(Method::PUT, "/v1/buses/default/rules/r", &key, Some(json!({
            "pattern": {"source": ["s"]}, "targets": [{"id": "q", "type": "queue", "queue": "missing"}]
        })))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "targets[0].queue");

    // 409: duplicate tenant; 403: tenant key on the admin API.
    let (status, _) = bus
        .admin(
            Method::POST,
            "/v1/admin/tenants",
            Some(json!({"name": "acme"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = bus.call(Method::GET, "/v1/admin/tenants", &key, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn tenants_cannot_see_each_other() {
    let bus = TestBus::start().await;
    let a = bus.tenant("alpha").await;
    let b = bus.tenant("beta").await;
    bus.put(&a, "/v1/buses/private", json!({})).await;
    bus.put(&a, "/v1/queues/q", json!({})).await;
    bus.put(&a, "/v1/buses/private/rules/r", json!({"pattern": {"source": ["x"]}, "targets": [{"id": "q", "type": "queue", "queue": "q"}]}))
        .await;
    for path in [
        "/v1/buses/private",
        "/v1/buses/private/rules/r",
        "/v1/queues/q",
    ] {
        let (status, body) = bus.call(Method::GET, path, &b, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    let (status, _) = bus
        .raw(
            &b,
            "private",
            "application/cloudevents+json",
            event("1", "x", json!({})).to_string(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, buses) = bus.call(Method::GET, "/v1/buses", &b, None).await;
    assert_eq!(buses["items"].as_array().unwrap().len(), 1, "{buses}");
    // Beta's events on its own default bus never reach alpha's queue.
    bus.send(&b, "default", event("1", "x", json!({}))).await;
    bus.send(&a, "private", event("2", "x", json!({}))).await;
    let (_, got) = bus
        .call(
            Method::POST,
            "/v1/queues/q/receive",
            &a,
            Some(json!({"max_messages": 10, "wait_s": 5})),
        )
        .await;
    assert_eq!(got["messages"].as_array().unwrap().len(), 1, "{got}");
    assert_eq!(got["messages"][0]["event"]["id"], "2");
    // A revoked key stops working at once.
    let (_, tenants) = bus.admin(Method::GET, "/v1/admin/tenants", None).await;
    let beta = tenants["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "beta")
        .unwrap();
    let key_id = beta["key_ids"][0].as_str().unwrap();
    let (status, _) = bus
        .admin(
            Method::DELETE,
            &format!("/v1/admin/tenants/beta/keys/{key_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = bus.call(Method::GET, "/v1/buses", &b, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn fan_out_reaches_every_target_and_transforms_apply() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    let (s1, s2) = (Receiver::start().await, Receiver::start().await);
    bus.put(&key, "/v1/queues/audit", json!({})).await;
    bus.put(&key, "/v1/buses/other", json!({})).await;
    bus.put(&key, "/v1/buses/other/rules/fwd", json!({"pattern": {"source": ["shop"]}, "targets": [{"id": "s2", "type": "http", "url": s2.url("/fwd")}]}))
        .await;
    bus.put(
        &key,
        "/v1/buses/default/rules/fan",
        json!({"pattern": {"source": ["shop"]},
               "transform": {"input_paths_map": {"id": "$.data.id"}, "input_template": "{\"order\": <id>}"},
               "targets": [
                   {"id": "s1", "type": "http", "url": s1.url("/t")},
                   {"id": "audit", "type": "queue", "queue": "audit"},
                   {"id": "other", "type": "bus", "bus": "other"}
               ]}),
    )
    .await;
    bus.send(&key, "default", event("ev-1", "shop", json!({"id": "o-7"})))
        .await;
    let got = s1.wait_for(1).await;
    assert_eq!(got[0].json(), json!({"order": "o-7"}));
    assert_eq!(got[0].header("ce-id"), Some("ev-1"));
    let fwd = s2.wait_for(1).await;
    assert_eq!(fwd[0].header("ce-id"), Some("ev-1"));
    assert_eq!(fwd[0].header("ce-busbarhops"), Some("1"));
    let (_, q) = bus
        .call(
            Method::POST,
            "/v1/queues/audit/receive",
            &key,
            Some(json!({"wait_s": 5})),
        )
        .await;
    assert_eq!(q["messages"][0]["event"], json!({"order": "o-7"}), "{q}");
}

#[tokio::test]
async fn retries_until_the_receiver_recovers_with_a_stable_id() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    let sink = Receiver::start().await;
    sink.fail_next(3, 503);
    bus.put(
        &key,
        "/v1/buses/default/rules/r",
        http_rule(
            "s",
            json!([{"id": "h", "type": "http", "url": sink.url("/")}]),
        ),
    )
    .await;
    bus.send(&key, "default", event("stable-1", "s", json!({})))
        .await;
    let got = sink.wait_for(1).await;
    assert_eq!(got[0].header("ce-id"), Some("stable-1"));
    let (_, dlq) = bus.call(Method::GET, "/v1/dlq", &key, None).await;
    assert_eq!(dlq["items"].as_array().unwrap().len(), 0, "{dlq}");
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_the_event_when_it_comes_back() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    // Reserve a port, then free it so connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let rule = json!({"pattern": {"source": ["s"]}, "targets": [{"id": "h", "type": "http", "url": format!("http://{port}/")}],
                      "retry_policy": {"max_attempts": 100, "base_delay_ms": 20, "max_delay_ms": 100}});
    bus.put(&key, "/v1/buses/default/rules/r", rule).await;
    bus.send(&key, "default", event("late", "s", json!({})))
        .await;
    // Wait until at least one attempt failed (the metric counts retries).
    wait_for("a failed attempt", Duration::from_secs(10), || async {
        let text = bus
            .client
            .get(format!("{}/metrics", bus.url))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains("busbar_delivery_retries_total").then_some(())
    })
    .await;
    let sink = Receiver::start_on(port).await;
    let got = sink.wait_for(1).await;
    assert_eq!(got[0].header("ce-id"), Some("late"));
    // Retries are traced as facts (the bus traces by default), counted.
    let text = bus.metrics().await;
    assert!(counter(&text, "busbar_trace_facts_total") >= 1, "{text}");
}

#[tokio::test]
async fn permanent_failure_goes_to_the_dead_letter_queue_and_redrive_delivers_it() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    let sink = Receiver::start().await;
    sink.fail_next(1, 404);
    bus.put(
        &key,
        "/v1/buses/default/rules/r",
        http_rule(
            "s",
            json!([{"id": "h", "type": "http", "url": sink.url("/")}]),
        ),
    )
    .await;
    bus.send(&key, "default", event("dead-1", "s", json!({"x": 1})))
        .await;
    let entry = wait_for("a dead letter", Duration::from_secs(10), || async {
        let (_, dlq) = bus.call(Method::GET, "/v1/dlq?rule=r", &key, None).await;
        dlq["items"]
            .as_array()
            .and_then(|items| items.first().cloned())
    })
    .await;
    assert_eq!(entry["event"]["id"], "dead-1");
    assert_eq!(entry["rule"], "r");
    assert_eq!(entry["target"], "h");
    assert_eq!(entry["last_status"], 404);
    assert_eq!(entry["exhausted"], "permanent");
    assert_eq!(entry["attempts"], 1);
    assert!(entry["error_code"].is_string() && entry["error_message"].is_string());
    let id = entry["id"].as_i64().unwrap();
    let (status, one) = bus
        .call(Method::GET, &format!("/v1/dlq/{id}"), &key, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["id"], id);
    // Another tenant cannot see or redrive it.
    let other = bus.tenant("other").await;
    let (status, _) = bus
        .call(Method::GET, &format!("/v1/dlq/{id}"), &other, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, body) = bus
        .call(
            Method::POST,
            "/v1/dlq/redrive",
            &key,
            Some(json!({"ids": [id]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["redriven"], 1);
    let got = sink.wait_for(1).await;
    assert_eq!(got[0].header("ce-id"), Some("dead-1"));
    let (_, dlq) = bus.call(Method::GET, "/v1/dlq", &key, None).await;
    assert!(dlq["items"].as_array().unwrap().is_empty(), "{dlq}");
}

#[tokio::test]
async fn exhausted_retries_are_dead_lettered_with_the_limit_named() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    let sink = Receiver::start().await;
    sink.fail_next(100, 500);
    bus.put(&key, "/v1/buses/default/rules/r", json!({"pattern": {"source": ["s"]},
        "targets": [{"id": "h", "type": "http", "url": sink.url("/")}], "retry_policy": fast_retry(3)})).await;
    bus.send(&key, "default", event("tired", "s", json!({})))
        .await;
    let entry = wait_for("a dead letter", Duration::from_secs(10), || async {
        let (_, dlq) = bus.call(Method::GET, "/v1/dlq", &key, None).await;
        dlq["items"]
            .as_array()
            .and_then(|items| items.first().cloned())
    })
    .await;
    assert_eq!(entry["exhausted"], "max_attempts");
    assert_eq!(entry["attempts"], 3);
    assert_eq!(entry["last_status"], 500);
}

#[tokio::test]
async fn queue_messages_reappear_after_the_visibility_timeout_until_acked() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    bus.put(&key, "/v1/queues/work", json!({})).await;
    bus.put(&key, "/v1/buses/default/rules/r", json!({"pattern": {"source": ["s"]}, "targets": [{"id": "q", "type": "queue", "queue": "work"}]}))
        .await;
    bus.send(&key, "default", event("m1", "s", json!({}))).await;
    let receive = |vis: u64, wait: u64| {
        let bus = &bus;
        let key = key.clone();
        async move {
            let (status, body) = bus
                .call(
                    Method::POST,
                    "/v1/queues/work/receive",
                    &key,
                    Some(json!({"max_messages": 5, "visibility_timeout_s": vis, "wait_s": wait})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["messages"].as_array().unwrap().clone()
        }
    };
    // Long enough that a stalled machine still asks again within it.
    let first = receive(3, 5).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["receive_count"], 1);
    // Hidden now...
    assert!(receive(3, 0).await.is_empty());
    // ...and visible again after the timeout, with a new receipt.
    let second = receive(30, 5).await;
    assert_eq!(second.len(), 1, "message should reappear");
    assert_eq!(second[0]["receive_count"], 2);
    // The stale receipt no longer acks; the fresh one does.
    let (_, ack) = bus
        .call(
            Method::POST,
            "/v1/queues/work/ack",
            &key,
            Some(json!({"receipts": [first[0]["receipt"]]})),
        )
        .await;
    assert_eq!(ack["acked"], 0);
    let (_, ack) = bus
        .call(
            Method::POST,
            "/v1/queues/work/ack",
            &key,
            Some(json!({"receipts": [second[0]["receipt"]]})),
        )
        .await;
    assert_eq!(ack["acked"], 1);
    let (_, q) = bus.call(Method::GET, "/v1/queues/work", &key, None).await;
    assert_eq!(q["depth"], 0);
}

#[tokio::test]
async fn configuration_and_undelivered_work_survive_a_restart() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    bus.put(&key, "/v1/queues/keep", json!({})).await;
    bus.put(&key, "/v1/buses/default/rules/r", json!({"pattern": {"source": ["s"]}, "targets": [{"id": "q", "type": "queue", "queue": "keep"}]}))
        .await;
    bus.send(&key, "default", event("p1", "s", json!({}))).await;
    let dir = bus.stop().await;
    let bus = TestBus::start_in(dir).await;
    // On SQLite the restarted process owns everything at once. On NATS the
    // stopped node gives its held work back at once, including what its
    // parked pull was handed as the node stopped waiting (the entry is
    // appended just before the stop); lost in that pull, it came back only
    // after AckWait (30 s), so 10 s tells the two apart.
    let body = crate::support::wait_for("p1 in the queue", Duration::from_secs(10), || async {
        let (status, body) = bus
            .call(
                Method::POST,
                "/v1/queues/keep/receive",
                &key,
                Some(json!({"wait_s": 5})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (body["messages"][0]["event"]["id"] == "p1").then_some(body)
    })
    .await;
    assert_eq!(body["messages"][0]["event"]["id"], "p1", "{body}");
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    bus.send(&key, "default", event("m", "s", json!({}))).await;
    for path in ["/healthz", "/readyz"] {
        let resp = bus
            .client
            .get(format!("{}{path}", bus.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
    }
    let text = bus.metrics().await;
    assert!(text.contains("busbar_events_accepted_total"), "{text}");
}

#[tokio::test]
async fn pattern_and_transform_testers_over_http() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    let (status, body) = bus
        .call(Method::POST, "/v1/patterns/test", &key, Some(json!({
            "pattern": {"detail": {"n": [{"numeric": [">=", 3]}]}}, "event": {"data": {"n": 3.0}}})))
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"match": true})));
    let (status, body) = bus
        .call(
            Method::POST,
            "/v1/patterns/test",
            &key,
            Some(json!({"pattern": {"a": [{"cidr": "10.0.0.0/33"}]}, "event": {}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "pattern.a[0].cidr", "{body}");
    let (status, body) = bus
        .call(Method::POST, "/v1/transforms/test", &key, Some(json!({
            "event": {"data": {"who": "ann"}}, "input_paths_map": {"who": "$.data.who"}, "input_template": "{\"to\": <who>}"})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let output: Value = serde_json::from_str(body["output"].as_str().unwrap()).unwrap();
    assert_eq!(output, json!({"to": "ann"}));
    let (status, body) = bus
        .call(
            Method::POST,
            "/v1/transforms/test",
            &key,
            Some(json!({"event": {}, "input_template": "<nope>"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["field"]
            .as_str()
            .unwrap()
            .starts_with("input_template"),
        "{body}"
    );
}

#[tokio::test]
async fn reading_a_rule_never_reveals_target_secrets() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    bus.put(
        &key,
        "/v1/buses/default/rules/secret",
        json!({"pattern": {"source": ["s"]}, "targets": [{
            "id": "h", "type": "http", "url": "http://127.0.0.1:9/",
            "auth": {"type": "basic", "username": "u", "password": "hunter2"},
            "signing": {"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}}]}),
    )
    .await;
    let (status, rule) = bus
        .call(Method::GET, "/v1/buses/default/rules/secret", &key, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let text = rule.to_string();
    assert!(
        !text.contains("hunter2") && !text.contains("whsec_"),
        "{text}"
    );
    assert_eq!(rule["targets"][0]["auth"]["username"], "u");
    let (status, body) = bus
        .call(Method::PATCH, "/v1/buses/default/rules/secret", &key, None)
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn a_slow_target_does_not_hold_up_other_targets_or_ingestion() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    let (slow, fast) = (Receiver::start().await, Receiver::start().await);
    slow.slow_down(Duration::from_secs(30));
    let rule = json!({"pattern": {"source": ["s"]}, "targets": [
        {"id": "slow", "type": "http", "url": slow.url("/"), "timeout_ms": 60000},
        {"id": "fast", "type": "http", "url": fast.url("/")}]});
    bus.put(&key, "/v1/buses/default/rules/r", rule).await;
    // More events than the slow target's in-flight cap (256): its surplus waits in the store.
    let batch: Vec<Value> = (0..300)
        .map(|i| event(&format!("e{i}"), "s", json!({"i": i})))
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
    // The fast target gets all of them while the slow one is still holding its first requests.
    let got = fast.wait_for(300).await;
    assert_eq!(got.len(), 300);
    assert!(slow.received().is_empty());
    // And ingestion still answers at once.
    bus.send(&key, "default", event("later", "s", json!({})))
        .await;
    fast.wait_for(301).await;
}

/// Issue 9: bus and queue settings of the wrong type, or unknown ones, are
/// refused with 400 naming the field (every problem listed), and nothing is created.
#[tokio::test]
async fn bus_and_queue_settings_are_checked_member_by_member() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    for path in ["/v1/buses/orders", "/v1/queues/audit"] {
        let (status, body) = bus
            .call(
                Method::PUT,
                path,
                &key,
                Some(json!({"description": 5, "colour": "red"})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        let fields: Vec<&str> = body["error"]["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, ["colour", "description"], "{path}: {body}");
        let (status, _) = bus.call(Method::GET, path, &key, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path} was not created");
        let (status, body) = bus
            .call(Method::PUT, path, &key, Some(json!({"description": "ok"})))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{path}: {body}");
    }
}

crate::also_on_nats!(
    structured_binary_and_batch_events_reach_a_webhook,
    put_events_reports_per_entry_results_and_patterns_use_detail_aliases,
    every_error_status_has_a_json_body_naming_the_field,
    tenants_cannot_see_each_other,
    fan_out_reaches_every_target_and_transforms_apply,
    retries_until_the_receiver_recovers_with_a_stable_id,
    a_receiver_that_is_down_gets_the_event_when_it_comes_back,
    permanent_failure_goes_to_the_dead_letter_queue_and_redrive_delivers_it,
    exhausted_retries_are_dead_lettered_with_the_limit_named,
    queue_messages_reappear_after_the_visibility_timeout_until_acked,
    configuration_and_undelivered_work_survive_a_restart,
    health_readiness_and_metrics_answer,
    reading_a_rule_never_reveals_target_secrets,
    a_slow_target_does_not_hold_up_other_targets_or_ingestion,
    bus_and_queue_settings_are_checked_member_by_member,
);
