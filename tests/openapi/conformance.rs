//! The bus answers as documented: a scenario drives every operation of the
//! OpenAPI document through successes and failures on a real server, and
//! each answer's status must be documented for its operation and its body
//! must fit the documented schema.

use super::schema::Checker;
use super::served_document;
use crate::support::guests::guest_bytes;
use crate::support::{ADMIN_KEY, TestBus};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// Guests the scenario uploads.
pub const TESTED: &[&str] = &["amount-filter", "splitter", "signed-webhook", "panic"];

/// A request body.
enum Body {
    None,
    Json(Value),
    Raw {
        content_type: Option<&'static str>,
        body: Vec<u8>,
        headers: Vec<(&'static str, &'static str)>,
    },
}

struct Conformance {
    bus: TestBus,
    doc: Value,
    /// (path template, method) of every operation called.
    called: BTreeSet<(String, String)>,
}

impl Conformance {
    /// The documented path template a concrete path belongs to; static
    /// segments win over placeholders, as in the router.
    fn template(&self, path: &str) -> String {
        let segments: Vec<&str> = path.split('/').collect();
        let mut best: Option<(usize, &String)> = None;
        for template in self.doc["paths"].as_object().unwrap().keys() {
            let parts: Vec<&str> = template.split('/').collect();
            let fits = parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| t.starts_with('{') || t == s);
            let placeholders = template.matches('{').count();
            if fits && best.is_none_or(|(p, _)| placeholders < p) {
                best = Some((placeholders, template));
            }
        }
        best.unwrap_or_else(|| panic!("{path} is not documented"))
            .1
            .clone()
    }

    /// Sends a request and checks the answer against the document.
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Body,
    ) -> (StatusCode, Value) {
        let mut req = self
            .bus
            .client
            .request(method.clone(), format!("{}{path}", self.bus.url));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        req = match body {
            Body::None => req,
            Body::Json(v) => req
                .header("content-type", "application/json")
                .body(v.to_string()),
            Body::Raw {
                content_type,
                body,
                headers,
            } => {
                if let Some(ct) = content_type {
                    req = req.header("content-type", ct);
                }
                for (k, v) in headers {
                    req = req.header(k, v);
                }
                req.body(body)
            }
        };
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = resp.text().await.unwrap();

        let template = self.template(path.split('?').next().unwrap());
        let here = format!("{method} {path} answered {status}");
        let op = &self.doc["paths"][&template][method.as_str().to_lowercase()];
        assert!(op.is_object(), "{method} {template} is not documented");
        self.called.insert((template, method.to_string()));
        let documented = &op["responses"][status.as_str()];
        assert!(
            documented.is_object(),
            "{here}, which is not documented: {text}"
        );
        let documented = super::resolve(&self.doc, documented);
        let Some(content) = documented["content"].as_object() else {
            assert!(
                text.is_empty(),
                "{here} with a body where none is documented"
            );
            return (status, Value::Null);
        };
        let (media, media_object) = content.iter().next().unwrap();
        let content_type = content_type.unwrap_or_default();
        assert!(
            content_type.starts_with(media.split(';').next().unwrap()),
            "{here} as {content_type}; documented {media}"
        );
        if media != "application/json" {
            return (status, Value::String(text));
        }
        let value: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{here}: {e}: {text}"));
        let errors = Checker::new(&self.doc).errors(&media_object["schema"], &value);
        assert!(
            errors.is_empty(),
            "{here}: {value}\ndoes not fit the documented schema: {errors:#?}"
        );
        (status, value)
    }
}

fn json(v: Value) -> Body {
    Body::Json(v)
}

fn raw(content_type: Option<&'static str>, body: impl Into<Vec<u8>>) -> Body {
    Body::Raw {
        content_type,
        body: body.into(),
        headers: Vec::new(),
    }
}

fn event(id: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "shop.orders", "type": "OrderPlaced",
           "datacontenttype": "application/json", "data": {"id": 1, "total": 250}})
}

#[tokio::test]
async fn every_answer_is_documented() {
    let bus = TestBus::start().await;
    let doc = served_document(&bus).await;
    let mut c = Conformance {
        bus,
        doc,
        called: BTreeSet::new(),
    };
    let admin = Some(ADMIN_KEY);
    use Method as M;
    use StatusCode as S;

    // Operations.
    for path in ["/healthz", "/readyz", "/metrics", "/v1/openapi.json"] {
        assert_eq!(c.call(M::GET, path, None, Body::None).await.0, S::OK);
    }

    // Admin.
    let (status, created) = c
        .call(
            M::POST,
            "/v1/admin/tenants",
            admin,
            json(json!({"name": "acme"})),
        )
        .await;
    assert_eq!(status, S::CREATED);
    let key_string = created["api_key"].as_str().unwrap().to_owned();
    let key = Some(key_string.as_str());
    for (who, body, expected) in [
        (admin, json!({"name": "acme"}), S::CONFLICT),
        (admin, json!({"name": ".bad"}), S::BAD_REQUEST),
        (admin, json!({"nom": "x"}), S::BAD_REQUEST),
        (key, json!({"name": "x"}), S::FORBIDDEN),
        (Some("nope"), json!({"name": "x"}), S::UNAUTHORIZED),
        (None, json!({"name": "x"}), S::UNAUTHORIZED),
    ] {
        assert_eq!(
            c.call(M::POST, "/v1/admin/tenants", who, json(body))
                .await
                .0,
            expected
        );
    }
    assert_eq!(
        c.call(M::POST, "/v1/admin/tenants", admin, raw(None, ""))
            .await
            .0,
        S::BAD_REQUEST
    );
    assert_eq!(
        c.call(M::GET, "/v1/admin/tenants", admin, Body::None)
            .await
            .0,
        S::OK
    );
    let (status, new_key) = c
        .call(M::POST, "/v1/admin/tenants/acme/keys", admin, Body::None)
        .await;
    assert_eq!(status, S::CREATED);
    let revoke = format!(
        "/v1/admin/tenants/acme/keys/{}",
        new_key["key_id"].as_str().unwrap()
    );
    assert_eq!(
        c.call(M::DELETE, &revoke, admin, Body::None).await.0,
        S::NO_CONTENT
    );
    assert_eq!(
        c.call(M::DELETE, &revoke, admin, Body::None).await.0,
        S::NOT_FOUND
    );
    assert_eq!(
        c.call(M::POST, "/v1/admin/tenants/nobody/keys", admin, Body::None)
            .await
            .0,
        S::NOT_FOUND
    );

    // Plugin limits.
    let limits = "/v1/admin/tenants/acme/plugin-limits";
    let example = c.doc["paths"]["/v1/admin/tenants/{tenant}/plugin-limits"]["put"]["requestBody"]
        ["content"]["application/json"]["examples"]["tighter_filters"]["value"]
        .clone();
    for (who, body, expected) in [
        (admin, example, S::OK),
        (admin, json!({"all": {"cpu_ms": 0}}), S::BAD_REQUEST),
        (key, json!({}), S::FORBIDDEN),
    ] {
        assert_eq!(c.call(M::PUT, limits, who, json(body)).await.0, expected);
    }
    assert_eq!(c.call(M::GET, limits, admin, Body::None).await.0, S::OK);
    assert_eq!(
        c.call(M::GET, "/v1/plugin-limits", key, Body::None).await.0,
        S::OK
    );
    assert_eq!(
        c.call(M::GET, "/v1/plugin-limits", admin, Body::None)
            .await
            .0,
        S::FORBIDDEN
    );
    assert_eq!(
        c.call(
            M::GET,
            "/v1/admin/tenants/nobody/plugin-limits",
            admin,
            Body::None
        )
        .await
        .0,
        S::NOT_FOUND
    );
    assert_eq!(
        c.call(M::DELETE, limits, admin, Body::None).await.0,
        S::NO_CONTENT
    );

    // Buses and queues.
    assert_eq!(c.call(M::GET, "/v1/buses", key, Body::None).await.0, S::OK);
    assert_eq!(
        c.call(M::GET, "/v1/buses", admin, Body::None).await.0,
        S::FORBIDDEN
    );
    assert_eq!(
        c.call(
            M::PUT,
            "/v1/buses/orders",
            key,
            json(json!({"description": "shop"}))
        )
        .await
        .0,
        S::CREATED
    );
    assert_eq!(
        c.call(M::PUT, "/v1/buses/orders", key, raw(None, ""))
            .await
            .0,
        S::OK
    );
    assert_eq!(
        c.call(M::PUT, "/v1/buses/x", key, json(json!({"colour": 1})))
            .await
            .0,
        S::BAD_REQUEST
    );
    assert_eq!(
        c.call(M::PUT, "/v1/buses/.x", key, json(json!({}))).await.0,
        S::BAD_REQUEST
    );
    assert_eq!(
        c.call(M::GET, "/v1/buses/orders", key, Body::None).await.0,
        S::OK
    );
    assert_eq!(
        c.call(M::GET, "/v1/buses/none", key, Body::None).await.0,
        S::NOT_FOUND
    );
    assert_eq!(
        c.call(M::PUT, "/v1/queues/audit", key, json(json!({})))
            .await
            .0,
        S::CREATED
    );
    assert_eq!(
        c.call(M::PUT, "/v1/queues/audit", key, raw(None, ""))
            .await
            .0,
        S::OK
    );
    assert_eq!(
        c.call(M::PUT, "/v1/queues/q", key, json(json!([1])))
            .await
            .0,
        S::BAD_REQUEST
    );
    assert_eq!(c.call(M::GET, "/v1/queues", key, Body::None).await.0, S::OK);
    assert_eq!(
        c.call(M::GET, "/v1/queues/audit", key, Body::None).await.0,
        S::OK
    );
    assert_eq!(
        c.call(M::GET, "/v1/queues/none", key, Body::None).await.0,
        S::NOT_FOUND
    );

    // Rules.
    let rule_examples = c.doc["paths"]["/v1/buses/{bus}/rules/{rule}"]["put"]["requestBody"]["content"]
        ["application/json"]["examples"]
        .clone();
    let to_queue = rule_examples["api_md"]["value"].clone();
    assert_eq!(
        c.call(
            M::PUT,
            "/v1/buses/orders/rules/r1",
            key,
            json(to_queue.clone())
        )
        .await
        .0,
        S::CREATED
    );
    assert_eq!(
        c.call(M::PUT, "/v1/buses/orders/rules/r1", key, json(to_queue))
            .await
            .0,
        S::OK
    );
    let to_http = rule_examples["http_target"]["value"].clone();
    assert_eq!(
        c.call(M::PUT, "/v1/buses/orders/rules/r2", key, json(to_http))
            .await
            .0,
        S::CREATED
    );
    let to_bus = json!({"pattern": {"source": ["a"]}, "targets": [{"id": "b", "type": "bus", "bus": "default"}],
                        "transform": {"input_path": "$.data"}, "retry_policy": null,
                        "dead_letter": {"enabled": false}, "filter": null, "description": "d"});
    assert_eq!(
        c.call(M::PUT, "/v1/buses/orders/rules/r3", key, json(to_bus))
            .await
            .0,
        S::CREATED
    );
    let invalid = json!({"pattern": 1, "targets": [{"id": "x", "type": "wasm", "plugin": "p"}],
                         "filter": "f@1", "retry_policy": {"max_attempts": 0}});
    let (status, body) = c
        .call(M::PUT, "/v1/buses/orders/rules/r4", key, json(invalid))
        .await;
    assert_eq!(status, S::BAD_REQUEST);
    assert_eq!(
        body["error"]["details"].as_array().unwrap().len(),
        4,
        "{body}"
    );
    let missing_queue = json!({"pattern": {"source": ["a"]}, "targets": [{"id": "x", "type": "queue", "queue": "nope"}]});
    assert_eq!(
        c.call(
            M::PUT,
            "/v1/buses/orders/rules/r4",
            key,
            json(missing_queue)
        )
        .await
        .0,
        S::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        c.call(
            M::PUT,
            "/v1/buses/orders/rules/r4",
            key,
            raw(Some("application/json"), "{")
        )
        .await
        .0,
        S::BAD_REQUEST
    );
    assert_eq!(
        c.call(M::PUT, "/v1/buses/nobus/rules/r4", key, json(json!({})))
            .await
            .0,
        S::NOT_FOUND
    );
    assert_eq!(
        c.call(M::GET, "/v1/buses/orders/rules", key, Body::None)
            .await
            .0,
        S::OK
    );
    assert_eq!(
        c.call(M::GET, "/v1/buses/nobus/rules", key, Body::None)
            .await
            .0,
        S::NOT_FOUND
    );
    assert_eq!(
        c.call(M::GET, "/v1/buses/orders/rules/r2", key, Body::None)
            .await
            .0,
        S::OK
    );
    assert_eq!(
        c.call(M::GET, "/v1/buses/orders/rules/zz", key, Body::None)
            .await
            .0,
        S::NOT_FOUND
    );
    assert_eq!(
        c.call(M::DELETE, "/v1/buses/default", key, Body::None)
            .await
            .0,
        S::CONFLICT
    );
    assert_eq!(
        c.call(M::DELETE, "/v1/queues/audit", key, Body::None)
            .await
            .0,
        S::CONFLICT
    );

    // Events in.
    let events = "/v1/buses/orders/events";
    let structured = event("e1").to_string();
    assert_eq!(
        c.call(
            M::POST,
            events,
            key,
            raw(Some("application/cloudevents+json"), structured.clone())
        )
        .await
        .0,
        S::ACCEPTED
    );
    let batch = json!([event("e2"), {"specversion": "1.0", "id": "x", "type": "t"}, 5]).to_string();
    let (status, body) = c
        .call(
            M::POST,
            events,
            key,
            raw(Some("application/cloudevents-batch+json"), batch),
        )
        .await;
    assert_eq!((status, &body["failed_count"]), (S::ACCEPTED, &json!(2)));
    let binary = Body::Raw {
        content_type: Some("application/json"),
        body: br#"{"id": 2, "total": 300}"#.to_vec(),
        headers: vec![
            ("ce-specversion", "1.0"),
            ("ce-id", "b1"),
            ("ce-source", "shop.orders"),
            ("ce-type", "OrderPlaced"),
        ],
    };
    assert_eq!(c.call(M::POST, events, key, binary).await.0, S::ACCEPTED);
    let no_id = Body::Raw {
        content_type: Some("text/plain"),
        body: b"hi".to_vec(),
        headers: vec![
            ("ce-specversion", "1.0"),
            ("ce-source", "s"),
            ("ce-type", "t"),
        ],
    };
    assert_eq!(c.call(M::POST, events, key, no_id).await.0, S::BAD_REQUEST);
    assert_eq!(
        c.call(M::POST, events, key, raw(Some("text/plain"), "hi"))
            .await
            .0,
        S::UNSUPPORTED_MEDIA_TYPE
    );
    let big = json!({"specversion": "1.0", "id": "big", "source": "s", "type": "t", "data": "a".repeat(300_000)});
    assert_eq!(
        c.call(
            M::POST,
            events,
            key,
            raw(Some("application/cloudevents+json"), big.to_string())
        )
        .await
        .0,
        S::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        c.call(
            M::POST,
            "/v1/buses/nobus/events",
            key,
            raw(Some("application/cloudevents+json"), structured.clone())
        )
        .await
        .0,
        S::NOT_FOUND
    );
    assert_eq!(
        c.call(
            M::POST,
            events,
            admin,
            raw(Some("application/cloudevents+json"), structured)
        )
        .await
        .0,
        S::FORBIDDEN
    );
    let entry = json!({"Source": "shop.orders", "DetailType": "OrderPlaced", "Detail": "{\"id\": 3, \"total\": 400}", "EventBusName": "orders"});
    let mixed = json!({"Entries": [entry, {"Source": "s"}, {"Source": "s", "DetailType": "d", "Detail": "[1]"},
                                   {"Source": "s", "DetailType": "d", "Detail": "{}", "EventBusName": "nobus"}]});
    let (status, body) = c.call(M::POST, "/v1/events", key, json(mixed)).await;
    assert_eq!((status, &body["FailedEntryCount"]), (S::OK, &json!(3)));
    assert_eq!(
        c.call(M::POST, "/v1/events", key, json(json!({"Entries": []})))
            .await
            .0,
        S::BAD_REQUEST
    );
    let eleven = json!({"Entries": vec![entry; 11]});
    assert_eq!(
        c.call(M::POST, "/v1/events", key, json(eleven)).await.0,
        S::PAYLOAD_TOO_LARGE
    );

    // Queues: the rule r1 sends big orders to `audit`.
    let receive = "/v1/queues/audit/receive";
    let (status, body) = c
        .call(
            M::POST,
            receive,
            key,
            json(json!({"max_messages": 10, "wait_s": 10})),
        )
        .await;
    assert_eq!(status, S::OK);
    let receipts: Vec<Value> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["receipt"].clone())
        .collect();
    assert!(!receipts.is_empty(), "{body}");
    assert_eq!(c.call(M::POST, receive, key, raw(None, "")).await.0, S::OK);
    assert_eq!(
        c.call(M::POST, receive, key, json(json!({"max_messages": 0})))
            .await
            .0,
        S::BAD_REQUEST
    );
    assert_eq!(
        c.call(M::POST, "/v1/queues/none/receive", key, json(json!({})))
            .await
            .0,
        S::NOT_FOUND
    );
    let (status, body) = c
        .call(
            M::POST,
            "/v1/queues/audit/ack",
            key,
            json(json!({"receipts": [receipts[0], "nope"]})),
        )
        .await;
    assert_eq!((status, &body["acked"]), (S::OK, &json!(1)));
    assert_eq!(
        c.call(M::POST, "/v1/queues/audit/ack", key, json(json!({})))
            .await
            .0,
        S::BAD_REQUEST
    );
    assert_eq!(
        c.call(
            M::POST,
            "/v1/queues/none/ack",
            key,
            json(json!({"receipts": []}))
        )
        .await
        .0,
        S::NOT_FOUND
    );

    // Dead letters.
    assert_eq!(c.call(M::GET, "/v1/dlq", key, Body::None).await.0, S::OK);
    assert_eq!(
        c.call(M::GET, "/v1/dlq?bus=orders&limit=5", key, Body::None)
            .await
            .0,
        S::OK
    );
    assert_eq!(
        c.call(M::GET, "/v1/dlq?colour=red", key, Body::None)
            .await
            .0,
        S::BAD_REQUEST
    );
    assert_eq!(
        c.call(M::GET, "/v1/dlq/abc", key, Body::None).await.0,
        S::BAD_REQUEST
    );
    assert_eq!(
        c.call(M::GET, "/v1/dlq/99", key, Body::None).await.0,
        S::NOT_FOUND
    );
    assert_eq!(
        c.call(M::DELETE, "/v1/dlq/99", key, Body::None).await.0,
        S::NOT_FOUND
    );
    assert_eq!(
        c.call(M::POST, "/v1/dlq/redrive", key, json(json!({"ids": [1]})))
            .await
            .0,
        S::OK
    );
    assert_eq!(
        c.call(M::POST, "/v1/dlq/redrive", key, json(json!({})))
            .await
            .0,
        S::BAD_REQUEST
    );

    // Testers.
    let e = event("t1");
    let pattern = json!({"pattern": {"source": ["shop.orders"]}, "event": e});
    assert_eq!(
        c.call(M::POST, "/v1/patterns/test", key, json(pattern))
            .await
            .0,
        S::OK
    );
    let bad = json!({"pattern": {"source": "x"}, "event": e});
    assert_eq!(
        c.call(M::POST, "/v1/patterns/test", key, json(bad)).await.0,
        S::BAD_REQUEST
    );
    let set = json!({"patterns": {"orders": {"source": ["shop.orders"]}, "other": {"source": ["x"]}}, "event": e});
    assert_eq!(
        c.call(M::POST, "/v1/patterns/test", key, json(set)).await.0,
        S::OK
    );
    let context = json!({"event": e, "rule_name": "r", "ingestion_time": "2026-01-15T10:00:01Z",
                         "input_template": "<aws.events.rule-name> at <aws.events.event.ingestion-time>"});
    assert_eq!(
        c.call(M::POST, "/v1/transforms/test", key, json(context))
            .await
            .0,
        S::OK
    );
    let in_string = json!({"event": e, "input_paths_map": {"d": "$.data"}, "input_template": "{\"d\": \"<d>\"}"});
    assert_eq!(
        c.call(M::POST, "/v1/transforms/test", key, json(in_string))
            .await
            .0,
        S::UNPROCESSABLE_ENTITY
    );
    let template = json!({"event": e, "input_paths_map": {"id": "$.data.id"}, "input_template": "{\"order\": <id>}"});
    assert_eq!(
        c.call(M::POST, "/v1/transforms/test", key, json(template))
            .await
            .0,
        S::OK
    );
    let both = json!({"event": e, "input": {"a": 1}, "input_path": "$"});
    assert_eq!(
        c.call(M::POST, "/v1/transforms/test", key, json(both))
            .await
            .0,
        S::BAD_REQUEST
    );
    let nothing = json!({"event": e, "input_path": "$.nothing"});
    assert_eq!(
        c.call(M::POST, "/v1/transforms/test", key, json(nothing))
            .await
            .0,
        S::UNPROCESSABLE_ENTITY
    );

    // Plugins.
    let wasm = |bytes: Vec<u8>| raw(Some("application/wasm"), bytes);
    let amount = guest_bytes("amount-filter");
    let (status, body) = c
        .call(M::PUT, "/v1/plugins/big-amounts", key, wasm(amount.clone()))
        .await;
    assert_eq!(status, S::CREATED, "{body}");
    assert_eq!(
        (&body["kind"], &body["version"]),
        (&json!("filter"), &json!(1))
    );
    let (status, body) = c
        .call(M::PUT, "/v1/plugins/big-amounts", key, wasm(amount))
        .await;
    assert_eq!((status, &body["version"]), (S::OK, &json!(1)), "same bytes");
    let (status, body) = c
        .call(
            M::PUT,
            "/v1/plugins/big-amounts",
            key,
            wasm(guest_bytes("splitter")),
        )
        .await;
    assert_eq!(status, S::CONFLICT, "another kind: {body}");
    for (name, guest) in [
        ("split-lines", "splitter"),
        ("signed-webhook", "signed-webhook"),
    ] {
        let path = format!("/v1/plugins/{name}");
        let (status, body) = c.call(M::PUT, &path, key, wasm(guest_bytes(guest))).await;
        assert_eq!(status, S::CREATED, "{name}: {body}");
    }
    let (status, body) = c
        .call(M::PUT, "/v1/plugins/junk", key, wasm(b"not wasm".to_vec()))
        .await;
    assert_eq!(status, S::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_plugin");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("not_a_component"), "{message}");
    let (status, body) = c
        .call(
            M::PUT,
            "/v1/plugins/junk",
            key,
            raw(Some("text/plain"), "hi"),
        )
        .await;
    assert_eq!(status, S::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(body["error"]["field"], "Content-Type");
    assert_eq!(
        c.call(M::PUT, "/v1/plugins/.x", key, wasm(b"\0asm".to_vec()))
            .await
            .0,
        S::BAD_REQUEST
    );
    let (status, body) = c.call(M::GET, "/v1/plugins", key, Body::None).await;
    assert_eq!(status, S::OK);
    assert_eq!(body["items"].as_array().unwrap().len(), 3, "{body}");
    let (status, body) = c
        .call(M::GET, "/v1/plugins/big-amounts", key, Body::None)
        .await;
    assert_eq!((status, &body["status"]), (S::OK, &json!("active")));
    assert_eq!(
        c.call(M::GET, "/v1/plugins/none", key, Body::None).await.0,
        S::NOT_FOUND
    );

    // Rules using plugins: the documented example uses all three kinds.
    let with_plugins = rule_examples["plugins"]["value"].clone();
    let (status, body) = c
        .call(M::PUT, "/v1/buses/orders/rules/p1", key, json(with_plugins))
        .await;
    assert_eq!(status, S::CREATED, "{body}");
    assert_eq!(
        c.call(M::GET, "/v1/buses/orders/rules/p1", key, Body::None)
            .await
            .0,
        S::OK
    );
    let by_name = json!({"pattern": {"source": ["a"]}, "filter": "big-amounts",
                         "targets": [{"id": "b", "type": "bus", "bus": "default"}]});
    assert_eq!(
        c.call(M::PUT, "/v1/buses/orders/rules/p2", key, json(by_name))
            .await
            .0,
        S::CREATED
    );
    let wrong_kind = json!({"pattern": {"source": ["a"]}, "filter": "split-lines",
                            "targets": [{"id": "b", "type": "bus", "bus": "default"}]});
    let (status, body) = c
        .call(M::PUT, "/v1/buses/orders/rules/p3", key, json(wrong_kind))
        .await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (S::BAD_REQUEST, &json!("filter"))
    );
    let no_config = json!({"pattern": {"source": ["a"]},
                           "targets": [{"id": "w", "type": "wasm", "plugin": "signed-webhook"}]});
    let (status, body) = c
        .call(M::PUT, "/v1/buses/orders/rules/p3", key, json(no_config))
        .await;
    assert_eq!(status, S::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "targets[0].config");
    let (status, body) = c
        .call(M::GET, "/v1/plugins/big-amounts", key, Body::None)
        .await;
    assert_eq!(status, S::OK);
    assert_eq!(body["used_by"], json!(["orders/p1", "orders/p2"]));

    // Versions.
    let plugin = "/v1/plugins/big-amounts";
    let rollback = "/v1/plugins/big-amounts/rollback";
    assert_eq!(
        c.call(M::DELETE, plugin, key, Body::None).await.0,
        S::CONFLICT
    );
    assert_eq!(
        c.call(M::POST, rollback, key, Body::None).await.0,
        S::CONFLICT
    );
    let (status, body) = c
        .call(M::PUT, plugin, key, wasm(guest_bytes("panic")))
        .await;
    assert_eq!((status, &body["version"]), (S::OK, &json!(2)), "{body}");
    assert_eq!(
        c.call(M::POST, rollback, key, json(json!({"version": 9})))
            .await
            .0,
        S::BAD_REQUEST
    );
    assert_eq!(
        c.call(M::POST, rollback, key, json(json!({"colour": 1})))
            .await
            .0,
        S::BAD_REQUEST
    );
    assert_eq!(
        c.call(M::POST, "/v1/plugins/none/rollback", key, Body::None)
            .await
            .0,
        S::NOT_FOUND
    );
    let (status, body) = c.call(M::POST, rollback, key, Body::None).await;
    assert_eq!((status, &body["current"]), (S::OK, &json!(1)), "{body}");
    assert_eq!(body["versions"].as_array().unwrap().len(), 2);
    let (status, body) = c
        .call(M::POST, rollback, key, json(json!({"version": 2})))
        .await;
    assert_eq!((status, &body["current"]), (S::OK, &json!(2)), "{body}");

    // Plugins go once no rule uses them.
    for rule in ["p1", "p2"] {
        let path = format!("/v1/buses/orders/rules/{rule}");
        assert_eq!(
            c.call(M::DELETE, &path, key, Body::None).await.0,
            S::NO_CONTENT
        );
    }
    for name in ["big-amounts", "split-lines", "signed-webhook"] {
        let path = format!("/v1/plugins/{name}");
        assert_eq!(
            c.call(M::DELETE, &path, key, Body::None).await.0,
            S::NO_CONTENT
        );
    }
    assert_eq!(
        c.call(M::DELETE, plugin, key, Body::None).await.0,
        S::NOT_FOUND
    );

    // History: archives, replays, traces and explain.
    let archive = json!({"pattern": {"source": ["shop.orders"]}, "retention_days": 30});
    let path = "/v1/buses/orders/archives/all";
    assert_eq!(
        c.call(M::PUT, path, key, json(archive.clone())).await.0,
        S::CREATED
    );
    assert_eq!(c.call(M::PUT, path, key, json(archive)).await.0, S::OK);
    let too_long = json!({"retention_days": 9999});
    assert_eq!(
        c.call(M::PUT, "/v1/buses/orders/archives/x", key, json(too_long))
            .await
            .0,
        S::BAD_REQUEST
    );
    assert_eq!(
        c.call(M::PUT, "/v1/buses/nope/archives/x", key, json(json!({})))
            .await
            .0,
        S::NOT_FOUND
    );
    assert_eq!(
        c.call(M::GET, "/v1/buses/orders/archives", key, Body::None)
            .await
            .0,
        S::OK
    );
    assert_eq!(
        c.call(M::GET, "/v1/buses/nope/archives", key, Body::None)
            .await
            .0,
        S::NOT_FOUND
    );
    let since = busbar::clock::rfc3339(busbar::clock::now_ms() - 1);
    let sent = c
        .call(
            M::POST,
            "/v1/buses/orders/events",
            key,
            raw(
                Some("application/cloudevents+json"),
                event("hist-1").to_string(),
            ),
        )
        .await;
    assert_eq!(sent.0, S::ACCEPTED);
    assert_eq!(c.call(M::GET, path, key, Body::None).await.0, S::OK);
    assert_eq!(
        c.call(M::GET, "/v1/buses/orders/archives/none", key, Body::None)
            .await
            .0,
        S::NOT_FOUND
    );
    let until = busbar::clock::rfc3339(busbar::clock::now_ms() + 1);
    let replay = json!({"name": "doc-replay", "bus": "orders", "archive": "all", "from": since, "to": until});
    let (status, started) = c
        .call(M::POST, "/v1/replays", key, json(replay.clone()))
        .await;
    assert_eq!(status, S::ACCEPTED);
    assert_eq!(
        c.call(M::POST, "/v1/replays", key, json(replay.clone()))
            .await
            .0,
        S::CONFLICT
    );
    let mut unknown = replay.clone();
    unknown["archive"] = json!("none");
    assert_eq!(
        c.call(M::POST, "/v1/replays", key, json(unknown)).await.0,
        S::NOT_FOUND
    );
    let mut backwards = replay;
    backwards["from"] = json!(until);
    backwards["to"] = json!(since);
    assert_eq!(
        c.call(M::POST, "/v1/replays", key, json(backwards)).await.0,
        S::BAD_REQUEST
    );
    let id = started["replay_id"].as_str().unwrap().to_owned();
    assert_eq!(
        c.call(M::GET, "/v1/replays", key, Body::None).await.0,
        S::OK
    );
    assert_eq!(
        c.call(M::GET, &format!("/v1/replays/{id}"), key, Body::None)
            .await
            .0,
        S::OK
    );
    assert_eq!(
        c.call(M::GET, "/v1/replays/rp_none", key, Body::None)
            .await
            .0,
        S::NOT_FOUND
    );
    let cancelled = c
        .call(M::DELETE, &format!("/v1/replays/{id}"), key, Body::None)
        .await
        .0;
    assert!(matches!(cancelled, S::OK | S::CONFLICT), "{cancelled}");
    assert_eq!(
        c.call(M::DELETE, "/v1/replays/rp_none", key, Body::None)
            .await
            .0,
        S::NOT_FOUND
    );
    assert_eq!(
        c.call(M::GET, "/v1/events/hist-1", key, Body::None).await.0,
        S::OK
    );
    assert_eq!(
        c.call(M::GET, "/v1/events/none", key, Body::None).await.0,
        S::NOT_FOUND
    );
    assert_eq!(
        c.call(
            M::GET,
            "/v1/events?source=shop.orders&limit=5",
            key,
            Body::None
        )
        .await
        .0,
        S::OK
    );
    assert_eq!(
        c.call(M::GET, "/v1/events?state=lost", key, Body::None)
            .await
            .0,
        S::BAD_REQUEST
    );
    let explain = json!({"pattern": {"source": ["shop.orders"]}, "event": event("x")});
    assert_eq!(
        c.call(M::POST, "/v1/patterns/explain", key, json(explain))
            .await
            .0,
        S::OK
    );
    let bad = json!({"pattern": {"source": "x"}, "event": {}});
    assert_eq!(
        c.call(M::POST, "/v1/patterns/explain", key, json(bad))
            .await
            .0,
        S::BAD_REQUEST
    );
    let rule_event = json!({"event": event("x")});
    assert_eq!(
        c.call(
            M::POST,
            "/v1/buses/orders/rules/r1/explain",
            key,
            json(rule_event.clone())
        )
        .await
        .0,
        S::OK
    );
    assert_eq!(
        c.call(
            M::POST,
            "/v1/buses/orders/rules/none/explain",
            key,
            json(rule_event)
        )
        .await
        .0,
        S::NOT_FOUND
    );
    assert_eq!(
        c.call(M::DELETE, path, key, Body::None).await.0,
        S::NO_CONTENT
    );
    assert_eq!(
        c.call(M::DELETE, path, key, Body::None).await.0,
        S::NOT_FOUND
    );

    // Deleting.
    for rule in ["r1", "r2", "r3"] {
        let path = format!("/v1/buses/orders/rules/{rule}");
        assert_eq!(
            c.call(M::DELETE, &path, key, Body::None).await.0,
            S::NO_CONTENT
        );
    }
    assert_eq!(
        c.call(M::DELETE, "/v1/buses/orders/rules/r3", key, Body::None)
            .await
            .0,
        S::NOT_FOUND
    );
    assert_eq!(
        c.call(M::DELETE, "/v1/queues/audit", key, Body::None)
            .await
            .0,
        S::NO_CONTENT
    );
    assert_eq!(
        c.call(M::DELETE, "/v1/queues/audit", key, Body::None)
            .await
            .0,
        S::NOT_FOUND
    );
    assert_eq!(
        c.call(M::DELETE, "/v1/buses/orders", key, Body::None)
            .await
            .0,
        S::NO_CONTENT
    );
    assert_eq!(
        c.call(M::DELETE, "/v1/buses/orders", key, Body::None)
            .await
            .0,
        S::NOT_FOUND
    );

    // Schemas, discovery, deduplication (on the default bus).
    let schemas = "/v1/buses/default/schemas/orders";
    let example = c.doc["paths"]["/v1/buses/{bus}/schemas/{schema}"]["put"]["requestBody"]
        ["content"]["application/json"]["examples"]["orders"]["value"]
        .clone();
    let mut spec = example.clone();
    spec["source"] = json!("shop.orders");
    spec["type"] = json!("OrderPlaced");
    spec["schema"] = json!({"type": "object", "required": ["id", "total"],
                            "properties": {"id": {"type": "integer"}, "total": {"type": "number"}}});
    for (body, expected) in [
        (spec.clone(), S::CREATED),
        (spec.clone(), S::OK),
        (
            json!({"source": "s", "type": "t", "schema": {"type": "nope"}}),
            S::BAD_REQUEST,
        ),
    ] {
        assert_eq!(c.call(M::PUT, schemas, key, json(body)).await.0, expected);
    }
    let mut narrower = spec.clone();
    narrower["schema"]["required"] = json!(["id", "total", "note"]);
    assert_eq!(
        c.call(M::PUT, schemas, key, json(narrower)).await.0,
        S::CONFLICT
    );
    assert_eq!(
        c.call(M::PUT, "/v1/buses/nope/schemas/x", key, json(spec.clone()))
            .await
            .0,
        S::NOT_FOUND
    );
    assert_eq!(
        c.call(M::GET, "/v1/buses/default/schemas", key, Body::None)
            .await
            .0,
        S::OK
    );
    assert_eq!(c.call(M::GET, schemas, key, Body::None).await.0, S::OK);
    assert_eq!(
        c.call(M::GET, &format!("{schemas}/versions/2"), key, Body::None)
            .await
            .0,
        S::OK
    );
    for (version, expected) in [("9", S::NOT_FOUND), ("two", S::BAD_REQUEST)] {
        assert_eq!(
            c.call(
                M::GET,
                &format!("{schemas}/versions/{version}"),
                key,
                Body::None
            )
            .await
            .0,
            expected
        );
    }
    // Ingest answers with violations, duplicates and schema errors per entry.
    let bad = json!({"specversion": "1.0", "id": "v1", "source": "shop.orders", "type": "OrderPlaced",
                     "data": {"id": "x"}});
    let (status, _) = c
        .call(
            M::POST,
            "/v1/buses/default/events",
            key,
            raw(Some("application/cloudevents+json"), bad.to_string()),
        )
        .await;
    assert_eq!(status, S::BAD_REQUEST);
    assert_eq!(
        c.call(
            M::PUT,
            "/v1/buses/default",
            key,
            json(json!({"dedup_window_s": 60, "schema_discovery": true}))
        )
        .await
        .0,
        S::OK
    );
    let good = json!({"specversion": "1.0", "id": "g1", "source": "shop.orders", "type": "OrderPlaced",
                      "data": {"id": 1, "total": 2}});
    for _ in 0..2 {
        let (status, _) = c
            .call(
                M::POST,
                "/v1/buses/default/events",
                key,
                raw(Some("application/cloudevents+json"), good.to_string()),
            )
            .await;
        assert_eq!(status, S::ACCEPTED);
    }
    let (status, answer) = c
        .call(
            M::POST,
            "/v1/buses/default/events",
            key,
            raw(
                Some("application/cloudevents-batch+json"),
                json!([good, bad]).to_string(),
            ),
        )
        .await;
    assert_eq!(status, S::ACCEPTED);
    assert_eq!(answer["duplicates"], json!(["g1"]), "{answer}");
    let (status, answer) = c
        .call(
            M::POST,
            "/v1/events",
            key,
            json(json!({"Entries": [{"Source": "shop.orders", "DetailType": "OrderPlaced", "Detail": "{\"id\": \"x\"}"}]})),
        )
        .await;
    assert_eq!(status, S::OK);
    assert_eq!(
        answer["Entries"][0]["ErrorCode"], "SchemaViolation",
        "{answer}"
    );
    assert_eq!(
        c.call(
            M::GET,
            "/v1/buses/default/discovered-schemas",
            key,
            Body::None
        )
        .await
        .0,
        S::OK
    );
    let promote = "/v1/buses/default/discovered-schemas/promote";
    for (body, expected) in [
        (
            json!({"source": "shop.orders", "type": "OrderPlaced", "name": "learned", "mode": "warn"}),
            S::CONFLICT,
        ),
        (
            json!({"source": "nope", "type": "none", "name": "learned"}),
            S::NOT_FOUND,
        ),
        (json!({"source": "shop.orders"}), S::BAD_REQUEST),
    ] {
        assert_eq!(c.call(M::POST, promote, key, json(body)).await.0, expected);
    }
    assert_eq!(
        c.call(M::DELETE, schemas, key, Body::None).await.0,
        S::NO_CONTENT
    );
    assert_eq!(
        c.call(M::DELETE, schemas, key, Body::None).await.0,
        S::NOT_FOUND
    );
    let (status, _) = c
        .call(
            M::POST,
            promote,
            key,
            json(json!({"source": "shop.orders", "type": "OrderPlaced", "name": "learned"})),
        )
        .await;
    assert_eq!(status, S::CREATED);

    // Every documented operation took part.
    let all: BTreeSet<(String, String)> = super::operations(&c.doc)
        .into_iter()
        .map(|(path, method, _, _)| (path, method))
        .collect();
    let missed: Vec<_> = all.difference(&c.called).collect();
    assert!(
        missed.is_empty(),
        "operations the scenario does not call: {missed:?}"
    );
}
