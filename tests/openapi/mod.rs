//! The OpenAPI document served at `GET /v1/openapi.json`: it is valid JSON,
//! OpenAPI 3.1, structurally sound, lists exactly the routes and methods the
//! router registers, declares the authentication each route really asks for,
//! its examples fit their schemas and are accepted by a real bus, and (in
//! `conformance`) every answer of a real bus is documented.

pub(crate) mod conformance;
mod schema;

use crate::support::TestBus;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// Route table: path → methods (upper case).
type Routes = BTreeMap<String, BTreeSet<String>>;

/// The source of `busbar::api::router`, read at compile time.
const ROUTER_SOURCE: &str = include_str!("../../host/src/api/mod.rs");

/// The routing functions the scan understands; any other in a `.route(...)`
/// call fails the scan rather than being skipped.
const ROUTING_FNS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// HTTP methods an OpenAPI path item may hold.
const OPENAPI_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

async fn served_document(bus: &TestBus) -> Value {
    // No Authorization header: the document is public.
    let resp = bus
        .client
        .get(format!("{}/v1/openapi.json", bus.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/json");
    let text = resp.text().await.unwrap();
    serde_json::from_str(&text).expect("the served document is JSON")
}

/// Scans `router()` in `host/src/api/mod.rs` for its `.route("...", get(..).put(..))`
/// calls. Routes of the `v1` router get the `/v1` prefix it is nested under.
fn router_routes() -> Routes {
    let body = ROUTER_SOURCE
        .split_once("pub fn router(")
        .expect("api/mod.rs defines router()")
        .1;
    let body = &body[..body.find("\n}\n").expect("router() ends")];
    for unsupported in [".merge(", ".route_service(", ".nest_service("] {
        assert!(
            !body.contains(unsupported),
            "router() uses {unsupported}, which this scan does not understand; extend it"
        );
    }
    assert_eq!(body.matches(".nest(").count(), 1, "one nested router");
    assert!(body.contains(".nest(\"/v1\", v1)"));
    let v1_start = body
        .find("let v1 =")
        .expect("router() builds `let v1 = ...;`");
    let v1_len = body[v1_start..].find(';').expect("`let v1` ends");
    let v1 = &body[v1_start..v1_start + v1_len];
    let root = body[..v1_start].to_owned() + &body[v1_start + v1_len..];

    let mut routes = Routes::new();
    for (prefix, section) in [("/v1", v1), ("", root.as_str())] {
        for (path, methods) in scan_routes(section) {
            let previous = routes.insert(format!("{prefix}{path}"), methods);
            assert!(previous.is_none(), "{prefix}{path} is routed twice");
        }
    }
    routes
}

/// Every `.route(PATH, METHOD_ROUTER)` call in `src`.
fn scan_routes(src: &str) -> Vec<(String, BTreeSet<String>)> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(at) = rest.find(".route(") {
        let call = &rest[at + ".route(".len()..];
        let args = &call[..closing_paren(call)];
        let path = args
            .split('"')
            .nth(1)
            .expect("a route's first argument is a string literal");
        let method_router = &args[args.find(',').expect("two arguments") + 1..];
        let methods = routing_calls(method_router);
        assert!(!methods.is_empty(), "no method for route {path}");
        out.push((path.to_owned(), methods));
        rest = &call[args.len()..];
    }
    out
}

/// Byte offset of the `)` closing a call whose arguments start `src`.
fn closing_paren(src: &str) -> usize {
    let mut depth = 0usize;
    let mut in_string = false;
    for (i, c) in src.char_indices() {
        match c {
            '"' => in_string = !in_string,
            '(' if !in_string => depth += 1,
            ')' if !in_string && depth == 0 => return i,
            ')' if !in_string => depth -= 1,
            _ => {}
        }
    }
    panic!("unbalanced parentheses in router()");
}

/// The routing functions called in a method-router expression such as
/// `put(a::b).get(a::c).layer(DefaultBodyLimit::max(n))`: the calls outside
/// any parentheses. Besides routing functions only `layer` may appear there.
fn routing_calls(expr: &str) -> BTreeSet<String> {
    let mut methods = BTreeSet::new();
    let bytes = expr.as_bytes();
    let (mut i, mut depth) = (0, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'(' => depth += 1,
            b')' => depth -= 1,
            b if b.is_ascii_alphabetic() || b == b'_' => {
                let start = i;
                while i + 1 < bytes.len()
                    && (bytes[i + 1].is_ascii_alphanumeric() || bytes[i + 1] == b'_')
                {
                    i += 1;
                }
                let ident = &expr[start..=i];
                if depth == 0 && bytes.get(i + 1) == Some(&b'(') {
                    if ROUTING_FNS.contains(&ident) {
                        methods.insert(ident.to_uppercase());
                    } else {
                        assert!(
                            ident == "layer",
                            "unknown call {ident}( in a route's method router: {expr}"
                        );
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    methods
}

fn document_routes(doc: &Value) -> Routes {
    let mut routes = Routes::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let methods = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| OPENAPI_METHODS.contains(&k.as_str()))
            .map(|k| k.to_uppercase())
            .collect();
        routes.insert(path.clone(), methods);
    }
    routes
}

/// Resolves a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(pointer) => doc
            .pointer(pointer.strip_prefix('#').unwrap())
            .unwrap_or_else(|| panic!("dangling $ref {pointer}")),
        None => value,
    }
}

fn operations(doc: &Value) -> Vec<(String, String, &Value, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if OPENAPI_METHODS.contains(&method.as_str()) {
                out.push((path.clone(), method.to_uppercase(), item, op));
            }
        }
    }
    out
}

/// A concrete URL path for a template.
fn concrete(path: &str) -> String {
    path.replace("{bus}", "default")
        .replace("{rule}", "r")
        .replace("{queue}", "q")
        .replace("{tenant}", "t")
        .replace("{key_id}", "k")
        .replace("{id}", "1")
}

#[test]
fn the_route_scan_reads_method_routers() {
    let got = scan_routes(
        r#".route("/a", post(x::create).get(x::list))
           .route("/b/{id}", delete(y::get_thing).layer(DefaultBodyLimit::max(get_limit())))"#,
    );
    let names = |m: &[&str]| m.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
    assert_eq!(
        got,
        vec![
            ("/a".to_owned(), names(&["GET", "POST"])),
            ("/b/{id}".to_owned(), names(&["DELETE"])),
        ]
    );
}

#[tokio::test]
async fn document_is_served_as_openapi_3_1() {
    let bus = TestBus::start().await;
    let doc = served_document(&bus).await;
    let version = doc["openapi"].as_str().unwrap();
    assert!(version.starts_with("3.1."), "openapi is {version}");
    assert_eq!(doc["info"]["title"], "Busbar");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        doc["components"]["securitySchemes"]["tenantKey"]["scheme"],
        "bearer"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["adminKey"]["scheme"],
        "bearer"
    );
}

#[tokio::test]
async fn document_lists_exactly_the_routes_of_the_router() {
    let bus = TestBus::start().await;
    let doc = served_document(&bus).await;
    let in_router = router_routes();
    let in_document = document_routes(&doc);
    // Sanity: the scan found the routes we know are there.
    assert!(in_router["/v1/buses/{bus}/rules/{rule}"].contains("PUT"));
    assert!(in_router["/healthz"].contains("GET"));
    for (path, methods) in &in_router {
        assert_eq!(
            in_document.get(path),
            Some(methods),
            "router has {path} {methods:?}; the document does not match"
        );
    }
    for (path, methods) in &in_document {
        assert_eq!(
            in_router.get(path),
            Some(methods),
            "the document has {path} {methods:?}; the router does not match"
        );
    }
}

/// Asks the running server itself: every documented method of every
/// documented path is routed (and asks for the key the document says, or
/// none), every other method answers 405. This also checks the source scan.
#[tokio::test]
async fn served_routes_and_authentication_match_the_document() {
    let bus = TestBus::start().await;
    let doc = served_document(&bus).await;
    let all = ["GET", "PUT", "POST", "DELETE", "PATCH"];
    for (path, methods) in document_routes(&doc) {
        let url = format!("{}{}", bus.url, concrete(&path));
        for method in all {
            let status = bus
                .client
                .request(Method::from_bytes(method.as_bytes()).unwrap(), &url)
                .send()
                .await
                .unwrap()
                .status();
            if !methods.contains(method) {
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                continue;
            }
            let op = &doc["paths"][&path][method.to_lowercase()];
            let public = op["security"].as_array().unwrap().is_empty();
            let expected = if public {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            };
            assert_eq!(status, expected, "{method} {path} without a key");
        }
    }
    let status = bus
        .client
        .get(format!("{}/v1/no-such-thing", bus.url))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Each secured operation is tried with the wrong kind of key: the 403 it
/// documents is what it answers.
#[tokio::test]
async fn the_key_kind_each_operation_needs_is_documented() {
    let bus = TestBus::start().await;
    let tenant_key = bus.tenant("keys").await;
    let doc = served_document(&bus).await;
    for (path, method, _, op) in operations(&doc) {
        let security = op["security"].as_array().unwrap();
        if security.is_empty() {
            continue;
        }
        let scheme = security[0]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .clone();
        let wrong_key = match scheme.as_str() {
            "tenantKey" => crate::support::ADMIN_KEY,
            "adminKey" => tenant_key.as_str(),
            other => panic!("unknown scheme {other}"),
        };
        let (status, body) = bus
            .call(
                Method::from_bytes(method.as_bytes()).unwrap(),
                &concrete(&path),
                wrong_key,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "forbidden");
        assert!(op["responses"]["403"].is_object(), "{method} {path}");
        assert!(op["responses"]["401"].is_object(), "{method} {path}");
    }
}

#[tokio::test]
async fn document_is_structurally_sound() {
    let bus = TestBus::start().await;
    let doc = served_document(&bus).await;

    // Every $ref resolves.
    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r);
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all_refs = Vec::new();
    refs(&doc, &mut all_refs);
    assert!(all_refs.len() > 50);
    for r in all_refs {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("non-local $ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
    }

    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    let mut operation_ids = BTreeSet::new();
    for (path, method, item, op) in operations(&doc) {
        let here = format!("{method} {path}");
        let id = op["operationId"].as_str().unwrap();
        assert!(
            operation_ids.insert(id.to_owned()),
            "{here}: duplicate {id}"
        );

        // Path parameters: declared exactly for the template's placeholders.
        let placeholders: BTreeSet<String> = path
            .split('{')
            .skip(1)
            .map(|s| s.split('}').next().unwrap().to_owned())
            .collect();
        let declared: BTreeSet<String> = [&item["parameters"], &op["parameters"]]
            .into_iter()
            .filter_map(Value::as_array)
            .flatten()
            .map(|p| resolve(&doc, p))
            .filter(|p| p["in"] == "path")
            .inspect(|p| assert_eq!(p["required"], true, "{here}: {p}"))
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(placeholders, declared, "{here}: path parameters");

        // Security names a defined scheme (or none, explicitly).
        for requirement in op["security"].as_array().expect("explicit security") {
            for name in requirement.as_object().unwrap().keys() {
                assert!(schemes.contains_key(name), "{here}: scheme {name}");
            }
        }

        // Responses: a success, and every error in the error shape.
        let responses = op["responses"].as_object().unwrap();
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{here}: no success response"
        );
        for (status, response) in responses {
            let response = resolve(&doc, response);
            assert!(response["description"].is_string(), "{here} {status}");
            if status.starts_with('4') || status.starts_with('5') {
                let schema = &response["content"]["application/json"]["schema"];
                assert_eq!(
                    schema["$ref"], "#/components/schemas/Error",
                    "{here} {status}: errors use the one error shape"
                );
            }
        }
        if let Some(body) = op.get("requestBody") {
            assert!(body["content"].as_object().is_some_and(|c| !c.is_empty()));
        }
    }
    assert!(operation_ids.len() >= 30);
}

/// Every example in the document fits the schema beside it.
#[test]
fn examples_fit_their_schemas() {
    let doc: Value = serde_json::from_str(include_str!("../../host/src/api/openapi.json")).unwrap();
    let checker = schema::Checker::new(&doc);
    let mut media_objects = Vec::new();
    for (path, method, _, op) in operations(&doc) {
        let here = format!("{method} {path}");
        for (media, object) in op["requestBody"]["content"]
            .as_object()
            .into_iter()
            .flatten()
        {
            media_objects.push((format!("{here} request {media}"), object));
        }
        for (status, response) in op["responses"].as_object().unwrap() {
            let response = resolve(&doc, response);
            for (media, object) in response["content"].as_object().into_iter().flatten() {
                media_objects.push((format!("{here} {status} {media}"), object));
            }
        }
    }
    let mut checked = 0;
    for (here, object) in media_objects {
        if !here.ends_with("json") {
            continue;
        }
        let named = object["examples"].as_object().into_iter().flatten();
        let examples = named
            .map(|(name, e)| (name.as_str(), &e["value"]))
            .chain(object.get("example").map(|e| ("example", e)));
        for (name, value) in examples {
            let errors = checker.errors(&object["schema"], value);
            assert!(errors.is_empty(), "{here} {name}: {errors:#?}");
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} examples");
}

fn example<'a>(doc: &'a Value, path: &str, method: &str, media: &str, name: &str) -> &'a Value {
    let value =
        &doc["paths"][path][method]["requestBody"]["content"][media]["examples"][name]["value"];
    assert!(
        !value.is_null(),
        "no example {name} for {method} {path} {media}"
    );
    value
}

/// The request examples are real: a bus accepts each of them.
#[tokio::test]
async fn request_examples_are_accepted() {
    let bus = TestBus::start().await;
    let key = bus.tenant("examples").await;
    let doc = served_document(&bus).await;
    let json = "application/json";

    let (status, body) = bus
        .call(
            Method::PUT,
            "/v1/queues/audit",
            &key,
            Some(example(&doc, "/v1/queues/{queue}", "put", json, "queue").clone()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    bus.put(&key, "/v1/buses/orders", json!({})).await;
    let rules = "/v1/buses/{bus}/rules/{rule}";
    for (name, rule) in [("big-orders", "api_md"), ("crm", "http_target")] {
        let (status, body) = bus
            .call(
                Method::PUT,
                &format!("/v1/buses/orders/rules/{name}"),
                &key,
                Some(example(&doc, rules, "put", json, rule).clone()),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{rule}: {body}");
    }

    let events = "/v1/buses/{bus}/events";
    let structured = example(
        &doc,
        events,
        "post",
        "application/cloudevents+json",
        "structured",
    );
    let (status, body) = bus
        .raw(
            &key,
            "orders",
            "application/cloudevents+json",
            structured.to_string(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let batch = example(
        &doc,
        events,
        "post",
        "application/cloudevents-batch+json",
        "batch",
    );
    let (status, body) = bus
        .raw(
            &key,
            "orders",
            "application/cloudevents-batch+json",
            batch.to_string(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["failed_count"], 0);

    let put_events = example(&doc, "/v1/events", "post", json, "put_events");
    let (status, body) = bus
        .call(Method::POST, "/v1/events", &key, Some(put_events.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["FailedEntryCount"], 0, "{body}");

    let receive = example(
        &doc,
        "/v1/queues/{queue}/receive",
        "post",
        json,
        "long_poll",
    );
    let (status, body) = bus
        .call(
            Method::POST,
            "/v1/queues/audit/receive",
            &key,
            Some(receive.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!body["messages"].as_array().unwrap().is_empty(), "{body}");

    let pattern = example(&doc, "/v1/patterns/test", "post", json, "numeric");
    let (status, body) = bus
        .call(
            Method::POST,
            "/v1/patterns/test",
            &key,
            Some(pattern.clone()),
        )
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"match": true})));

    let transform = example(&doc, "/v1/transforms/test", "post", json, "template");
    let (status, body) = bus
        .call(
            Method::POST,
            "/v1/transforms/test",
            &key,
            Some(transform.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let documented = &doc["paths"]["/v1/transforms/test"]["post"]["responses"]["200"]["content"]
        [json]["example"];
    assert_eq!(&body, documented);

    for filter in ["by_id", "by_filter"] {
        let redrive = example(&doc, "/v1/dlq/redrive", "post", json, filter);
        let (status, body) = bus
            .call(Method::POST, "/v1/dlq/redrive", &key, Some(redrive.clone()))
            .await;
        assert_eq!(status, StatusCode::OK, "{filter}: {body}");
    }

    let tenant = example(&doc, "/v1/admin/tenants", "post", json, "tenant");
    let (status, body) = bus
        .admin(Method::POST, "/v1/admin/tenants", Some(tenant.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}
