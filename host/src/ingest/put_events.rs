//! EventBridge `PutEvents` requests, turned into CloudEvents.
//!
//! Entry → CloudEvent: `Source` → `source`, `DetailType` → `type`, `Detail`
//! (a string holding a JSON object) → `data` with `datacontenttype`
//! `application/json`, `Time` → `time` (the call's time when absent, as in
//! EventBridge), `TraceHeader` → `traceparent`, `Resources` → extension
//! `resources`. `id` is a fresh UUIDv7 (time-ordered, which keeps the store's
//! index appends local) and `specversion` is `1.0`.
//!
//! `resources` is kept as a JSON array of strings, which the CloudEvents type
//! system does not have, so that EventBridge patterns on `resources` work
//! unchanged. Unknown entry members are ignored, as AWS's JSON protocol does.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};

use serde_json::{Map, Value};

use super::IngestLimits;
use super::error::{Field, IngestError};
use super::members::{Members, Request};
use super::validate::{self, attr};
use crate::event::Event;

/// The bus used when an entry names none.
pub const DEFAULT_BUS: &str = "default";

/// One PutEvents entry: the bus it is for and the event, or why it failed.
#[derive(Debug)]
pub struct PutEventsEntry {
    /// The bus name from `EventBusName` (an ARN is reduced to its name);
    /// `default` when absent. Empty when it cannot be known (the entry is not
    /// an object, or its `EventBusName` is invalid; `event` is then `Err`).
    pub bus: String,
    /// The validated event, or this entry's error (its field is an
    /// `Entries[i].Field` path).
    pub event: Result<Event, IngestError>,
}

/// Parses an EventBridge PutEvents body `{"Entries": [...]}`.
///
/// Whole-request errors are `Err`: a body that is not JSON (400
/// `malformed_json`), not an object or without an `Entries` array (400),
/// an empty `Entries` (400, EventBridge requires at least one), or more than
/// `max_put_events_entries` entries (413 `too_many_entries`). Each entry then
/// succeeds or fails alone, in order.
pub fn parse_put_events(
    body: &[u8],
    limits: &IngestLimits,
) -> Result<Vec<PutEventsEntry>, IngestError> {
    let (entries, repeated) = match serde_json::from_slice(body) {
        Ok(Request::Object { entries, repeated }) => (entries, repeated),
        Ok(Request::NotObject) => {
            return Err(IngestError::WrongShape {
                field: None,
                expected: "a JSON object with an Entries array",
            });
        }
        Err(err) => {
            return Err(IngestError::MalformedJson {
                field: None,
                reason: err.to_string(),
            });
        }
    };
    if let Some(name) = repeated {
        return Err(IngestError::DuplicateMember {
            field: Cow::Owned(name),
        });
    }
    let entries = match entries {
        Some(Some(entries)) => entries,
        Some(None) => return Err(invalid_field("Entries", "must be an array of entries")),
        None => {
            return Err(IngestError::MissingField {
                field: Cow::Borrowed("Entries"),
            });
        }
    };
    if entries.is_empty() {
        return Err(invalid_field("Entries", "must hold at least one entry"));
    }
    if entries.len() > limits.max_put_events_entries {
        return Err(IngestError::TooManyEntries {
            field: Some(Cow::Borrowed("Entries")),
            limit: limits.max_put_events_entries,
        });
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| DateTime::from_timestamp(i64::try_from(d.as_secs()).ok()?, d.subsec_nanos()))
        .unwrap_or_default();
    Ok(entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let parsed = match entry {
                Members::Object { map, repeated, .. } => parse_entry(map, repeated, now, limits),
                Members::NotObject => {
                    Err((String::new(), invalid_field("", "must be a JSON object")))
                }
            };
            match parsed {
                Ok((bus, event)) => PutEventsEntry {
                    bus,
                    event: Ok(event),
                },
                Err((bus, err)) => PutEventsEntry {
                    bus,
                    event: Err(err.map_field(|f| entry_path(i, f))),
                },
            }
        })
        .collect())
}

fn invalid_field(field: &'static str, reason: &'static str) -> IngestError {
    IngestError::InvalidField {
        field: Cow::Borrowed(field),
        reason: Cow::Borrowed(reason),
    }
}

fn entry_path(index: usize, field: &str) -> Field {
    // Attribute names from the CloudEvents checks become the entry's members.
    let member = match field {
        attr::SOURCE => "Source",
        attr::TYPE => "DetailType",
        attr::TIME => "Time",
        attr::DATA => "Detail",
        "traceparent" => "TraceHeader",
        "resources" => "Resources",
        other => other,
    };
    if member.is_empty() {
        Cow::Owned(format!("Entries[{index}]"))
    } else {
        Cow::Owned(format!("Entries[{index}].{member}"))
    }
}

/// One entry (`repeated`: a member name it gives twice); on failure also returns
/// the bus (when it could be read) so the caller can still account the failure
/// to it.
fn parse_entry(
    mut entry: Map<String, Value>,
    repeated: Option<String>,
    now: DateTime<Utc>,
    limits: &IngestLimits,
) -> Result<(String, Event), (String, IngestError)> {
    if repeated.as_deref() == Some("EventBusName") {
        return Err((
            String::new(),
            IngestError::DuplicateMember {
                field: Cow::Borrowed("EventBusName"),
            },
        ));
    }
    let bus = match entry.remove("EventBusName") {
        None | Some(Value::Null) => DEFAULT_BUS.to_owned(),
        Some(Value::String(name)) => bus_name(&name).map_err(|e| (String::new(), e))?.to_owned(),
        Some(_) => {
            return Err((
                String::new(),
                invalid_field("EventBusName", "must be a string"),
            ));
        }
    };
    if let Some(name) = repeated {
        return Err((
            bus,
            IngestError::DuplicateMember {
                field: Cow::Owned(name),
            },
        ));
    }
    match build_event(entry, now, limits) {
        Ok(event) => Ok((bus, event)),
        Err(err) => Err((bus, err)),
    }
}

/// An `EventBusName`: a bus name, or an ARN whose resource is
/// `event-bus/NAME`. Names are 1-256 of `A-Za-z0-9._-` (EventBridge's
/// characters minus `/`, which cannot appear in a `/v1/buses/{bus}` path).
fn bus_name(value: &str) -> Result<&str, IngestError> {
    let name = if value.starts_with("arn:") {
        let mut parts = value.splitn(6, ':');
        let service = parts.nth(2);
        let resource = parts.nth(2);
        match (service, resource.and_then(|r| r.strip_prefix("event-bus/"))) {
            (Some("events"), Some(name)) => name,
            _ => {
                return Err(invalid_field(
                    "EventBusName",
                    "is an ARN that does not name an event bus \
                     (arn:PARTITION:events:REGION:ACCOUNT:event-bus/NAME)",
                ));
            }
        }
    } else {
        value
    };
    let valid = (1..=256).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(name)
    } else {
        Err(invalid_field(
            "EventBusName",
            "must be 1-256 characters of A-Z, a-z, 0-9, '.', '_' and '-'",
        ))
    }
}

fn required_string(
    entry: &mut Map<String, Value>,
    name: &'static str,
) -> Result<String, IngestError> {
    match entry.remove(name) {
        None | Some(Value::Null) => Err(IngestError::MissingField {
            field: Cow::Borrowed(name),
        }),
        Some(Value::String(s)) if s.is_empty() => Err(invalid_field(name, "must not be empty")),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid_field(name, "must be a string")),
    }
}

/// The size of the input an entry's event is built from: its strings (the
/// Detail text bounds the Detail object) plus room for what the bus adds.
fn entry_input_bound(entry: &Map<String, Value>) -> usize {
    const ADDED: usize = 256; // id, specversion, datacontenttype, member names
    let value_len = |value: &Value| match value {
        Value::String(s) => s.len(),
        _ => 32, // a Time number's RFC 3339 form
    };
    entry.values().fold(ADDED, |sum, value| match value {
        Value::Array(items) => items
            .iter()
            .fold(sum, |sum, item| sum.saturating_add(value_len(item) + 4)),
        _ => sum.saturating_add(value_len(value)),
    })
}

fn build_event(
    mut entry: Map<String, Value>,
    now: DateTime<Utc>,
    limits: &IngestLimits,
) -> Result<Event, IngestError> {
    let input_bound = entry_input_bound(&entry);
    let source = required_string(&mut entry, "Source")?;
    let detail_type = required_string(&mut entry, "DetailType")?;
    let detail = match entry.remove("Detail") {
        None | Some(Value::Null) => {
            return Err(IngestError::MissingField {
                field: Cow::Borrowed("Detail"),
            });
        }
        Some(Value::String(detail)) => parse_detail(&detail)?,
        Some(_) => {
            return Err(IngestError::MalformedDetail {
                field: Cow::Borrowed("Detail"),
                reason: Cow::Borrowed("must be a string holding a JSON object"),
            });
        }
    };
    let time = match entry.remove("Time") {
        None | Some(Value::Null) => rfc3339(now),
        Some(Value::String(time)) => time,
        // AWS SDKs send timestamps as epoch seconds in the JSON protocol.
        Some(Value::Number(secs)) => secs
            .as_f64()
            .and_then(epoch_seconds)
            .map(rfc3339)
            .ok_or_else(|| invalid_field("Time", "is not a representable epoch-seconds time"))?,
        Some(_) => {
            return Err(invalid_field(
                "Time",
                "must be an RFC 3339 string or epoch seconds",
            ));
        }
    };

    let mut map = Map::new();
    map.insert(
        attr::SPECVERSION.to_owned(),
        Value::from(validate::SPEC_VERSION),
    );
    map.insert(
        attr::ID.to_owned(),
        Value::String(uuid::Uuid::now_v7().to_string()),
    );
    map.insert(attr::SOURCE.to_owned(), Value::String(source));
    map.insert(attr::TYPE.to_owned(), Value::String(detail_type));
    map.insert(attr::TIME.to_owned(), Value::String(time));
    map.insert(
        attr::DATACONTENTTYPE.to_owned(),
        Value::from("application/json"),
    );
    match entry.remove("TraceHeader") {
        None | Some(Value::Null) => {}
        Some(Value::String(trace)) => {
            map.insert("traceparent".to_owned(), Value::String(trace));
        }
        Some(_) => return Err(invalid_field("TraceHeader", "must be a string")),
    }
    let resources = match entry.remove("Resources") {
        None | Some(Value::Null) => None,
        Some(Value::Array(resources)) => Some(check_resources(resources)?),
        Some(_) => return Err(invalid_field("Resources", "must be an array of strings")),
    };
    map.insert(attr::DATA.to_owned(), Value::Object(detail));

    validate::check_attributes(&mut map)?;
    if let Some(resources) = resources {
        // Inserted after the CloudEvents checks, which allow no arrays.
        map.insert("resources".to_owned(), Value::Array(resources));
    }
    validate::check_size(&map, input_bound, limits)?;
    Ok(Event::from_validated(map))
}

fn parse_detail(detail: &str) -> Result<Map<String, Value>, IngestError> {
    let malformed = |reason: Cow<'static, str>| IngestError::MalformedDetail {
        field: Cow::Borrowed("Detail"),
        reason,
    };
    match serde_json::from_str(detail) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(malformed(Cow::Borrowed("must be a JSON object"))),
        Err(err) => Err(malformed(Cow::Owned(format!("is not valid JSON: {err}")))),
    }
}

fn check_resources(resources: Vec<Value>) -> Result<Vec<Value>, IngestError> {
    for resource in &resources {
        let Some(s) = resource.as_str() else {
            return Err(invalid_field("Resources", "must be an array of strings"));
        };
        super::syntax::check_string(s).map_err(|reason| invalid_field("Resources", reason))?;
    }
    Ok(resources)
}

/// Epoch seconds (possibly fractional or negative) as a UTC time, if representable.
fn epoch_seconds(secs: f64) -> Option<DateTime<Utc>> {
    let whole = Duration::try_from_secs_f64(secs.abs()).ok()?;
    let (s, n) = (i64::try_from(whole.as_secs()).ok()?, whole.subsec_nanos());
    if secs >= 0.0 {
        DateTime::from_timestamp(s, n)
    } else if n == 0 {
        DateTime::from_timestamp(-s, 0)
    } else {
        DateTime::from_timestamp(-s - 1, 1_000_000_000 - n)
    }
}

/// RFC 3339 in UTC with millisecond precision, like EventBridge's `time`
/// (which keeps only seconds).
fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(body: Value) -> Result<Vec<PutEventsEntry>, IngestError> {
        parse_put_events(body.to_string().as_bytes(), &IngestLimits::default())
    }

    fn entry() -> Value {
        json!({"Source": "com.shop", "DetailType": "order.created", "Detail": "{\"total\": 5}"})
    }

    fn one(entry: Value) -> PutEventsEntry {
        let mut entries = parse(json!({ "Entries": [entry] })).unwrap();
        assert_eq!(entries.len(), 1);
        entries.remove(0)
    }

    fn one_err(entry: Value) -> (u16, &'static str, String, &'static str) {
        let e = one(entry).event.unwrap_err();
        (
            e.status(),
            e.code(),
            e.field().unwrap_or("").to_owned(),
            e.put_events_code(),
        )
    }

    fn with(key: &str, value: Value) -> Value {
        let mut e = entry();
        e[key] = value;
        e
    }

    #[test]
    fn entry_becomes_a_cloudevent() {
        let mut e = entry();
        e["Resources"] = json!(["arn:aws:s3:::bucket"]);
        e["Time"] = json!("2024-05-06T07:08:09Z");
        e["TraceHeader"] = json!("Root=1-5759e988-bd862e3fe1be46a994272793");
        e["Unknown"] = json!(1);
        let parsed = one(e);
        assert_eq!(parsed.bus, "default");
        let event = parsed.event.unwrap();
        let map = event.as_map();
        assert_eq!(map["specversion"], json!("1.0"));
        assert_eq!(
            uuid::Uuid::parse_str(event.id()).unwrap().get_version_num(),
            7
        );
        assert_eq!(event.source(), "com.shop");
        assert_eq!(event.event_type(), "order.created");
        assert_eq!(map["time"], json!("2024-05-06T07:08:09Z"));
        assert_eq!(map["datacontenttype"], json!("application/json"));
        assert_eq!(map["data"], json!({"total": 5}));
        assert_eq!(map["resources"], json!(["arn:aws:s3:::bucket"]));
        assert_eq!(
            map["traceparent"],
            json!("Root=1-5759e988-bd862e3fe1be46a994272793")
        );
        assert!(!map.contains_key("Unknown"));
    }

    #[test]
    fn time_defaults_to_now_and_accepts_epoch_seconds() {
        let event = one(entry()).event.unwrap();
        let time = event.str_attr("time").unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok(), "{time}");
        let event = one(with("Time", json!(1_700_000_000.5))).event.unwrap();
        assert_eq!(event.str_attr("time"), Some("2023-11-14T22:13:20.500Z"));
        let event = one(with("Time", json!(-1.5))).event.unwrap();
        assert_eq!(event.str_attr("time"), Some("1969-12-31T23:59:58.500Z"));
        assert_eq!(one_err(with("Time", json!(1e300))).2, "Entries[0].Time");
        assert_eq!(
            one_err(with("Time", json!("yesterday"))).2,
            "Entries[0].Time"
        );
        assert_eq!(one_err(with("Time", json!(true))).2, "Entries[0].Time");
    }

    #[test]
    fn bus_names_and_arns() {
        let bus = |name: &str| one(with("EventBusName", json!(name))).bus;
        assert_eq!(bus("orders"), "orders");
        assert_eq!(
            bus("arn:aws:events:us-east-1:123456789012:event-bus/orders"),
            "orders"
        );
        for bad in [
            "",
            "a/b",
            "has space",
            "arn:aws:sqs:us-east-1:1:queue/x",
            "arn:aws:events:us-east-1:1:rule/x",
            "arn:aws:events",
        ] {
            let e = one_err(with("EventBusName", json!(bad)));
            assert_eq!(
                e,
                (
                    400,
                    "invalid_field",
                    "Entries[0].EventBusName".into(),
                    "InvalidArgument"
                ),
                "{bad}"
            );
        }
        let e = one_err(with("EventBusName", json!(5)));
        assert_eq!(e.2, "Entries[0].EventBusName");
    }

    #[test]
    fn required_fields() {
        for field in ["Source", "DetailType", "Detail"] {
            let mut e = entry();
            e.as_object_mut().unwrap().remove(field);
            let path = format!("Entries[0].{field}");
            assert_eq!(
                one_err(e),
                (400, "missing_field", path.clone(), "InvalidArgument")
            );
            assert_eq!(one_err(with(field, Value::Null)).1, "missing_field");
        }
        assert_eq!(one_err(with("Source", json!(""))).1, "invalid_field");
        assert_eq!(one_err(with("Source", json!(1))).2, "Entries[0].Source");
        assert_eq!(
            one_err(with("DetailType", json!(["x"]))).2,
            "Entries[0].DetailType"
        );
        let e = one_err(with("Source", json!("not a uri")));
        assert_eq!(
            (e.1, e.2.as_str()),
            ("invalid_attribute", "Entries[0].Source")
        );
        let e = one_err(with("DetailType", json!("bad\ntype")));
        assert_eq!(e.2, "Entries[0].DetailType");
    }

    #[test]
    fn detail_must_be_a_json_object_in_a_string() {
        for detail in [
            json!("not json"),
            json!("[1]"),
            json!("\"s\""),
            json!({"a": 1}),
            json!(3),
        ] {
            let e = one_err(with("Detail", detail.clone()));
            assert_eq!(
                e,
                (
                    400,
                    "malformed_detail",
                    "Entries[0].Detail".into(),
                    "MalformedDetail"
                ),
                "{detail}"
            );
        }
    }

    #[test]
    fn optional_fields_have_types() {
        let e = one_err(with("Resources", json!("arn:x")));
        assert_eq!(e.2, "Entries[0].Resources");
        let e = one_err(with("Resources", json!(["ok", 1])));
        assert_eq!(e.2, "Entries[0].Resources");
        let e = one_err(with("TraceHeader", json!(1)));
        assert_eq!(e.2, "Entries[0].TraceHeader");
        let e = one_err(with("TraceHeader", json!("a\u{1}b")));
        assert_eq!(e.2, "Entries[0].TraceHeader");
    }

    #[test]
    fn whole_request_errors() {
        let summary = |r: Result<Vec<PutEventsEntry>, IngestError>| {
            let e = r.unwrap_err();
            (e.status(), e.code(), e.field().map(str::to_owned))
        };
        let limits = IngestLimits::default();
        assert_eq!(
            summary(parse_put_events(b"nope", &limits)),
            (400, "malformed_json", None)
        );
        assert_eq!(summary(parse(json!([]))), (400, "wrong_shape", None));
        assert_eq!(
            summary(parse(json!({}))),
            (400, "missing_field", Some("Entries".into()))
        );
        assert_eq!(
            summary(parse(json!({"Entries": {}}))),
            (400, "invalid_field", Some("Entries".into()))
        );
        assert_eq!(
            summary(parse(json!({"Entries": []}))),
            (400, "invalid_field", Some("Entries".into()))
        );
        let eleven: Vec<Value> = (0..11).map(|_| entry()).collect();
        assert_eq!(
            summary(parse(json!({ "Entries": eleven }))),
            (413, "too_many_entries", Some("Entries".into()))
        );
    }

    #[test]
    fn entries_fail_alone_and_keep_their_bus() {
        let entries = parse(json!({"Entries": [
            entry(),
            with("Detail", json!("{")),
            "not an object",
            with("EventBusName", json!("orders")),
        ]}))
        .unwrap();
        assert!(entries[0].event.is_ok());
        assert_eq!(
            entries[1].event.as_ref().unwrap_err().field(),
            Some("Entries[1].Detail")
        );
        assert_eq!(entries[1].bus, "default");
        assert_eq!(
            entries[2].event.as_ref().unwrap_err().field(),
            Some("Entries[2]")
        );
        assert_eq!(entries[3].bus, "orders");
        assert_ne!(
            entries[0].event.as_ref().unwrap().id(),
            entries[3].event.as_ref().unwrap().id()
        );
    }

    #[test]
    fn oversized_entries_fail_alone() {
        let limits = IngestLimits {
            max_event_bytes: 300,
            ..IngestLimits::default()
        };
        let big = format!("{{\"x\": \"{}\"}}", "y".repeat(300));
        let body = json!({"Entries": [entry(), with("Detail", json!(big))]}).to_string();
        let entries = parse_put_events(body.as_bytes(), &limits).unwrap();
        assert!(entries[0].event.is_ok());
        let e = entries[1].event.as_ref().unwrap_err();
        assert_eq!(
            (e.status(), e.code(), e.field()),
            (413, "event_too_large", Some("Entries[1]"))
        );
        assert_eq!(e.put_events_code(), "InvalidArgument");
    }
}
