//! Conversion between the bus's CloudEvents JSON [`Event`] and the WIT
//! `cloud-event` record.
//!
//! Into the guest: `data` becomes the bytes of its JSON text (or the string
//! itself for a non-JSON content type), `data_base64` its decoded bytes;
//! extensions become strings (non-strings in their JSON text form). Back
//! from the guest: for a JSON content type, data must parse as JSON and
//! becomes `data` (as ingest requires of a body declared as JSON); without a
//! content type, data that parses as JSON becomes `data`; text becomes a
//! string `data`; anything else `data_base64`. Every returned event is
//! validated exactly as ingest validates events arriving over HTTP.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::ser::{SerializeMap, Serializer as _};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::bindings::types::CloudEvent;
use crate::binding::view::EventView;
use crate::event::{Event, StoredEvent};
#[cfg(test)]
use crate::ingest::parse_structured;
use crate::ingest::{IngestLimits, is_canonical, read_structured};

/// What a filter or transformer can be given: an event built in memory, or
/// one the router holds as its stored JSON (whose object, most of the time,
/// no one has built).
pub trait PluginInput {
    /// The WIT record for the event.
    fn to_wit(&self) -> CloudEvent;
}

impl PluginInput for Event {
    fn to_wit(&self) -> CloudEvent {
        to_wit(self)
    }
}

impl PluginInput for StoredEvent {
    /// From the stored JSON, without building the object: the attributes
    /// are a few short strings, and `data` goes to the guest as the text
    /// it is stored as (the bytes printing it would give).
    fn to_wit(&self) -> CloudEvent {
        if self.is_built() {
            return to_wit(self.event());
        }
        match EventView::parse(self.json()) {
            Ok(view) => to_wit_view(&view),
            Err(_) => to_wit(self.event()),
        }
    }
}

const KNOWN: &[&str] = &[
    "id",
    "source",
    "type",
    "specversion",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
];

/// Whether a content type carries JSON (absent means JSON), by the bus's one
/// media-type rule.
fn is_json(content_type: Option<&str>) -> bool {
    crate::binding::media::declares_json(content_type)
}

fn is_text(content_type: Option<&str>) -> bool {
    content_type.is_some_and(crate::binding::media::is_text)
}

/// The WIT record for an event. One pass over the event's attributes (this
/// runs before every plugin invocation, so it avoids a hash lookup per
/// attribute).
pub fn to_wit(event: &Event) -> CloudEvent {
    let mut ce = blank();
    let mut data = None;
    let mut data_base64 = None;
    for (name, value) in event.as_map() {
        match name.as_str() {
            "data" => data = Some(value),
            "data_base64" => data_base64 = value.as_str(),
            _ => put_attribute(&mut ce, name, value),
        }
    }
    ce.data = match (data_base64, data) {
        // Ingest validated the encoding; an undecodable value cannot occur.
        (Some(b64), _) => BASE64.decode(b64).ok(),
        (None, None) => None,
        (None, Some(Value::String(text))) if !is_json(ce.datacontenttype.as_deref()) => {
            Some(text.as_bytes().to_vec())
        }
        (None, Some(v)) => serde_json::to_vec(v).ok(),
    };
    ce
}

/// [`to_wit`] from a view of the stored JSON: the same record.
fn to_wit_view(view: &EventView<'_>) -> CloudEvent {
    let mut ce = blank();
    let mut data_base64 = None;
    for (name, value) in view.attributes() {
        match name {
            "data_base64" => data_base64 = value.as_str(),
            _ => put_attribute(&mut ce, name, value),
        }
    }
    let data = view.data_text().map(|raw| raw.get());
    ce.data = match (data_base64, data) {
        (Some(b64), _) => BASE64.decode(b64).ok(),
        (None, None) => None,
        (None, Some(text)) if text.starts_with('"') && !is_json(ce.datacontenttype.as_deref()) => {
            serde_json::from_str::<String>(text)
                .ok()
                .map(String::into_bytes)
        }
        (None, Some(text)) => Some(text.as_bytes().to_vec()),
    };
    ce
}

/// Puts an attribute or extension (not `data` or `data_base64`) into the
/// record: extensions as strings, non-strings in their JSON text form.
fn put_attribute(ce: &mut CloudEvent, name: &str, value: &Value) {
    let text = || value.as_str().map(str::to_owned);
    match name {
        "id" => ce.id = text().unwrap_or_default(),
        "source" => ce.source = text().unwrap_or_default(),
        "type" => ce.type_ = text().unwrap_or_default(),
        "specversion" => {
            if let Some(version) = text().filter(|v| !v.is_empty()) {
                ce.specversion = version;
            }
        }
        "subject" => ce.subject = text(),
        "time" => ce.time = text(),
        "datacontenttype" => ce.datacontenttype = text(),
        "dataschema" => ce.dataschema = text(),
        _ => ce.extensions.push((
            name.to_owned(),
            match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
        )),
    }
}

/// An empty record; `specversion` is "1.0" (an event read back without
/// one is still a 1.0 event).
fn blank() -> CloudEvent {
    CloudEvent {
        id: String::new(),
        source: String::new(),
        type_: String::new(),
        specversion: "1.0".to_owned(),
        subject: None,
        time: None,
        datacontenttype: None,
        dataschema: None,
        extensions: Vec::new(),
        data: None,
    }
}

/// An event from a WIT record, validated like any incoming event.
pub fn from_wit(ce: CloudEvent, limits: &IngestLimits) -> Result<Event, String> {
    from_wit_stored(ce, limits).map(StoredEvent::into_event)
}

/// [`from_wit`], the event as the store would keep it: its JSON written
/// once, its object not built (the router delivers most outputs without it).
pub fn from_wit_stored(ce: CloudEvent, limits: &IngestLimits) -> Result<StoredEvent, String> {
    let mut map = Map::new();
    map.insert("specversion".into(), ce.specversion.into());
    map.insert("id".into(), ce.id.into());
    map.insert("source".into(), ce.source.into());
    map.insert("type".into(), ce.type_.into());
    for (k, v) in [
        ("subject", ce.subject),
        ("time", ce.time),
        ("dataschema", ce.dataschema),
    ] {
        if let Some(v) = v {
            map.insert(k.into(), v.into());
        }
    }
    for (name, value) in ce.extensions {
        if KNOWN.contains(&name.as_str()) {
            return Err(format!(
                "extension `{name}` collides with a CloudEvents attribute"
            ));
        }
        map.insert(name, value.into());
    }
    // JSON data already in stored form goes into the event as the guest
    // wrote it; `data` holds its place among the members meanwhile.
    let mut stored_form: Option<&RawValue> = None;
    let data = ce.data;
    let ct = ce.datacontenttype.as_deref();
    if let Some(text) = data.as_deref().filter(|_| is_json(ct))
        && let Ok(raw) = serde_json::from_slice::<&RawValue>(text)
        && is_canonical(raw.get())
    {
        map.insert("data".into(), Value::Null);
        stored_form = Some(raw);
    } else if let Some(data) = data.as_deref() {
        let json =
            match (is_json(ct), ct) {
                (false, _) => None,
                // Declared JSON must be JSON, as ingest requires of a body.
                (true, Some(ct)) => Some(serde_json::from_slice::<Value>(data).map_err(|e| {
                    format!("data is declared as JSON ({ct}) but does not parse: {e}")
                })?),
                // No content type: kept byte-exact unless it is JSON.
                (true, None) => serde_json::from_slice::<Value>(data).ok(),
            };
        match (json, std::str::from_utf8(data)) {
            (Some(v), _) => {
                map.insert("data".into(), v);
            }
            (None, Ok(text)) if is_text(ct) => {
                map.insert("data".into(), text.into());
            }
            (None, _) => {
                map.insert("data_base64".into(), BASE64.encode(data).into());
            }
        }
    }
    if let Some(ct) = ct {
        map.insert("datacontenttype".into(), ct.into());
    }
    let mut bytes = Vec::with_capacity(stored_form.map_or(0, |raw| raw.get().len()) + 256);
    let mut ser = serde_json::Serializer::new(&mut bytes);
    let mut object = ser
        .serialize_map(Some(map.len()))
        .map_err(|e| e.to_string())?;
    for (name, value) in &map {
        match stored_form {
            Some(raw) if name == "data" => object.serialize_entry(name, raw),
            _ => object.serialize_entry(name, value),
        }
        .map_err(|e| e.to_string())?;
    }
    object.end().map_err(|e| e.to_string())?;
    read_structured(&bytes, limits).map_err(|e| e.to_string())
}

/// Approximate size of an event in bytes (attributes and data), for output
/// limits.
pub fn wit_size(ce: &CloudEvent) -> usize {
    let opt = |o: &Option<String>| o.as_ref().map_or(0, String::len);
    ce.id.len()
        + ce.source.len()
        + ce.type_.len()
        + ce.specversion.len()
        + opt(&ce.subject)
        + opt(&ce.time)
        + opt(&ce.datacontenttype)
        + opt(&ce.dataschema)
        + ce.extensions
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + ce.data.as_ref().map_or(0, Vec::len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(v: Value) -> Event {
        parse_structured(v.to_string().as_bytes(), &IngestLimits::default()).unwrap()
    }

    #[test]
    fn json_data_round_trips() {
        let e = event(
            json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t",
            "datacontenttype": "application/json", "data": {"a": 1}, "tenantx": "x", "hop": 2}),
        );
        let w = to_wit(&e);
        assert_eq!(w.data.as_deref(), Some(br#"{"a":1}"#.as_slice()));
        assert!(w.extensions.contains(&("hop".into(), "2".into())));
        let back = from_wit(w, &IngestLimits::default()).unwrap();
        assert_eq!(back.as_map()["data"], json!({"a": 1}));
        assert_eq!(back.as_map()["tenantx"], json!("x"));
    }

    /// The router hands plugins its stored events, whose objects are not
    /// built: the record read from the stored JSON is the record of the
    /// built event, field for field.
    #[test]
    fn the_record_of_a_stored_event_is_the_record_of_its_object() {
        for value in [
            json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t", "subject": "x",
                   "time": "2026-12-04T01:00:00Z", "dataschema": "https://s/x", "hop": 2,
                   "flag": true, "tenantx": "x", "datacontenttype": "application/json",
                   "data": {"a": [1, 2.5, "é\n"], "b": null}}),
            json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t",
                   "datacontenttype": "text/plain", "data": "line\n\"quoted\""}),
            json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t",
                   "datacontenttype": "application/json", "data": "a JSON string"}),
            json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t", "data": null}),
            json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t", "data": 7}),
            json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t"}),
            json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t",
                   "datacontenttype": "application/octet-stream", "data_base64": "AAEC"}),
        ] {
            let stored =
                read_structured(value.to_string().as_bytes(), &IngestLimits::default()).unwrap();
            assert!(!stored.is_built());
            let from_json = PluginInput::to_wit(&stored);
            assert!(!stored.is_built(), "reading the record built nothing");
            // The record has no `PartialEq`; its `Debug` shows every field.
            let built = to_wit(stored.event());
            assert_eq!(format!("{from_json:?}"), format!("{built:?}"), "{value}");
        }
    }

    /// A guest's JSON data in stored form is copied into the event; any
    /// other spelling of it gives the same stored event.
    #[test]
    fn output_data_is_stored_the_same_however_the_guest_spelled_it() {
        let mut w = to_wit(&event(
            json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t", "x": "y",
                   "datacontenttype": "application/json", "data": {"a": 1}}),
        ));
        let limits = IngestLimits::default();
        let mut stored = Vec::new();
        for data in [
            &br#"{"a":[1,2.5],"b":"c"}"#[..],
            b" {\n  \"a\": [1, 2.50],\n  \"b\": \"\\u0063\"\n}\n",
        ] {
            w.data = Some(data.to_vec());
            let out = from_wit_stored(w.clone(), &limits).unwrap();
            assert_eq!(out.json().as_ref(), out.event().to_json_bytes());
            stored.push(out.json().clone());
        }
        assert_eq!(stored[0], stored[1]);
        assert!(
            std::str::from_utf8(&stored[0]).unwrap().ends_with(
                r#""x":"y","data":{"a":[1,2.5],"b":"c"},"datacontenttype":"application/json"}"#
            ),
            "members where the map put them"
        );
        // Not JSON after all: refused as before, whatever the spelling.
        w.data = Some(b"[1e400]".to_vec());
        assert!(from_wit_stored(w, &limits).is_err());
    }

    #[test]
    fn binary_data_uses_base64_both_ways() {
        let e = event(
            json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t",
            "datacontenttype": "application/octet-stream", "data_base64": "AAEC"}),
        );
        let w = to_wit(&e);
        assert_eq!(w.data.as_deref(), Some([0u8, 1, 2].as_slice()));
        let back = from_wit(w, &IngestLimits::default()).unwrap();
        assert_eq!(back.as_map()["data_base64"], json!("AAEC"));
    }

    #[test]
    fn unparsable_json_becomes_base64() {
        let mut w = to_wit(&event(
            json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t"}),
        ));
        w.data = Some(b"{not json".to_vec());
        let back = from_wit(w, &IngestLimits::default()).unwrap();
        assert!(back.as_map().contains_key("data_base64"));
    }

    #[test]
    fn data_declared_as_json_must_be_json() {
        let mut w = to_wit(&event(
            json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t",
                   "datacontenttype": "application/json", "data": {"a": 1}}),
        ));
        w.data = Some(b"{not json".to_vec());
        let err = from_wit(w.clone(), &IngestLimits::default()).unwrap_err();
        assert!(err.contains("declared as JSON"), "{err}");
        w.datacontenttype = Some("application/cloudevents+json; charset=utf-8".into());
        assert!(from_wit(w.clone(), &IngestLimits::default()).is_err());
        w.datacontenttype = Some("text/plain".into());
        let back = from_wit(w, &IngestLimits::default()).unwrap();
        assert_eq!(back.as_map()["data"], json!("{not json"));
    }

    #[test]
    fn invalid_output_events_are_refused() {
        let ok = to_wit(&event(
            json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t"}),
        ));
        let mut w = ok.clone();
        w.id.clear();
        assert!(from_wit(w, &IngestLimits::default()).is_err());
        let mut w = ok.clone();
        w.specversion = "0.3".into();
        assert!(from_wit(w, &IngestLimits::default()).is_err());
        let mut w = ok.clone();
        w.time = Some("yesterday".into());
        assert!(from_wit(w, &IngestLimits::default()).is_err());
        let mut w = ok;
        w.extensions.push(("data".into(), "x".into()));
        assert!(from_wit(w, &IngestLimits::default()).is_err());
    }
}
