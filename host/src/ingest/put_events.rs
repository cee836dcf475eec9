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
use super::validate::{self, attr};
use crate::event::Event;

/// The bus used when an entry names none.
pub const DEFAULT_BUS: &str = "default";

/// One PutEvents entry: the bus it is for and the event, or why it failed.
#[derive(Debug)]
pub struct PutEventsEntry {
    /// The bus name from `EventBusName` (an ARN is reduced to its name);
    /// `default` when absent. Empty only when the entry is not an object.
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
    let request = match serde_json::from_slice(body) {
        Ok(Value::Object(request)) => request,
        Ok(_) => {
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
    let entries = match request.into_iter().find(|(k, _)| k == "Entries") {
        Some((_, Value::Array(entries))) => entries,
        Some(_) => return Err(invalid_field("Entries", "must be an array of entries")),
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
            count: entries.len(),
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
                Value::Object(entry) => parse_entry(entry, body.len(), now, limits),
                _ => Err((String::new(), invalid_field("", "must be a JSON object"))),
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

/// One entry; on failure also returns the bus (when it could be read) so the
/// caller can still account the failure to it.
fn parse_entry(
    mut entry: Map<String, Value>,
    input_bound: usize,
    now: DateTime<Utc>,
    limits: &IngestLimits,
) -> Result<(String, Event), (String, IngestError)> {
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
    match build_event(entry, input_bound, now, limits) {
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

fn build_event(
    mut entry: Map<String, Value>,
    input_bound: usize,
    now: DateTime<Utc>,
    limits: &IngestLimits,
) -> Result<Event, IngestError> {
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
