//! The ingest door end to end: schemas enforced, warned about or only
//! registered in every ingest mode (structured, binary, batch, PutEvents),
//! schema versions, compatibility, discovery and promotion, and
//! deduplication (sequential, concurrent, across a restart, and after the
//! window on a controlled clock).

use crate::support::*;
use busbar::clock::{Clock, ManualClock};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// An order event on source `shop`, type `order.created`.
fn order(id: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "shop", "type": "order.created",
           "datacontenttype": "application/json", "data": data})
}

fn order_schema(mode: &str) -> Value {
    json!({
        "source": "shop", "type": "order.created", "mode": mode,
        "schema": {
            "type": "object",
            "required": ["id", "items"],
            "properties": {
                "id": {"type": "string"},
                "items": {"type": "array", "items": {
                    "type": "object", "required": ["sku", "price"],
                    "properties": {"sku": {"type": "string"}, "price": {"type": "number", "minimum": 0}}
                }}
            }
        }
    })
}

/// Two problems: `items[2].price` is a string, `id` is missing.
fn bad_data() -> Value {
    json!({"items": [{"sku": "a", "price": 1}, {"sku": "b", "price": 2}, {"sku": "c", "price": "free"}]})
}

fn good_data() -> Value {
    json!({"id": "o-1", "items": [{"sku": "a", "price": 1}]})
}

/// A queue `q` that receives everything sent to `bus`.
async fn capture(bus: &TestBus, key: &str, on: &str) {
    bus.put(key, "/v1/queues/q", json!({})).await;
    bus.put(
        key,
        &format!("/v1/buses/{on}/rules/all"),
        json!({"pattern": {"id": [{"exists": true}]}, "targets": [{"id": "q", "type": "queue", "queue": "q"}]}),
    )
    .await;
}

async fn put_events(bus: &TestBus, key: &str, entries: Value) -> Value {
    let (status, body) = bus
        .call(
            Method::POST,
            "/v1/events",
            key,
            Some(json!({ "Entries": entries })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn paths(violations: &Value) -> Vec<String> {
    let mut out: Vec<String> = violations
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["path"].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn enforce_warn_and_off_in_every_ingest_mode_with_versions_taking_effect_at_once() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    capture(&bus, &key, "default").await;
    let (status, body) = bus
        .call(
            Method::PUT,
            "/v1/buses/default/schemas/orders",
            &key,
            Some(order_schema("enforce")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (body["name"].clone(), body["version"].clone()),
        (json!("orders"), json!(1))
    );

    // Structured: refused with every violation and its path into the event.
    let (status, body) = bus
        .raw(
            &key,
            "default",
            "application/cloudevents+json",
            order("s1", bad_data()).to_string(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let error = &body["error"];
    assert_eq!(error["code"], "schema_violation");
    assert_eq!(
        paths(&error["violations"]),
        ["data.id", "data.items[2].price"]
    );
    let keywords: Vec<&str> = error["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["keyword"].as_str().unwrap())
        .collect();
    assert!(
        keywords.contains(&"required") && keywords.contains(&"type"),
        "{keywords:?}"
    );
    assert_eq!(error["schema"], "orders@1");
    assert!(error["field"].is_string());

    // Binary mode.
    let (status, body) = bus
        .raw(
            &key,
            "default",
            "application/json",
            bad_data().to_string(),
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "b1"),
                ("ce-source", "shop"),
                ("ce-type", "order.created"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        paths(&body["error"]["violations"]),
        ["data.id", "data.items[2].price"]
    );
    let (status, body) = bus
        .raw(
            &key,
            "default",
            "application/json",
            good_data().to_string(),
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "b2"),
                ("ce-source", "shop"),
                ("ce-type", "order.created"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    // A batch: only the bad entry fails, with the same violations; an event
    // of another type is not checked.
    let other = json!({"specversion": "1.0", "id": "x1", "source": "shop", "type": "order.paid", "data": 1});
    let batch = json!([order("c1", good_data()), order("c2", bad_data()), other]);
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
    assert_eq!(body["ids"], json!(["c1", "x1"]));
    assert_eq!(body["results"][1]["error"]["code"], "schema_violation");
    assert_eq!(
        paths(&body["results"][1]["error"]["violations"]),
        ["data.id", "data.items[2].price"]
    );

    // PutEvents: per entry, with its own error code.
    let body = put_events(
        &bus,
        &key,
        json!([
            {"Source": "shop", "DetailType": "order.created", "Detail": good_data().to_string()},
            {"Source": "shop", "DetailType": "order.created", "Detail": bad_data().to_string()}
        ]),
    )
    .await;
    assert_eq!(body["FailedEntryCount"], 1, "{body}");
    assert!(body["Entries"][0]["EventId"].is_string());
    assert_eq!(body["Entries"][1]["ErrorCode"], "SchemaViolation");
    assert_eq!(
        paths(&body["Entries"][1]["Violations"]),
        ["data.id", "data.items[2].price"]
    );

    // Version 2 in warn mode applies from the very next event: accepted and tagged.
    let (status, body) = bus
        .call(
            Method::PUT,
            "/v1/buses/default/schemas/orders",
            &key,
            Some(order_schema("warn")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 2);
    bus.send(&key, "default", order("w1", bad_data())).await;
    // Off: registered only.
    bus.put(
        &key,
        "/v1/buses/default/schemas/orders",
        order_schema("off"),
    )
    .await;
    bus.send(&key, "default", order("f1", bad_data())).await;

    let got = bus.drain(&key, "q", 6).await;
    let by_id = |id: &str| {
        got.iter()
            .find(|e| e["id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let ids: Vec<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(got.len(), 6, "{ids:?}");
    for id in ["b2", "c1", "x1", "w1", "f1"] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    let tag = by_id("w1")["schemaviolation"].as_str().unwrap().to_owned();
    assert!(tag.starts_with("orders@2: data."), "{tag}");
    assert!(by_id("f1").get("schemaviolation").is_none());
    assert!(by_id("c1").get("schemaviolation").is_none());

    // Versions are listed and read; the count is in /metrics per schema.
    let (_, detail) = bus
        .call(Method::GET, "/v1/buses/default/schemas/orders", &key, None)
        .await;
    assert_eq!(detail["version"], 3);
    assert_eq!(detail["mode"], "off");
    let modes: Vec<&str> = detail["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["enforce", "warn", "off"]);
    let (status, v1) = bus
        .call(
            Method::GET,
            "/v1/buses/default/schemas/orders/versions/1",
            &key,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v1["schema"], order_schema("enforce")["schema"]);
    let (_, listed) = bus
        .call(Method::GET, "/v1/buses/default/schemas", &key, None)
        .await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    let metrics = bus.metrics().await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("busbar_schema_violations_total")
                && l.contains("schema=\"orders\"")
                && l.contains("mode=\"warn\"")
        })
        .unwrap_or_else(|| panic!("no warn counter in {metrics}"));
    assert!(line.ends_with(" 1"), "{line}");

    // Deleted: nothing is checked any more; another tenant never sees it.
    let other_key = bus.tenant("other").await;
    let (status, _) = bus
        .call(
            Method::GET,
            "/v1/buses/default/schemas/orders",
            &other_key,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = bus
        .call(
            Method::DELETE,
            "/v1/buses/default/schemas/orders",
            &key,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = bus
        .call(Method::GET, "/v1/buses/default/schemas/orders", &key, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_schemas_are_refused_with_the_place_and_incompatible_versions_with_every_change() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    let (status, body) = bus
        .call(
            Method::PUT,
            "/v1/buses/default/schemas/s",
            &key,
            Some(json!({"source": "shop", "type": "t", "schema": {"properties": {"total": {"type": "decimal"}}}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_schema");
    assert_eq!(
        body["error"]["field"], "schema.properties.total.type",
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("decimal"),
        "{body}"
    );

    let v1 = json!({"source": "shop", "type": "t", "compatibility": "backward",
                    "schema": {"type": "object", "properties": {"total": {"type": "number"}, "state": {"enum": ["a", "b"]}}}});
    bus.put(&key, "/v1/buses/default/schemas/s", v1).await;
    let v2 = json!({"source": "shop", "type": "t",
                    "schema": {"type": "object", "required": ["total"],
                               "properties": {"total": {"type": "string"}, "state": {"enum": ["a"]}}}});
    let (status, body) = bus
        .call(Method::PUT, "/v1/buses/default/schemas/s", &key, Some(v2))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "incompatible_schema");
    let mut fields: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "schema.properties.state.enum",
            "schema.properties.total.type",
            "schema.required"
        ]
    );
    // A compatible change (a new optional property, a wider enum) passes.
    let v2 = json!({"source": "shop", "type": "t",
                    "schema": {"type": "object", "properties": {"total": {"type": "number"}, "state": {"enum": ["a", "b", "c"]}, "note": {}}}});
    let (status, body) = bus
        .call(Method::PUT, "/v1/buses/default/schemas/s", &key, Some(v2))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 2);
    // Two schemas cannot select the same events.
    let (status, body) = bus
        .call(
            Method::PUT,
            "/v1/buses/default/schemas/dup",
            &key,
            Some(json!({"source": "shop", "type": "t", "schema": {}})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[tokio::test]
async fn discovery_infers_a_schema_the_same_events_validate_against_and_promotion_registers_it() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    bus.put(&key, "/v1/buses/orders", json!({"schema_discovery": true}))
        .await;
    let events: Vec<Value> = (0..12)
        .map(|i| {
            let status = ["new", "paid", "shipped"][i % 3];
            let mut data = json!({
                "order_id": format!("123e4567-e89b-12d3-a456-4266141740{i:02}"),
                "placed": format!("2026-03-{:02}T10:00:00Z", i + 1),
                "status": status,
                "total": if i % 2 == 0 { json!(i * 10) } else { json!(i as f64 + 0.5) },
                "lines": (0..(i % 3)).map(|n| json!({"sku": format!("s{n}"), "qty": n})).collect::<Vec<_>>(),
            });
            if i % 4 == 0 {
                data["coupon"] = json!("SPRING");
            }
            order(&format!("d{i}"), data)
        })
        .collect();
    for e in &events {
        bus.send(&key, "orders", e.clone()).await;
    }
    let (status, body) = bus
        .call(
            Method::GET,
            "/v1/buses/orders/discovered-schemas",
            &key,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{body}");
    let found = &items[0];
    assert_eq!(
        (
            found["source"].clone(),
            found["type"].clone(),
            found["events"].clone()
        ),
        (json!("shop"), json!("order.created"), json!(12))
    );
    let schema = &found["schema"];
    assert_eq!(
        schema["required"],
        json!(["lines", "order_id", "placed", "status", "total"])
    );
    assert_eq!(schema["properties"]["order_id"]["format"], "uuid");
    assert_eq!(schema["properties"]["placed"]["format"], "date-time");
    assert_eq!(
        schema["properties"]["status"]["enum"],
        json!(["new", "paid", "shipped"])
    );
    assert_eq!(schema["properties"]["total"]["type"], "number");

    // Promoted in enforce mode: the same events (new ids) all pass; a
    // payload outside what was seen does not.
    let (status, body) = bus
        .call(Method::POST, "/v1/buses/orders/discovered-schemas/promote", &key,
              Some(json!({"source": "shop", "type": "order.created", "name": "orders", "mode": "enforce"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["schema"], *schema);
    for e in &events {
        let mut again = e.clone();
        again["id"] = json!(format!("{}-again", e["id"].as_str().unwrap()));
        bus.send(&key, "orders", again).await;
    }
    let mut odd = events[1].clone();
    odd["id"] = json!("odd");
    odd["data"]["status"] = json!("lost");
    odd["data"]["placed"] = json!("yesterday");
    let (status, body) = bus
        .raw(
            &key,
            "orders",
            "application/cloudevents+json",
            odd.to_string(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        paths(&body["error"]["violations"]),
        ["data.placed", "data.status"]
    );
    let (_, body) = bus
        .call(
            Method::GET,
            "/v1/buses/orders/discovered-schemas",
            &key,
            None,
        )
        .await;
    assert_eq!(
        body["items"][0]["events"], 24,
        "accepted events keep being counted"
    );
}

/// Sends one structured event; returns the answer.
async fn send(bus: &TestBus, key: &str, on: &str, event: &Value) -> Value {
    let (status, body) = bus
        .raw(
            key,
            on,
            "application/cloudevents+json",
            event.to_string(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body
}

async fn queue_depth(bus: &TestBus, key: &str) -> u64 {
    let (_, q) = bus.call(Method::GET, "/v1/queues/q", key, None).await;
    q["depth"].as_u64().unwrap()
}

#[tokio::test]
async fn duplicates_inside_the_window_are_acknowledged_and_not_routed_even_concurrently_and_after_a_restart()
 {
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(dir.path());
    let clock = Arc::new(ManualClock::new(busbar::clock::SystemClock.now_ms()));
    let bus = TestBus::start_with_clock(dir, config.clone(), clock.clone()).await;
    let key = bus.tenant("acme").await;
    bus.put(&key, "/v1/buses/default", json!({"dedup_window_s": 300}))
        .await;
    capture(&bus, &key, "default").await;

    let e1 = order("e1", good_data());
    let first = send(&bus, &key, "default", &e1).await;
    assert!(first.get("duplicates").is_none(), "{first}");
    let again = send(&bus, &key, "default", &e1).await;
    assert_eq!(again["ids"], json!(["e1"]));
    assert_eq!(again["duplicates"], json!(["e1"]));
    // Same id from another source is another event; in a batch, the second copy is the duplicate.
    let mut other_source = e1.clone();
    other_source["source"] = json!("till");
    send(&bus, &key, "default", &other_source).await;
    let batch = json!([
        order("e2", good_data()),
        order("e2", good_data()),
        order("e1", good_data())
    ]);
    let (_, body) = bus
        .raw(
            &key,
            "default",
            "application/cloudevents-batch+json",
            batch.to_string(),
            &[],
        )
        .await;
    assert_eq!(body["duplicates"], json!(["e2", "e1"]), "{body}");
    assert_eq!(body["failed_count"], 0);
    // PutEvents: entries are marked.
    let entry = json!({"Source": "shop", "DetailType": "order.created", "Detail": "{}"});
    let body = put_events(&bus, &key, json!([entry])).await;
    assert!(
        body.get("duplicates").is_none(),
        "PutEvents ids are new each time: {body}"
    );

    // Twenty senders at once with one id: every one is acknowledged, one copy goes in.
    let racer = order("race", good_data());
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (client, url, key, racer) = (
            bus.client.clone(),
            bus.url.clone(),
            key.clone(),
            racer.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(format!("{url}/v1/buses/default/events"))
                .bearer_auth(&key)
                .header("content-type", "application/cloudevents+json")
                .body(racer.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 202);
            let body: Value = r.json().await.unwrap();
            body.get("duplicates").is_none()
        }));
    }
    let mut stored = 0;
    for t in tasks {
        stored += usize::from(t.await.unwrap());
    }
    assert_eq!(stored, 1, "exactly one of the racing sends was stored");
    // e1, e1 from till, e2, the PutEvents entry, race.
    wait_for("five events routed", Duration::from_secs(20), || async {
        (queue_depth(&bus, &key).await == 5).then_some(())
    })
    .await;

    // Across a restart the window still holds.
    let dir = bus.stop().await;
    let bus = TestBus::start_with_clock(dir, config.clone(), clock.clone()).await;
    let body = send(&bus, &key, "default", &e1).await;
    assert_eq!(body["duplicates"], json!(["e1"]));
    clock.advance(299_000);
    let body = send(&bus, &key, "default", &e1).await;
    assert_eq!(body["duplicates"], json!(["e1"]), "still inside the window");
    // After the window, accepted (and routed) again.
    clock.advance(1_000);
    let body = send(&bus, &key, "default", &e1).await;
    assert!(body.get("duplicates").is_none(), "{body}");
    let body = send(&bus, &key, "default", &racer).await;
    assert!(body.get("duplicates").is_none(), "{body}");
    wait_for("seven events routed", Duration::from_secs(20), || async {
        (queue_depth(&bus, &key).await == 7).then_some(())
    })
    .await;
    let metrics = bus.metrics().await;
    assert!(
        metrics.contains("busbar_events_duplicate_total"),
        "{metrics}"
    );

    // Window 0 turns it off; out-of-range windows are refused.
    bus.put(&key, "/v1/buses/default", json!({"dedup_window_s": 0}))
        .await;
    let body = send(&bus, &key, "default", &e1).await;
    assert!(body.get("duplicates").is_none(), "{body}");
    let (status, body) = bus
        .call(
            Method::PUT,
            "/v1/buses/default",
            &key,
            Some(json!({"dedup_window_s": 86_401})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "dedup_window_s");
}

// `enforce_warn_and_off_in_every_ingest_mode_with_versions_taking_effect_at_once`
// stays on SQLite: its metric counter is process-wide, so a NATS run beside
// it in the same test binary would count twice.
crate::also_on_nats!(
    bad_schemas_are_refused_with_the_place_and_incompatible_versions_with_every_change,
    discovery_infers_a_schema_the_same_events_validate_against_and_promotion_registers_it,
    duplicates_inside_the_window_are_acknowledged_and_not_routed_even_concurrently_and_after_a_restart,
);
