//! The CloudEvent a plugin receives and produces, as a plain Rust struct.

use std::fmt::Display;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::PluginError;

/// The media type of JSON data.
pub const APPLICATION_JSON: &str = "application/json";

/// A CloudEvents 1.0 event: the `cloud-event` record of the plugin WIT.
///
/// ```
/// use busbar_sdk::Event;
///
/// let event = Event::json("o-1", "shop.orders", "order.created", &serde_json::json!({"total": 120}))
///     .unwrap();
/// assert_eq!(event.json_value().unwrap()["total"], 120);
/// assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Identifies the event; unique per `source`.
    pub id: String,
    /// The context in which the event happened (a URI-reference).
    pub source: String,
    /// The kind of event (the CloudEvents `type` attribute).
    pub ty: String,
    /// The CloudEvents specification version, `1.0`.
    pub specversion: String,
    /// The subject of the event within its source.
    pub subject: Option<String>,
    /// When the event happened, as an RFC 3339 timestamp.
    pub time: Option<String>,
    /// The media type of `data`.
    pub datacontenttype: Option<String>,
    /// The URI of the schema `data` adheres to.
    pub dataschema: Option<String>,
    /// Extension attributes, as (name, value) pairs.
    pub extensions: Vec<(String, String)>,
    /// The payload bytes, encoded per `datacontenttype`.
    pub data: Option<Vec<u8>>,
}

impl Event {
    /// An event with the three required attributes, spec version `1.0` and
    /// nothing else.
    ///
    /// ```
    /// let event = busbar_sdk::Event::new("1", "shop", "order.created");
    /// assert_eq!(event.specversion, "1.0");
    /// assert!(event.data.is_none());
    /// ```
    pub fn new(id: impl Into<String>, source: impl Into<String>, ty: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            source: source.into(),
            ty: ty.into(),
            specversion: "1.0".to_owned(),
            subject: None,
            time: None,
            datacontenttype: None,
            dataschema: None,
            extensions: Vec::new(),
            data: None,
        }
    }

    /// An event whose data is `data` serialised as JSON.
    ///
    /// ```
    /// let event = busbar_sdk::Event::json("1", "shop", "order.created", &vec![1, 2]).unwrap();
    /// assert_eq!(event.data.as_deref(), Some(&b"[1,2]"[..]));
    /// ```
    pub fn json<T: Serialize + ?Sized>(
        id: impl Into<String>,
        source: impl Into<String>,
        ty: impl Into<String>,
        data: &T,
    ) -> Result<Self, PluginError> {
        let mut event = Self::new(id, source, ty);
        event.set_json(data)?;
        Ok(event)
    }

    /// A builder for an event with the three required attributes.
    ///
    /// ```
    /// let event = busbar_sdk::Event::builder("1", "shop", "order.created")
    ///     .subject("order/1")
    ///     .extension("tenant", "acme")
    ///     .json(&serde_json::json!({"total": 5}))
    ///     .unwrap()
    ///     .build();
    /// assert_eq!(event.subject.as_deref(), Some("order/1"));
    /// assert_eq!(event.extension("tenant"), Some("acme"));
    /// ```
    pub fn builder(
        id: impl Into<String>,
        source: impl Into<String>,
        ty: impl Into<String>,
    ) -> EventBuilder {
        EventBuilder {
            event: Self::new(id, source, ty),
        }
    }

    /// A new event with this event's attributes and extensions, no data, and
    /// the id `"{id}-{label}"`: a deterministic id for an event derived from
    /// this one (a split part, an enrichment), so a redelivered input yields
    /// the same output ids.
    ///
    /// ```
    /// let parent = busbar_sdk::Event::new("o-1", "shop", "order.created");
    /// assert_eq!(parent.derive(0).id, "o-1-0");
    /// assert_eq!(parent.derive(0).source, "shop");
    /// ```
    pub fn derive(&self, label: impl Display) -> Self {
        Self {
            id: format!("{}-{label}", self.id),
            data: None,
            datacontenttype: None,
            dataschema: None,
            ..self.clone()
        }
    }

    /// Whether the data is declared as JSON: no content type (the
    /// CloudEvents default is JSON), or a media type of the form `*/json` or
    /// `*/*+json` (`application/json`, `text/json`, `application/vnd.api+json`,
    /// ...), any case, parameters ignored. The bus decides the same way.
    ///
    /// ```
    /// let mut event = busbar_sdk::Event::new("1", "s", "t");
    /// event.datacontenttype = Some("application/cloudevents+json; charset=utf-8".into());
    /// assert!(event.is_json());
    /// event.datacontenttype = Some("text/plain".into());
    /// assert!(!event.is_json());
    /// ```
    pub fn is_json(&self) -> bool {
        self.datacontenttype
            .as_deref()
            .is_none_or(is_json_media_type)
    }

    /// Deserialises the data, which must be JSON, into `T`.
    ///
    /// Fails with [`PluginError::InvalidEvent`] when the event has no data,
    /// or the data is not JSON of the shape of `T`.
    ///
    /// ```
    /// #[derive(serde::Deserialize)]
    /// struct Order { total: u32 }
    ///
    /// let event = busbar_sdk::Event::json("1", "s", "t", &serde_json::json!({"total": 7})).unwrap();
    /// assert_eq!(event.data_as::<Order>().unwrap().total, 7);
    /// assert!(busbar_sdk::Event::new("1", "s", "t").data_as::<Order>().is_err());
    /// ```
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, PluginError> {
        let data = self
            .data
            .as_deref()
            .ok_or_else(|| PluginError::invalid_event("event has no data"))?;
        if !self.is_json() {
            return Err(PluginError::invalid_event(format!(
                "data is {}, not JSON",
                self.datacontenttype.as_deref().unwrap_or_default()
            )));
        }
        serde_json::from_slice(data)
            .map_err(|e| PluginError::invalid_event(format!("data is not the expected JSON: {e}")))
    }

    /// The data as a JSON value; see [`Event::data_as`].
    ///
    /// ```
    /// let event = busbar_sdk::Event::json("1", "s", "t", &serde_json::json!({"a": [1]})).unwrap();
    /// assert_eq!(event.json_value().unwrap().pointer("/a/0"), Some(&serde_json::json!(1)));
    /// ```
    pub fn json_value(&self) -> Result<serde_json::Value, PluginError> {
        self.data_as()
    }

    /// Replaces the data with `data` serialised as JSON and sets the content
    /// type to `application/json`.
    ///
    /// ```
    /// let mut event = busbar_sdk::Event::new("1", "s", "t");
    /// event.set_json(&serde_json::json!({"ok": true})).unwrap();
    /// assert_eq!(event.data.as_deref(), Some(&br#"{"ok":true}"#[..]));
    /// ```
    pub fn set_json<T: Serialize + ?Sized>(&mut self, data: &T) -> Result<(), PluginError> {
        let bytes = serde_json::to_vec(data)
            .map_err(|e| PluginError::internal(format!("cannot serialise data as JSON: {e}")))?;
        self.data = Some(bytes);
        self.datacontenttype = Some(APPLICATION_JSON.to_owned());
        Ok(())
    }

    /// The event in CloudEvents structured JSON form (the body of an
    /// `application/cloudevents+json` request): attributes and extensions at
    /// the top level; JSON data under `data`, text data (`text/*`, XML) as a
    /// string under `data`, other bytes in base64 under `data_base64`.
    ///
    /// ```
    /// use serde_json::json;
    /// let mut event = busbar_sdk::Event::json("1", "shop", "order.created", &json!({"n": 1})).unwrap();
    /// event.set_extension("region", "eu");
    /// assert_eq!(event.to_structured_json(), json!({
    ///     "specversion": "1.0", "id": "1", "source": "shop", "type": "order.created",
    ///     "datacontenttype": "application/json", "region": "eu", "data": {"n": 1}
    /// }));
    /// ```
    pub fn to_structured_json(&self) -> serde_json::Value {
        use serde_json::{Map, Value};
        let mut out = Map::new();
        out.insert("specversion".into(), Value::from(self.specversion.as_str()));
        out.insert("id".into(), Value::from(self.id.as_str()));
        out.insert("source".into(), Value::from(self.source.as_str()));
        out.insert("type".into(), Value::from(self.ty.as_str()));
        let optional = [
            ("subject", &self.subject),
            ("time", &self.time),
            ("datacontenttype", &self.datacontenttype),
            ("dataschema", &self.dataschema),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                out.insert(name.into(), Value::from(value.as_str()));
            }
        }
        for (name, value) in &self.extensions {
            out.entry(name.as_str())
                .or_insert_with(|| Value::from(value.as_str()));
        }
        if let Some(data) = &self.data {
            let json = self
                .is_json()
                .then(|| serde_json::from_slice::<Value>(data).ok())
                .flatten();
            let text = self
                .is_text()
                .then(|| std::str::from_utf8(data).ok())
                .flatten();
            match (json, text) {
                (Some(json), _) => {
                    out.insert("data".into(), json);
                }
                (None, Some(text)) => {
                    out.insert("data".into(), Value::from(text));
                }
                (None, None) => {
                    out.insert("data_base64".into(), Value::from(base64_encode(data)));
                }
            }
        }
        Value::Object(out)
    }

    /// Whether the data is declared as text (`text/*`, or XML).
    fn is_text(&self) -> bool {
        self.datacontenttype.as_deref().is_some_and(|content_type| {
            let essence = content_type.split(';').next().unwrap_or_default().trim();
            let essence = essence.to_ascii_lowercase();
            essence.starts_with("text/") || essence.ends_with("/xml") || essence.ends_with("+xml")
        })
    }

    /// The value of the extension attribute `name`, if present.
    ///
    /// ```
    /// let mut event = busbar_sdk::Event::new("1", "s", "t");
    /// event.set_extension("traceparent", "00-ab-cd-01");
    /// assert_eq!(event.extension("traceparent"), Some("00-ab-cd-01"));
    /// assert_eq!(event.extension("missing"), None);
    /// ```
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.extensions
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Sets the extension attribute `name` to `value`, replacing any
    /// previous value.
    ///
    /// ```
    /// let mut event = busbar_sdk::Event::new("1", "s", "t");
    /// event.set_extension("region", "eu");
    /// event.set_extension("region", "us");
    /// assert_eq!(event.extensions, vec![("region".to_owned(), "us".to_owned())]);
    /// ```
    pub fn set_extension(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.extensions.iter_mut().find(|(key, _)| *key == name) {
            Some(entry) => entry.1 = value,
            None => self.extensions.push((name, value)),
        }
    }
}

/// Standard base64 with padding (RFC 4648), for `data_base64`.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Builds an [`Event`]; see [`Event::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct EventBuilder {
    event: Event,
}

impl EventBuilder {
    /// Sets the `subject` attribute.
    ///
    /// ```
    /// let e = busbar_sdk::Event::builder("1", "s", "t").subject("x").build();
    /// assert_eq!(e.subject.as_deref(), Some("x"));
    /// ```
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.event.subject = Some(subject.into());
        self
    }

    /// Sets the `time` attribute (an RFC 3339 timestamp).
    ///
    /// ```
    /// let e = busbar_sdk::Event::builder("1", "s", "t").time("2026-01-01T00:00:00Z").build();
    /// assert_eq!(e.time.as_deref(), Some("2026-01-01T00:00:00Z"));
    /// ```
    pub fn time(mut self, time: impl Into<String>) -> Self {
        self.event.time = Some(time.into());
        self
    }

    /// Sets the `dataschema` attribute.
    ///
    /// ```
    /// let e = busbar_sdk::Event::builder("1", "s", "t").dataschema("urn:x").build();
    /// assert_eq!(e.dataschema.as_deref(), Some("urn:x"));
    /// ```
    pub fn dataschema(mut self, dataschema: impl Into<String>) -> Self {
        self.event.dataschema = Some(dataschema.into());
        self
    }

    /// Sets an extension attribute.
    ///
    /// ```
    /// let e = busbar_sdk::Event::builder("1", "s", "t").extension("k", "v").build();
    /// assert_eq!(e.extension("k"), Some("v"));
    /// ```
    pub fn extension(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.event.set_extension(name, value);
        self
    }

    /// Sets raw data and its content type.
    ///
    /// ```
    /// let e = busbar_sdk::Event::builder("1", "s", "t").data("text/plain", b"hi".to_vec()).build();
    /// assert_eq!(e.data.as_deref(), Some(&b"hi"[..]));
    /// ```
    pub fn data(mut self, content_type: impl Into<String>, data: Vec<u8>) -> Self {
        self.event.datacontenttype = Some(content_type.into());
        self.event.data = Some(data);
        self
    }

    /// Sets the data to `data` serialised as JSON.
    ///
    /// ```
    /// let e = busbar_sdk::Event::builder("1", "s", "t").json(&[1, 2]).unwrap().build();
    /// assert_eq!(e.json_value().unwrap(), serde_json::json!([1, 2]));
    /// ```
    pub fn json<T: Serialize + ?Sized>(mut self, data: &T) -> Result<Self, PluginError> {
        self.event.set_json(data)?;
        Ok(self)
    }

    /// The finished event.
    ///
    /// ```
    /// let e = busbar_sdk::Event::builder("1", "s", "t").build();
    /// assert_eq!(e, busbar_sdk::Event::new("1", "s", "t"));
    /// ```
    pub fn build(self) -> Event {
        self.event
    }
}

/// Whether a media type declares JSON: `*/json` or `*/*+json` with RFC 9110
/// token type and subtype, any case, parameters ignored (CloudEvents JSON
/// format 1.0, section 3.1). The same rule as the bus's
/// `host/src/binding/media.rs`; both are tested against one case table,
/// `tests/data/media_types.json`.
fn is_json_media_type(media_type: &str) -> bool {
    let end = media_type.find(';').unwrap_or(media_type.len());
    let essence = media_type[..end].trim_matches([' ', '\t']);
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token(kind) || !token(subtype) {
        return false;
    }
    // Tokens are ASCII, so the byte slice is on a character boundary.
    subtype.eq_ignore_ascii_case("json")
        || subtype.len() > 5 && subtype[subtype.len() - 5..].eq_ignore_ascii_case("+json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The host checks the same table (`host/src/binding/media.rs`), so the
    /// SDK and the bus cannot disagree on what is JSON.
    #[test]
    fn json_media_types_follow_the_shared_table() {
        let table: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/data/media_types.json")).unwrap();
        let cases = table["cases"].as_array().unwrap();
        assert!(cases.len() > 20);
        for case in cases {
            let mut event = Event::new("1", "s", "t");
            event.datacontenttype = case["media_type"].as_str().map(str::to_owned);
            let json = case["json"].as_bool().unwrap();
            assert_eq!(event.is_json(), json, "{:?}", event.datacontenttype);
        }
    }

    #[test]
    fn data_as_rejects_non_json_content_type() {
        let event = Event::builder("1", "s", "t")
            .data("text/plain", b"{}".to_vec())
            .build();
        let err = event.json_value().unwrap_err();
        assert!(matches!(err, PluginError::InvalidEvent(m) if m.contains("text/plain")));
    }

    #[test]
    fn data_as_reports_malformed_json_as_invalid_event() {
        let event = Event::builder("1", "s", "t")
            .data(APPLICATION_JSON, b"{nope".to_vec())
            .build();
        assert!(matches!(
            event.json_value(),
            Err(PluginError::InvalidEvent(_))
        ));
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in cases {
            assert_eq!(base64_encode(input.as_bytes()), expected);
        }
    }

    #[test]
    fn structured_json_encodes_text_and_binary_data() {
        let text = Event::builder("1", "s", "t")
            .data("text/plain", b"hi".to_vec())
            .build();
        assert_eq!(text.to_structured_json()["data"], json!("hi"));
        let binary = Event::builder("1", "s", "t")
            .data("application/octet-stream", vec![0, 255])
            .build();
        assert_eq!(binary.to_structured_json()["data_base64"], json!("AP8="));
        let extension_cannot_override = Event::builder("1", "s", "t").extension("id", "x").build();
        assert_eq!(
            extension_cannot_override.to_structured_json()["id"],
            json!("1")
        );
    }

    #[test]
    fn derive_keeps_attributes_and_drops_data() {
        let parent = Event::builder("p", "src", "ty")
            .subject("sub")
            .extension("x", "1")
            .json(&json!({"a": 1}))
            .unwrap()
            .build();
        let child = parent.derive("a");
        assert_eq!(child.id, "p-a");
        assert_eq!(child.subject.as_deref(), Some("sub"));
        assert_eq!(child.extension("x"), Some("1"));
        assert_eq!(child.data, None);
        assert_eq!(child.datacontenttype, None);
    }
}
