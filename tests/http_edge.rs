//! The HTTP edge and the testers, as a hostile or careless client meets them
//! (issue 9 §3 and §4): oversized bodies refused before they arrive, the
//! `Authorization` scheme in any case, repeated member names in events, the
//! pattern and transform testers with rule sets and rule context, and a
//! transform whose output would not be JSON dead-lettered with its reason.

use crate::support::{TestBus, event, wait_for};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends a request head announcing a huge body and no body at all; returns the
/// status and JSON body of the answer, which must come within `deadline`.
async fn announce_huge_body(bus: &TestBus, head: &str, deadline: Duration) -> (u16, Value) {
    let addr = bus.url.trim_start_matches("http://");
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let request = format!("{head}Host: {addr}\r\nContent-Length: 1000000000\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let read = async {
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // The answer is complete once its head and its Content-Length bytes are in.
            if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&received[..end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                if received.len() >= end + 4 + length {
                    return received;
                }
            }
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed without an answer: {received:?}");
            received.extend_from_slice(&buf[..n]);
        }
    };
    let received = tokio::time::timeout(deadline, read)
        .await
        .unwrap_or_else(|_| panic!("no answer within {deadline:?} to {head:?}"));
    let text = String::from_utf8(received).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_content_length_over_the_limit_is_refused_before_the_body_arrives() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    // A generous bound: today the bus waits for the body until a timeout.
    let deadline = Duration::from_secs(2);
    for (head, code) in [
        (
            format!(
                "POST /v1/buses/default/events HTTP/1.1\r\nAuthorization: Bearer {key}\r\n\
                 Content-Type: application/cloudevents+json\r\n"
            ),
            "event_too_large",
        ),
        (
            format!(
                "POST /v1/events HTTP/1.1\r\nAuthorization: Bearer {key}\r\n\
                 Content-Type: application/json\r\n"
            ),
            "event_too_large",
        ),
        (
            format!(
                "PUT /v1/plugins/big HTTP/1.1\r\nAuthorization: Bearer {key}\r\n\
                 Content-Type: application/wasm\r\n"
            ),
            "too_large",
        ),
        // Routes without their own limit have axum's default one.
        (
            format!(
                "PUT /v1/buses/default/rules/r HTTP/1.1\r\nAuthorization: Bearer {key}\r\n\
                 Content-Type: application/json\r\n"
            ),
            "too_large",
        ),
    ] {
        let (status, body) = announce_huge_body(&bus, &head, deadline).await;
        assert_eq!(status, 413, "{head}: {body}");
        assert_eq!(body["error"]["code"], code, "{head}: {body}");
        assert_eq!(body["error"]["field"], "body", "{head}: {body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    // A body within the limit is still read and handled.
    bus.send(&key, "default", event("fits", "s", json!({"n": 1})))
        .await;
}

#[tokio::test]
async fn the_authorization_scheme_is_case_insensitive() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    for header in [
        format!("bearer {key}"),
        format!("BEARER {key}"),
        format!("BeArEr   {key}"),
    ] {
        let resp = bus
            .client
            .get(format!("{}/v1/buses", bus.url))
            .header("authorization", &header)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{header}");
    }
    for header in [format!("Basic {key}"), format!("Bearer{key}"), key.clone()] {
        let resp = bus
            .client
            .get(format!("{}/v1/buses", bus.url))
            .header("authorization", &header)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{header}");
    }
}

#[tokio::test]
async fn events_with_a_repeated_member_are_refused() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    let twice = r#"{"specversion": "1.0", "id": "a", "source": "/s", "type": "t", "id": "b"}"#;
    let (status, body) = bus
        .raw(&key, "default", "application/cloudevents+json", twice, &[])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "duplicate_member", "{body}");
    assert_eq!(body["error"]["field"], "id", "{body}");

    let batch = format!(r#"[{}, {twice}]"#, event("ok-1", "/s", json!({})));
    let (status, body) = bus
        .raw(
            &key,
            "default",
            "application/cloudevents-batch+json",
            batch,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["ids"], json!(["ok-1"]), "{body}");
    assert_eq!(body["failed_count"], 1, "{body}");
    assert_eq!(body["results"][1]["error"]["code"], "duplicate_member");
    assert_eq!(body["results"][1]["error"]["field"], "[1].id");

    let put = r#"{"Entries": [{"Source": "s", "DetailType": "t", "Detail": "{}", "Source": "x"}, {"Source": "s", "DetailType": "t", "Detail": "{}"}]}"#;
    let resp = bus
        .client
        .post(format!("{}/v1/events", bus.url))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(put)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["FailedEntryCount"], 1, "{body}");
    assert_eq!(body["Entries"][0]["ErrorCode"], "InvalidArgument", "{body}");
    assert!(
        body["Entries"][0]["ErrorMessage"]
            .as_str()
            .unwrap()
            .contains("Entries[0].Source"),
        "{body}"
    );
    assert!(body["Entries"][1]["EventId"].is_string(), "{body}");
}

#[tokio::test]
async fn the_pattern_tester_takes_a_named_rule_set() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    let (status, body) = bus
        .call(
            Method::POST,
            "/v1/patterns/test",
            &key,
            Some(json!({
                "patterns": {
                    "big": {"detail": {"total": [{"numeric": [">", 100]}]}},
                    "shop": {"source": ["shop"]},
                    "other": {"source": ["other"]},
                    "ip": {"data": {"ip": ["2001:db8::1"]}}
                },
                "event": {"source": "shop", "data": {"total": 250, "ip": "2001:0DB8::1"}}
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"matched": ["big", "ip", "shop"]}));

    let (status, body) = bus
        .call(
            Method::POST,
            "/v1/patterns/test",
            &key,
            Some(json!({
                "patterns": {"fine": {"a": [1]}, "broken": {"a": [{"anything-but": {"prefix": ""}}]}},
                "event": {}
            })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_pattern", "{body}");
    assert_eq!(
        body["error"]["field"], "patterns.broken.a[0].anything-but.prefix",
        "{body}"
    );

    for (request, field) in [
        (
            json!({"pattern": {"a": [1]}, "patterns": {"x": {"a": [1]}}, "event": {}}),
            "patterns",
        ),
        (json!({"patterns": {}, "event": {}}), "patterns"),
        (json!({"event": {}}), "pattern"),
    ] {
        let (status, body) = bus
            .call(Method::POST, "/v1/patterns/test", &key, Some(request))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["field"], field, "{body}");
    }
}

#[tokio::test]
async fn the_transform_tester_takes_the_rule_context_and_refuses_invalid_json() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    let (status, body) = bus
        .call(
            Method::POST,
            "/v1/transforms/test",
            &key,
            Some(json!({
                "event": {"data": {"id": "o-1"}},
                "rule_name": "orders",
                "rule_arn": "arn:aws:events:eu-west-1:123456789012:rule/orders",
                "ingestion_time": "2026-01-02T03:04:05Z",
                "input_paths_map": {"id": "$.data.id"},
                "input_template": "{\"id\": <id>, \"rule\": <aws.events.rule-name>, \"arn\": <aws.events.rule-arn>, \"at\": \"<aws.events.event.ingestion-time>\"}"
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let output: Value = serde_json::from_str(body["output"].as_str().unwrap()).unwrap();
    assert_eq!(
        output,
        json!({"id": "o-1", "rule": "orders", "arn": "arn:aws:events:eu-west-1:123456789012:rule/orders", "at": "2026-01-02T03:04:05Z"})
    );

    let (status, body) = bus
        .call(
            Method::POST,
            "/v1/transforms/test",
            &key,
            Some(json!({"event": {}, "ingestion_time": "soon", "input": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "ingestion_time", "{body}");

    let (status, body) = bus
        .call(
            Method::POST,
            "/v1/transforms/test",
            &key,
            Some(json!({
                "event": {"data": {"customer": {"id": "c-1"}}},
                "input_paths_map": {"cust": "$.data.customer"},
                "input_template": "{\"customer\": \"<cust>\"}"
            })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "transform_invalid_json", "{body}");
    assert_eq!(body["error"]["field"], "input_template", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("<cust> at line 1, column 15"),
        "{body}"
    );
}

#[tokio::test]
async fn a_transform_whose_output_is_not_json_is_dead_lettered_with_its_reason() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    bus.put(&key, "/v1/queues/out", json!({})).await;
    bus.put(
        &key,
        "/v1/buses/default/rules/r",
        json!({
            "pattern": {"source": ["shop"]},
            "transform": {"input_paths_map": {"cust": "$.data.customer"},
                          "input_template": "{\"customer\": \"<cust>\"}"},
            "targets": [{"id": "q", "type": "queue", "queue": "out"}]
        }),
    )
    .await;
    bus.send(
        &key,
        "default",
        event("o-1", "shop", json!({"customer": {"id": "c-1"}})),
    )
    .await;
    let entry = wait_for("a dead letter", Duration::from_secs(10), || async {
        let (_, dlq) = bus.call(Method::GET, "/v1/dlq?rule=r", &key, None).await;
        dlq["items"]
            .as_array()
            .and_then(|items| items.first().cloned())
    })
    .await;
    assert_eq!(entry["event"]["id"], "o-1", "{entry}");
    assert_eq!(entry["error_code"], "transform_invalid_json", "{entry}");
    assert!(
        entry["error_message"]
            .as_str()
            .unwrap()
            .contains("<cust> at line 1, column 15"),
        "{entry}"
    );
}

crate::also_on_nats!(a_transform_whose_output_is_not_json_is_dead_lettered_with_its_reason);
