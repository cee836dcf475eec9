//! Conformance tables for `busbar::ingest` (tests/data/ingest/*.json), the
//! cloudevents-sdk cross-check, and "never panics" properties.

use std::path::PathBuf;

use base64::Engine as _;
use busbar::event::{Event, EventHead, StoredEvent};
use busbar::ingest::{
    CloudEventsBody, IngestError, IngestLimits, parse_cloudevents, parse_put_events,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn data_file(name: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/ingest")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn header_map(pairs: &Value) -> HeaderMap {
    let mut map = HeaderMap::new();
    for pair in pairs.as_array().unwrap() {
        let name = pair[0].as_str().unwrap();
        let value = pair[1].as_str().unwrap();
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn body_of(case: &Value) -> Vec<u8> {
    if let Some(text) = case.get("body").and_then(Value::as_str) {
        text.as_bytes().to_vec()
    } else if let Some(text) = case.get("body_text").and_then(Value::as_str) {
        text.as_bytes().to_vec()
    } else if let Some(b64) = case.get("body_base64").and_then(Value::as_str) {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    } else if let Some(json) = case.get("body_json").or_else(|| case.get("body")) {
        serde_json::to_vec(json).unwrap()
    } else {
        Vec::new()
    }
}

/// The CloudEvents SDK, an independent implementation, must read every event
/// the bus accepts (CloudEvents-typed events only: no array extensions).
/// The event's object, after checking what ingest wrote without building
/// it: its stored JSON is the object printed, and its head is the object's.
fn built(event: &StoredEvent) -> &Event {
    let head = event.head();
    let object = event.event();
    assert_eq!(
        String::from_utf8_lossy(event.json()),
        String::from_utf8_lossy(&object.to_json_bytes()),
        "the stored JSON is the event printed"
    );
    assert_eq!(head.as_deref(), EventHead::of(object).as_ref());
    assert_eq!(event.id(), object.id());
    object
}

fn assert_sdk_accepts(event: &Event) {
    let value = Value::Object(event.as_map().clone());
    let parsed: Result<cloudevents::Event, _> = serde_json::from_value(value);
    assert!(
        parsed.is_ok(),
        "the SDK refused {:?}: {:?}",
        event,
        parsed.err()
    );
}

fn check_event(name: &str, expect: &Value, event: &Event) {
    let map = event.as_map();
    if let Some(exact) = expect.get("event") {
        assert_eq!(&Value::Object(map.clone()), exact, "{name}");
    }
    if let Some(subset) = expect.get("event_subset") {
        for (key, value) in subset.as_object().unwrap() {
            assert_eq!(map.get(key), Some(value), "{name}: {key}");
        }
    }
    assert!(
        expect.get("error").is_none(),
        "{name}: expected an error, got {event:?}"
    );
}

fn check_error(name: &str, expect: &Value, err: &IngestError) {
    let want = expect
        .get("error")
        .unwrap_or_else(|| panic!("{name}: unexpected error {err:?}"));
    assert_eq!(
        u64::from(err.status()),
        want["status"].as_u64().unwrap(),
        "{name}: {err}"
    );
    assert_eq!(err.code(), want["code"], "{name}: {err}");
    assert_eq!(err.field(), want["field"].as_str(), "{name}: {err}");
    if let Some(code) = want.get("put_events_code") {
        assert_eq!(err.put_events_code(), code, "{name}");
    }
    assert!(!err.to_string().is_empty());
}

#[test]
fn cloudevents_conformance_table() {
    let cases = data_file("cloudevents.json");
    assert!(cases.len() >= 25);
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let expect = &case["expect"];
        let result = parse_cloudevents(
            &header_map(&case["headers"]),
            &body_of(case),
            &IngestLimits::default(),
        );
        match result {
            Ok(CloudEventsBody::Single(event)) => {
                check_event(name, expect, built(&event));
                assert_sdk_accepts(built(&event));
            }
            Ok(CloudEventsBody::Batch(results)) => {
                let want = expect["batch"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{name}"));
                assert_eq!(results.len(), want.len(), "{name}");
                for (i, (result, want)) in results.iter().zip(want).enumerate() {
                    let name = format!("{name} [{i}]");
                    match result {
                        Ok(event) => {
                            check_event(&name, want, built(event));
                            assert_sdk_accepts(built(event));
                        }
                        Err(err) => check_error(&name, want, err),
                    }
                }
            }
            Err(err) => check_error(name, expect, &err),
        }
    }
}

#[test]
fn put_events_conformance_table() {
    for case in &data_file("put_events.json") {
        let name = case["name"].as_str().unwrap();
        let expect = &case["expect"];
        match parse_put_events(&body_of(case), &IngestLimits::default()) {
            Ok(entries) => {
                let want = expect["entries"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{name}"));
                assert_eq!(entries.len(), want.len(), "{name}");
                for (i, (entry, want)) in entries.iter().zip(want).enumerate() {
                    let name = format!("{name} [{i}]");
                    assert_eq!(entry.bus, want["bus"], "{name}");
                    match &entry.event {
                        Ok(event) => {
                            check_event(&name, want, event);
                            assert!(busbar::ingest::to_sdk_event(event).is_ok(), "{name}");
                        }
                        Err(err) => check_error(&name, want, err),
                    }
                }
            }
            Err(err) => check_error(name, expect, &err),
        }
    }
}

#[test]
fn event_too_large_is_413_in_every_mode() {
    let limits = IngestLimits {
        max_event_bytes: 1024,
        ..IngestLimits::default()
    };
    let data = "x".repeat(1024);
    let event = json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data": data});
    let mut structured = HeaderMap::new();
    structured.insert(
        "content-type",
        HeaderValue::from_static("application/cloudevents+json"),
    );
    let err = parse_cloudevents(&structured, event.to_string().as_bytes(), &limits).unwrap_err();
    assert_eq!(
        (err.status(), err.code(), err.field()),
        (413, "event_too_large", None)
    );

    let mut binary = HeaderMap::new();
    for (name, value) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
    ] {
        binary.insert(name, HeaderValue::from_static(value));
    }
    let err = parse_cloudevents(&binary, data.as_bytes(), &limits).unwrap_err();
    assert_eq!((err.status(), err.code()), (413, "event_too_large"));

    let detail = json!({ "d": data }).to_string();
    let body = json!({"Entries": [{"Source": "s", "DetailType": "t", "Detail": detail}]});
    let entries = parse_put_events(body.to_string().as_bytes(), &limits).unwrap();
    let err = entries[0].event.as_ref().unwrap_err();
    assert_eq!((err.status(), err.field()), (413, Some("Entries[0]")));
}

#[test]
fn max_size_event_is_accepted_exactly_at_the_limit() {
    let base = json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data": ""});
    let overhead = serde_json::to_vec(&base).unwrap().len();
    let limits = IngestLimits::default();
    let fill = "x".repeat(limits.max_event_bytes - overhead);
    let mut event = base.clone();
    event["data"] = json!(fill);
    let body = serde_json::to_vec(&event).unwrap();
    assert_eq!(body.len(), limits.max_event_bytes);
    assert!(busbar::ingest::parse_structured(&body, &limits).is_ok());
    event["data"] = json!(format!("{fill}x"));
    let body = serde_json::to_vec(&event).unwrap();
    assert!(busbar::ingest::parse_structured(&body, &limits).is_err());
}

// ---- properties -----------------------------------------------------------

const HEADER_NAMES: &[&str] = &[
    "content-type",
    "ce-specversion",
    "ce-id",
    "ce-source",
    "ce-type",
    "ce-time",
    "ce-subject",
    "ce-dataschema",
    "ce-datacontenttype",
    "ce-data",
    "ce-ext1",
    "ce-my-ext",
    "ce-",
    "x-other",
];

const HEADER_VALUES: &[&str] = &[
    "1.0",
    "0.3",
    "/s",
    "t",
    "2018-04-05T17:31:00Z",
    "application/json",
    "application/cloudevents+json",
    "application/cloudevents-batch+json",
    "text/plain",
    "application/octet-stream",
    "https://example.com/schema",
    "%C0%A0",
    "%E2%82%AC",
    "%",
    "\"quoted\\\"\"",
    "\"open",
    "",
];

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(HEADER_VALUES).prop_map(|s| s.as_bytes().to_vec()),
        // Anything HeaderValue accepts: visible ASCII, space, tab, obs-text.
        prop::collection::vec(
            prop_oneof![
                Just(b'\t'),
                0x20u8..0x7f,
                0x80u8..=0xff,
                Just(b'%'),
                Just(b'"')
            ],
            0..24
        ),
    ]
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec((prop::sample::select(HEADER_NAMES), header_value()), 0..10).prop_map(
        |pairs| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                if let Ok(value) = HeaderValue::from_bytes(&value) {
                    map.append(HeaderName::from_static(name), value);
                }
            }
            map
        },
    )
}

const MEMBER_NAMES: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "subject",
    "dataschema",
    "datacontenttype",
    "data",
    "data_base64",
    "ext",
    "Bad",
    "",
];

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(HEADER_VALUES).prop_map(Value::from),
        prop::sample::select(&["AAEC", "e30=", "1.0", "a b", "\u{7f}", "\u{fffe}", "x:y"][..])
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(MEMBER_NAMES), inner), 0..6)
                .prop_map(|members| Value::Object(object(members))),
        ]
    })
}

fn object(members: Vec<(&str, Value)>) -> Map<String, Value> {
    members
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

/// Mostly-valid events with a few members perturbed.
fn event_value() -> impl Strategy<Value = Value> {
    prop::collection::vec((prop::sample::select(MEMBER_NAMES), json_value()), 0..4).prop_map(
        |extra| {
            let mut map = object(vec![
                ("specversion", json!("1.0")),
                ("id", json!("1")),
                ("source", json!("/s")),
                ("type", json!("t")),
            ]);
            map.extend(extra.into_iter().map(|(k, v)| (k.to_owned(), v)));
            Value::Object(map)
        },
    )
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        event_value().prop_map(|v| v.to_string().into_bytes()),
        prop::collection::vec(event_value(), 0..4)
            .prop_map(|v| Value::Array(v).to_string().into_bytes()),
        json_value().prop_map(|v| v.to_string().into_bytes()),
    ]
}

fn check_accepted(event: &StoredEvent) {
    let event = built(event);
    for required in ["specversion", "id", "source", "type"] {
        assert!(
            event.str_attr(required).is_some_and(|s| !s.is_empty()),
            "{event:?}"
        );
    }
    assert_sdk_accepts(event);
}

fn check_error_shape(err: &IngestError) {
    assert!(matches!(err.status(), 400 | 413 | 415));
    assert!(!err.code().is_empty() && !err.to_string().is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn cloudevents_never_panics(headers in headers(), body in body()) {
        let limits = IngestLimits { max_event_bytes: 256, ..IngestLimits::default() };
        match parse_cloudevents(&headers, &body, &limits) {
            Ok(CloudEventsBody::Single(event)) => check_accepted(&event),
            Ok(CloudEventsBody::Batch(results)) => {
                for result in &results {
                    match result {
                        Ok(event) => check_accepted(event),
                        Err(err) => {
                            check_error_shape(err);
                            prop_assert!(err.field().is_some_and(|f| f.starts_with('[')));
                        }
                    }
                }
            }
            Err(err) => check_error_shape(&err),
        }
    }

    /// Ingest copies `data` as sent when it is already in stored form and
    /// parses it otherwise: either way the stored bytes are the same.
    #[test]
    fn structured_events_are_stored_the_same_however_spelled(event in event_value()) {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/cloudevents+json"));
        let limits = IngestLimits::default();
        let compact = parse_cloudevents(&headers, event.to_string().as_bytes(), &limits);
        let pretty = serde_json::to_string_pretty(&event).unwrap_or_default();
        let spaced = parse_cloudevents(&headers, pretty.as_bytes(), &limits);
        match (compact, spaced) {
            (Ok(CloudEventsBody::Single(a)), Ok(CloudEventsBody::Single(b))) => {
                prop_assert_eq!(a.json(), b.json());
                check_accepted(&a);
                check_accepted(&b);
            }
            (Err(a), Err(b)) => prop_assert_eq!(a.code(), b.code()),
            (a, b) => prop_assert!(false, "{:?} but {:?}", a, b),
        }
    }

    #[test]
    fn structured_events_never_panic(event in event_value()) {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/cloudevents+json"));
        match parse_cloudevents(&headers, event.to_string().as_bytes(), &IngestLimits::default()) {
            Ok(CloudEventsBody::Single(event)) => check_accepted(&event),
            Ok(CloudEventsBody::Batch(_)) => prop_assert!(false, "structured mode gave a batch"),
            Err(err) => check_error_shape(&err),
        }
    }

    #[test]
    fn put_events_never_panics(
        entries in prop::collection::vec(
            prop::collection::vec(
                (
                    prop::sample::select(&["Source", "DetailType", "Detail", "EventBusName",
                        "Resources", "Time", "TraceHeader", "Other"][..]),
                    prop_oneof![
                        json_value(),
                        json_value().prop_map(|v| Value::String(v.to_string())),
                    ],
                ),
                0..8,
            ),
            0..12,
        ),
        raw in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let entries: Vec<Value> =
            entries.into_iter().map(|members| Value::Object(object(members))).collect();
        let body = json!({ "Entries": entries }).to_string();
        for body in [body.as_bytes(), &raw[..]] {
            match parse_put_events(body, &IngestLimits::default()) {
                Ok(entries) => {
                    for entry in &entries {
                        match &entry.event {
                            Ok(event) => prop_assert!(busbar::ingest::to_sdk_event(event).is_ok()),
                            Err(err) => {
                                check_error_shape(err);
                                prop_assert!(err.field().is_some_and(|f| f.starts_with("Entries[")));
                            }
                        }
                    }
                }
                Err(err) => check_error_shape(&err),
            }
        }
    }
}
