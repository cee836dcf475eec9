//! The CloudEvents 1.0 HTTP protocol binding: structured, batched and binary
//! content modes, chosen by the request's Content-Type.

use std::borrow::Cow;

use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_TYPE;
use serde::ser::{SerializeMap, Serializer as _};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::canonical::is_canonical;
use super::error::{Field, IngestError};
use super::members::{Members, RawData};
use super::validate::{self, DataShape, attr};
use super::{IngestLimits, syntax};
use crate::binding::{body, headers as ce_headers, media};
use crate::event::{Event, EventHead, StoredEvent};

/// The media type of the JSON event format (structured mode).
pub const STRUCTURED_MEDIA_TYPE: &str = media::STRUCTURED;
/// The media type of the JSON batch format (batched mode).
pub const BATCH_MEDIA_TYPE: &str = media::BATCH;

/// What a CloudEvents request carried.
#[derive(Debug)]
pub enum CloudEventsBody {
    /// One event (structured or binary mode).
    Single(StoredEvent),
    /// A JSON batch: one result per entry, in order; bad entries fail alone,
    /// their error's field prefixed with the entry's index (`[3].source`).
    Batch(Vec<Result<StoredEvent, IngestError>>),
}

/// Parses a CloudEvents HTTP request into validated events.
///
/// The mode follows the Content-Type (matched case-insensitively, parameters
/// ignored): `application/cloudevents+json` is structured mode,
/// `application/cloudevents-batch+json` batched mode, and any other type (or
/// none) is binary mode when at least one `ce-*` header is present. Otherwise
/// the answer is 415. In binary mode a missing required attribute names its
/// header (`ce-id`).
pub fn parse_cloudevents(
    headers: &HeaderMap,
    body: &[u8],
    limits: &IngestLimits,
) -> Result<CloudEventsBody, IngestError> {
    let content_type = match headers.get(CONTENT_TYPE) {
        Some(value) => Some(value.to_str().map_err(|_| IngestError::InvalidHeader {
            field: Cow::Borrowed("content-type"),
            reason: Cow::Borrowed("is not visible ASCII"),
        })?),
        None => None,
    };
    let essence = content_type.map(media::essence).unwrap_or_default();
    if essence.eq_ignore_ascii_case(STRUCTURED_MEDIA_TYPE) {
        return read_structured(body, limits).map(CloudEventsBody::Single);
    }
    if essence.eq_ignore_ascii_case(BATCH_MEDIA_TYPE) {
        return parse_batch(body, limits).map(CloudEventsBody::Batch);
    }
    if headers
        .keys()
        .any(|name| ce_headers::attribute(name.as_str()).is_some())
    {
        return read_binary(headers, content_type, body, limits).map(CloudEventsBody::Single);
    }
    Err(IngestError::UnsupportedMediaType {
        content_type: content_type.unwrap_or_default().to_owned(),
    })
}

fn malformed_json(err: &serde_json::Error) -> IngestError {
    IngestError::MalformedJson {
        field: None,
        reason: err.to_string(),
    }
}

/// Structured mode: the body is one event in the JSON format.
pub fn parse_structured(body: &[u8], limits: &IngestLimits) -> Result<Event, IngestError> {
    read_structured(body, limits).map(StoredEvent::into_event)
}

/// [`parse_structured`], for the bus's own use: the event as the store will
/// keep it, its object not built.
pub fn read_structured(body: &[u8], limits: &IngestLimits) -> Result<StoredEvent, IngestError> {
    match serde_json::from_slice(body) {
        Ok(Members::Object {
            map,
            data,
            repeated,
        }) => stored_event(map, data, repeated, limits).map_err(|err| malformed_json(&err))?,
        Ok(Members::NotObject) => Err(IngestError::WrongShape {
            field: None,
            expected: "a JSON object (one CloudEvent)",
        }),
        Err(err) => Err(malformed_json(&err)),
    }
}

/// Batched mode: the body is a JSON array of events, each judged alone.
///
/// An empty array is a valid (empty) batch. More entries than
/// `max_batch_entries` refuse the whole request with 413, like an oversized
/// body: the request is too large, not malformed. A JSON syntax error anywhere
/// refuses the whole request (400 `malformed_json`): entries after it cannot
/// be found.
pub fn parse_batch(
    body: &[u8],
    limits: &IngestLimits,
) -> Result<Vec<Result<StoredEvent, IngestError>>, IngestError> {
    // The array is walked by hand and each entry parsed on its own, so that
    // an over-long batch is refused before it is parsed, and an entry's
    // syntax error says where the entry starts.
    let mut pos = skip_whitespace(body, 0);
    if body.get(pos) != Some(&b'[') {
        // Not an array: say whether it is JSON at all.
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Ok(_) => IngestError::WrongShape {
                    field: None,
                    expected: "a JSON array of CloudEvents",
                },
                Err(err) => malformed_json(&err),
            },
        );
    }
    pos = skip_whitespace(body, pos + 1);
    let mut results = Vec::new();
    if body.get(pos) == Some(&b']') {
        pos += 1;
    } else {
        loop {
            if results.len() == limits.max_batch_entries {
                return Err(IngestError::TooManyEntries {
                    field: None,
                    limit: limits.max_batch_entries,
                });
            }
            let mut stream =
                serde_json::Deserializer::from_slice(&body[pos..]).into_iter::<Members>();
            let entry = match stream.next() {
                Some(Ok(entry)) => entry,
                Some(Err(err)) => return Err(malformed_entry(&err, pos)),
                None => return Err(malformed_at("expected a value", pos)),
            };
            let len = stream.byte_offset();
            let index = results.len();
            let result = match entry {
                Members::Object {
                    map,
                    data,
                    repeated,
                } => match stored_event(map, data, repeated, limits) {
                    Ok(result) => result,
                    Err(err) => return Err(malformed_entry(&err, pos)),
                },
                Members::NotObject => Err(IngestError::WrongShape {
                    field: None,
                    expected: "a JSON object (one CloudEvent)",
                }),
            };
            results.push(result.map_err(|e| e.map_field(|f| batch_path(index, f))));
            pos = skip_whitespace(body, pos + len);
            match body.get(pos) {
                Some(b',') => pos = skip_whitespace(body, pos + 1),
                Some(b']') => {
                    pos += 1;
                    break;
                }
                _ => return Err(malformed_at("expected `,` or `]`", pos)),
            }
        }
    }
    if skip_whitespace(body, pos) != body.len() {
        return Err(malformed_at("trailing characters after the array", pos));
    }
    Ok(results)
}

fn skip_whitespace(body: &[u8], from: usize) -> usize {
    let rest = body.get(from..).unwrap_or_default();
    from + rest
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
        .count()
}

fn malformed_at(what: &str, pos: usize) -> IngestError {
    IngestError::MalformedJson {
        field: None,
        reason: format!("{what} at byte {pos}"),
    }
}

fn malformed_entry(err: &serde_json::Error, pos: usize) -> IngestError {
    IngestError::MalformedJson {
        field: None,
        reason: format!("{err} (in the entry starting at byte {pos})"),
    }
}

fn batch_path(index: usize, field: &str) -> Field {
    if field.is_empty() {
        Cow::Owned(format!("[{index}]"))
    } else {
        Cow::Owned(format!("[{index}].{field}"))
    }
}

/// An event object's `data`, to be written into the stored event.
enum DataJson<'a> {
    /// Its text, already in stored form: copied.
    Text(&'a RawValue),
    /// Its value, parsed because its text was not (whitespace, escapes,
    /// number forms `serde_json` prints otherwise): printed.
    Parsed(Value),
}

/// Checks an event object read in structured or batched mode and writes the
/// event's stored JSON: its members in their order, compact, `data` copied
/// as sent when it is already in that form (see `canonical.rs`).
///
/// The outer error says the event's `data` is JSON the parser cannot hold
/// (a number out of range, a lone surrogate): the request is malformed, as
/// if the whole body had been parsed at once, and a batch fails whole. The
/// inner result is the event's own verdict (in a batch it fails alone).
fn stored_event(
    mut map: Map<String, Value>,
    data: Option<RawData<'_>>,
    repeated: Option<String>,
    limits: &IngestLimits,
) -> Result<Result<StoredEvent, IngestError>, serde_json::Error> {
    // Parse failures first: they fail the request before any rule is looked at.
    let data = match data {
        None => None,
        Some(RawData { text, position }) if is_canonical(text.get()) => {
            Some((position, DataJson::Text(text)))
        }
        Some(RawData { text, position }) => {
            let value = serde_json::from_str(text.get())?;
            Some((position, DataJson::Parsed(value)))
        }
    };
    let checked = (|| {
        if let Some(name) = repeated {
            return Err(IngestError::DuplicateMember {
                field: Cow::Owned(name),
            });
        }
        let shape = match &data {
            None => DataShape::Absent,
            Some((_, DataJson::Text(text))) if text.get().starts_with('"') => DataShape::String,
            Some((_, DataJson::Parsed(Value::String(_)))) => DataShape::String,
            Some(_) => DataShape::Other,
        };
        validate::check_envelope(&mut map, shape)?;
        finish(&map, data.as_ref(), limits)
    })();
    Ok(checked)
}

/// The stored event of checked attributes and `data`: its JSON written, its
/// size checked (exactly: the JSON is at hand), its head kept.
fn finish(
    members: &Map<String, Value>,
    data: Option<&(usize, DataJson<'_>)>,
    limits: &IngestLimits,
) -> Result<StoredEvent, IngestError> {
    let json = write_event(members, data);
    if json.len() > limits.max_event_bytes {
        return Err(IngestError::EventTooLarge {
            field: None,
            size: json.len(),
            limit: limits.max_event_bytes,
        });
    }
    let id = members
        .get(attr::ID)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Ok(StoredEvent::ingested(
        id,
        Bytes::from(json),
        EventHead::of_members(members),
    ))
}

/// An event's compact JSON: `members` in order, with `data` at its place.
/// This is what printing the event's object writes.
fn write_event(members: &Map<String, Value>, data: Option<&(usize, DataJson<'_>)>) -> Vec<u8> {
    let data_len = match data {
        Some((_, DataJson::Text(text))) => text.get().len(),
        _ => 0,
    };
    let mut out = Vec::with_capacity(data_len + 64 * members.len() + 16);
    let mut ser = serde_json::Serializer::new(&mut out);
    // Printing JSON values into a Vec cannot fail.
    let _ = (|| {
        let mut object = ser.serialize_map(Some(members.len() + usize::from(data.is_some())))?;
        let write_data = |object: &mut serde_json::ser::Compound<'_, _, _>| match data {
            Some((_, DataJson::Text(text))) => object.serialize_entry(attr::DATA, text),
            Some((_, DataJson::Parsed(value))) => object.serialize_entry(attr::DATA, value),
            None => Ok(()),
        };
        for (i, (name, value)) in members.iter().enumerate() {
            if data.is_some_and(|(position, _)| *position == i) {
                write_data(&mut object)?;
            }
            object.serialize_entry(name, value)?;
        }
        if data.is_some_and(|(position, _)| *position >= members.len()) {
            write_data(&mut object)?;
        }
        object.end()
    })();
    out
}

/// Binary mode: attributes in `ce-*` headers, the payload in the body, its
/// media type in Content-Type (which becomes `datacontenttype`), mapped as
/// [`crate::binding`] says.
///
/// Header values are unquoted (RFC 7230 quoted-strings) and percent-decoded
/// once, then must be UTF-8. All `ce-*` values are strings (headers carry no
/// JSON types). The body becomes `data` parsed as JSON for a JSON media type
/// (`*/json`, `*/*+json`), `data` as a string for `text/*` when it is UTF-8,
/// and `data_base64` otherwise (including no Content-Type or an invalid
/// one); an empty body means no data.
pub fn parse_binary(
    headers: &HeaderMap,
    content_type: Option<&str>,
    body: &[u8],
    limits: &IngestLimits,
) -> Result<Event, IngestError> {
    read_binary(headers, content_type, body, limits).map(StoredEvent::into_event)
}

/// [`parse_binary`], the event as the store will keep it. A JSON body
/// already in stored form (see `canonical.rs`) becomes `data` as it came,
/// without being built into values and printed again.
fn read_binary(
    headers: &HeaderMap,
    content_type: Option<&str>,
    body: &[u8],
    limits: &IngestLimits,
) -> Result<StoredEvent, IngestError> {
    let mut map = Map::new();
    let mut input_bound = body.len();
    for (name, value) in headers {
        let Some(attribute) = ce_headers::attribute(name.as_str()) else {
            continue;
        };
        let header = || Cow::Owned(name.as_str().to_owned());
        if !syntax::is_attribute_name(attribute) || attribute == attr::DATA {
            return Err(IngestError::InvalidAttributeName { field: header() });
        }
        if attribute == attr::DATACONTENTTYPE {
            return Err(IngestError::InvalidHeader {
                field: header(),
                reason: Cow::Borrowed(
                    "must not be sent in binary mode: Content-Type carries datacontenttype",
                ),
            });
        }
        if map.contains_key(attribute) {
            return Err(IngestError::InvalidHeader {
                field: header(),
                reason: Cow::Borrowed("appears more than once"),
            });
        }
        let decoded = ce_headers::decode_value(value.as_bytes()).map_err(|reason| {
            IngestError::InvalidHeader {
                field: header(),
                reason: Cow::Borrowed(reason),
            }
        })?;
        input_bound += name.as_str().len() + value.len() + 8;
        map.insert(attribute.to_owned(), Value::String(decoded));
    }

    let content_type = content_type.map(|ct| ct.trim_matches([' ', '\t']));
    if let Some(ct) = content_type {
        input_bound += ct.len() + 20;
        map.insert(
            attr::DATACONTENTTYPE.to_owned(),
            Value::String(ct.to_owned()),
        );
    }
    let declared = content_type.filter(|ct| syntax::check_media_type(ct).is_ok());
    if !body.is_empty()
        && declared.is_some_and(media::is_json)
        && let Ok(text) = serde_json::from_slice::<&RawValue>(body)
        && is_canonical(text.get())
    {
        let shape = if text.get().starts_with('"') {
            DataShape::String
        } else {
            DataShape::Other
        };
        validate::check_envelope(&mut map, shape).map_err(|e| e.map_field(ce_headers::carrier))?;
        // After every attribute, where the other path inserts it.
        let data = (map.len(), DataJson::Text(text));
        return finish(&map, Some(&data), limits);
    }
    if !body.is_empty() {
        let (key, data) = binary_data(content_type, body)?;
        map.insert(key.to_owned(), data);
    }

    validate::check_attributes(&mut map).map_err(|e| e.map_field(ce_headers::carrier))?;
    validate::check_size(&map, input_bound, limits)?;
    Ok(StoredEvent::of(Event::from_validated(map)))
}

/// The JSON member and value a binary-mode body becomes. A Content-Type
/// that is not a valid media type is refused by validation afterwards; until
/// then it declares nothing.
fn binary_data(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(&'static str, Value), IngestError> {
    let declared = content_type.filter(|ct| syntax::check_media_type(ct).is_ok());
    body::from_body(declared, body).map_err(|err| IngestError::InvalidData {
        field: Cow::Borrowed(attr::DATA),
        reason: Cow::Owned(format!(
            "the body is declared as JSON ({}) but does not parse: {err}",
            declared.unwrap_or_default()
        )),
    })
}

#[cfg(test)]
mod tests {
    use http::{HeaderName, HeaderValue};
    use serde_json::json;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    const BINARY: [(&str, &str); 4] = [
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
    ];

    fn binary(extra: &[(&str, &str)], body: &[u8]) -> Result<Event, IngestError> {
        let mut pairs = BINARY.to_vec();
        pairs.extend_from_slice(extra);
        match parse_cloudevents(&headers(&pairs), body, &IngestLimits::default())? {
            CloudEventsBody::Single(event) => Ok(event.into_event()),
            CloudEventsBody::Batch(_) => panic!("binary mode gave a batch"),
        }
    }

    fn summary(e: &IngestError) -> (u16, &'static str, Option<&str>) {
        (e.status(), e.code(), e.field())
    }

    #[test]
    fn dispatch_by_content_type() {
        let limits = IngestLimits::default();
        let event = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#;
        let structured = headers(&[(
            "content-type",
            "Application/CloudEvents+JSON; charset=UTF-8",
        )]);
        assert!(matches!(
            parse_cloudevents(&structured, event, &limits),
            Ok(CloudEventsBody::Single(_))
        ));
        let batch = headers(&[("content-type", "application/cloudevents-batch+json")]);
        assert!(matches!(
            parse_cloudevents(&batch, b"[]", &limits),
            Ok(CloudEventsBody::Batch(v)) if v.is_empty()
        ));
        for ct in [
            None,
            Some("application/json"),
            Some("application/cloudevents+avro"),
        ] {
            let h = headers(&ct.map(|ct| vec![("content-type", ct)]).unwrap_or_default());
            let e = parse_cloudevents(&h, event, &limits).unwrap_err();
            assert_eq!(
                summary(&e),
                (415, "unsupported_media_type", Some("content-type"))
            );
        }
    }

    #[test]
    fn binary_mode_without_required_headers_names_the_header() {
        let limits = IngestLimits::default();
        let h = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
        ]);
        let e = parse_cloudevents(&h, b"", &limits).unwrap_err();
        assert_eq!(summary(&e), (400, "missing_attribute", Some("ce-id")));
        let h = headers(&[("ce-id", "1")]);
        let e = parse_cloudevents(&h, b"", &limits).unwrap_err();
        assert_eq!(
            summary(&e),
            (400, "missing_attribute", Some("ce-specversion"))
        );
    }

    #[test]
    fn binary_mode_maps_headers_to_attributes() {
        let event = binary(&[("CE-Subject", "sub"), ("ce-myext", "5")], b"").unwrap();
        let map = event.as_map();
        assert_eq!(map["subject"], json!("sub"));
        assert_eq!(map["myext"], json!("5"), "header values are strings");
        assert!(!map.contains_key("data") && !map.contains_key("datacontenttype"));
    }

    #[test]
    fn binary_mode_attribute_errors_name_headers() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: [Case; 7] = [
            (&[("ce-time", "yesterday")], "invalid_attribute", "ce-time"),
            (&[("ce-my-ext", "x")], "invalid_attribute_name", "ce-my-ext"),
            (&[("ce-data", "x")], "invalid_attribute_name", "ce-data"),
            (
                &[("ce-datacontenttype", "text/plain")],
                "invalid_header",
                "ce-datacontenttype",
            ),
            (&[("ce-id", "2")], "invalid_header", "ce-id"),
            (&[("ce-subject", "%zz")], "invalid_header", "ce-subject"),
            (
                &[("content-type", "not a type")],
                "invalid_attribute",
                "content-type",
            ),
        ];
        for (extra, code, field) in cases {
            let e = binary(extra, b"x").unwrap_err();
            assert_eq!(summary(&e), (400, code, Some(field)), "{extra:?}");
        }
        let mut pairs = BINARY.to_vec();
        pairs[0] = ("ce-specversion", "0.3");
        let e = parse_cloudevents(&headers(&pairs), b"", &IngestLimits::default()).unwrap_err();
        assert_eq!(
            summary(&e),
            (400, "unsupported_specversion", Some("ce-specversion"))
        );
    }

    #[test]
    fn binary_mode_bodies() {
        let json = binary(
            &[("content-type", "application/json; charset=utf-8")],
            br#"{"a":[1,2]}"#,
        )
        .unwrap();
        assert_eq!(json.as_map()["data"], json!({"a": [1, 2]}));
        assert_eq!(
            json.as_map()["datacontenttype"],
            json!("application/json; charset=utf-8")
        );
        let plus_json = binary(&[("content-type", "application/vnd.x+json")], b"\"s\"").unwrap();
        assert_eq!(plus_json.as_map()["data"], json!("s"));
        let text = binary(&[("content-type", "text/plain")], "héllo".as_bytes()).unwrap();
        assert_eq!(text.as_map()["data"], json!("héllo"));
        let latin1 = binary(
            &[("content-type", "text/plain; charset=iso-8859-1")],
            b"h\xe9",
        )
        .unwrap();
        assert_eq!(latin1.as_map()["data_base64"], json!("aOk="));
        let bytes = binary(&[("content-type", "application/octet-stream")], b"\x00\xff").unwrap();
        assert_eq!(bytes.as_map()["data_base64"], json!("AP8="));
        let untyped = binary(&[], b"{}").unwrap();
        assert_eq!(untyped.as_map()["data_base64"], json!("e30="));
        assert!(!untyped.as_map().contains_key("datacontenttype"));
        let empty = binary(&[("content-type", "application/json")], b"").unwrap();
        assert!(!empty.as_map().contains_key("data"));
        assert_eq!(empty.as_map()["datacontenttype"], json!("application/json"));
        let e = binary(&[("content-type", "application/json")], b"{nope").unwrap_err();
        assert_eq!(summary(&e), (400, "invalid_data", Some("data")));
    }

    #[test]
    fn decoded_control_characters_are_refused() {
        let e = binary(&[("ce-subject", "a%0Ab")], b"").unwrap_err();
        assert_eq!(summary(&e), (400, "invalid_attribute", Some("ce-subject")));
    }

    #[test]
    fn structured_mode_errors() {
        let limits = IngestLimits::default();
        let e = parse_structured(b"{", &limits).unwrap_err();
        assert_eq!(summary(&e), (400, "malformed_json", None));
        let e = parse_structured(b"[]", &limits).unwrap_err();
        assert_eq!(summary(&e), (400, "wrong_shape", None));
        let e = parse_structured(br#"{"specversion":"1.0","id":"1","source":"/s"}"#, &limits)
            .unwrap_err();
        assert_eq!(summary(&e), (400, "missing_attribute", Some("type")));
    }

    #[test]
    fn batch_entries_fail_alone() {
        let body = br#"[
            {"specversion":"1.0","id":"1","source":"/s","type":"t"},
            {"specversion":"1.0","id":"2","source":"bad source","type":"t"},
            7,
            {"specversion":"1.0","id":"4","source":"/s","type":"t","data":null}
        ]"#;
        let results = parse_batch(body, &IngestLimits::default()).unwrap();
        assert_eq!(results.len(), 4);
        assert_eq!(results[0].as_ref().unwrap().id(), "1");
        let e = results[1].as_ref().unwrap_err();
        assert_eq!(summary(e), (400, "invalid_attribute", Some("[1].source")));
        let e = results[2].as_ref().unwrap_err();
        assert_eq!(summary(e), (400, "wrong_shape", Some("[2]")));
        assert_eq!(
            results[3].as_ref().unwrap().event().as_map()["data"],
            Value::Null
        );
    }

    #[test]
    fn batch_syntax() {
        let limits = IngestLimits::default();
        for ok in [
            &b"[]"[..],
            b" [ ] \n",
            b"[{} , {}]",
            b"[1,[2],\"x\",null]",
            b"\t[{\"a\":[]}]\r\n",
        ] {
            let results = parse_batch(ok, &limits).unwrap();
            let expected = serde_json::from_slice::<Vec<Value>>(ok).unwrap().len();
            assert_eq!(results.len(), expected, "{}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b""[..],
            b"[",
            b"[1,]",
            b"[,]",
            b"[1 2]",
            b"[{}{}]",
            b"[1x]",
            b"[] x",
            b"[]]",
            b"[\"\xff\"]",
            b"nope",
        ] {
            let e = parse_batch(bad, &limits).unwrap_err();
            assert_eq!(
                summary(&e),
                (400, "malformed_json", None),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest::proptest! {
        /// The hand-walked array agrees with serde_json on what a JSON array is.
        #[test]
        fn batch_walk_agrees_with_serde_json(
            tokens in proptest::collection::vec(proptest::sample::select(&[
                "[", "]", ",", " ", "{}", "{\"a\":1}", "1", "-2.5e3", "\"s\"", "null", "x", "\"", ":",
            ][..]), 0..12)
        ) {
            let body = tokens.concat();
            let limits = IngestLimits::default();
            let expected = match serde_json::from_slice::<Value>(body.as_bytes()) {
                Ok(Value::Array(items)) => Ok(items.len()),
                Ok(_) => Err("wrong_shape"),
                Err(_) => Err("malformed_json"),
            };
            let actual = parse_batch(body.as_bytes(), &limits).map(|r| r.len()).map_err(|e| e.code());
            proptest::prop_assert_eq!(actual, expected, "{}", body);
        }
    }

    #[test]
    fn batch_limits() {
        let limits = IngestLimits {
            max_batch_entries: 2,
            max_event_bytes: 200,
            ..IngestLimits::default()
        };
        let e = parse_batch(b"[{},{},{}]", &limits).unwrap_err();
        assert_eq!(summary(&e), (413, "too_many_entries", None));
        let e = parse_batch(b"{}", &limits).unwrap_err();
        assert_eq!(summary(&e), (400, "wrong_shape", None));
        let e = parse_batch(b"[", &limits).unwrap_err();
        assert_eq!(summary(&e), (400, "malformed_json", None));
        let big = "x".repeat(300);
        let body = format!(
            r#"[{{"specversion":"1.0","id":"1","source":"/s","type":"t"}},
                {{"specversion":"1.0","id":"2","source":"/s","type":"t","data":"{big}"}}]"#
        );
        let results = parse_batch(body.as_bytes(), &limits).unwrap();
        assert!(results[0].is_ok());
        let e = results[1].as_ref().unwrap_err();
        assert_eq!(summary(e), (413, "event_too_large", Some("[1]")));
    }

    #[test]
    fn data_in_stored_form_is_copied_and_any_other_spelling_stored_the_same() {
        let limits = IngestLimits::default();
        let read = |body: &str| read_structured(body.as_bytes(), &limits).unwrap();
        let compact = read(
            r#"{"specversion":"1.0","subject":null,"id":"1","data":{"a":[1,2.5,"x\n"]},"source":"/s","type":"t"}"#,
        );
        assert_eq!(
            std::str::from_utf8(compact.json()).unwrap(),
            r#"{"specversion":"1.0","id":"1","data":{"a":[1,2.5,"x\n"]},"source":"/s","type":"t"}"#,
            "members in order, the null one dropped, data where it was"
        );
        assert!(!compact.is_built(), "nothing built the event's object");
        let spelled = read(
            "{ \"specversion\" : \"1.0\", \"id\":\"1\",\n \"data\" : { \"a\" : [ 1, 2.50, \"\\u0078\\u000A\" ] } ,\"source\":\"/s\",\"type\":\"t\"}",
        );
        assert_eq!(spelled.json(), compact.json());
        let last = read(
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":null,"data":"x"}"#,
        );
        assert_eq!(
            std::str::from_utf8(last.json()).unwrap(),
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":"x"}"#
        );
        let head = compact.head().unwrap();
        assert_eq!(
            (head.source.as_str(), head.event_type.as_str()),
            ("/s", "t")
        );
    }

    #[test]
    fn a_json_body_in_stored_form_is_copied_and_any_other_spelling_stored_the_same() {
        let mut pairs = BINARY.to_vec();
        pairs.push(("content-type", "application/json"));
        let headers = headers(&pairs);
        let read = |body: &[u8]| match parse_cloudevents(&headers, body, &IngestLimits::default()) {
            Ok(CloudEventsBody::Single(event)) => event,
            other => panic!("{other:?}"),
        };
        let compact = read(br#"{"a":[1,2.5,"x"]}"#);
        assert!(!compact.is_built(), "nothing built the event's object");
        assert_eq!(compact.json().as_ref(), compact.event().to_json_bytes());
        assert_eq!(
            compact.event().as_map()["data"],
            json!({"a": [1, 2.5, "x"]})
        );
        let spaced = read(b" { \"a\" : [1, 2.50, \"\\u0078\"] }\n");
        assert_eq!(spaced.json(), compact.json());
        for body in [&b"\"text\""[..], b"null", b"7"] {
            let event = read(body);
            assert_eq!(event.json().as_ref(), event.event().to_json_bytes());
        }
        let e = binary(&[("content-type", "application/json")], b"{\"a\": 1e400}").unwrap_err();
        assert_eq!(
            summary(&e).1,
            "invalid_data",
            "as before: the body does not parse"
        );
    }

    #[test]
    fn data_the_parser_cannot_hold_fails_the_request_as_before() {
        let limits = IngestLimits::default();
        let event = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":[1e400]}"#;
        let e = read_structured(event.as_bytes(), &limits).unwrap_err();
        assert_eq!(summary(&e), (400, "malformed_json", None));
        let good = r#"{"specversion":"1.0","id":"2","source":"/s","type":"t","data":1}"#;
        let batch = format!("[{good},{event}]");
        let e = parse_batch(batch.as_bytes(), &limits).unwrap_err();
        assert_eq!(
            summary(&e),
            (400, "malformed_json", None),
            "the whole batch"
        );
    }

    #[test]
    fn oversized_single_events() {
        let limits = IngestLimits {
            max_event_bytes: 100,
            ..IngestLimits::default()
        };
        let body = format!(
            r#"{{"specversion":"1.0","id":"1","source":"/s","type":"t","data":"{}"}}"#,
            "x".repeat(100)
        );
        let e = parse_structured(body.as_bytes(), &limits).unwrap_err();
        assert_eq!(summary(&e), (413, "event_too_large", None));
        let h = headers(&BINARY);
        let e = parse_binary(&h, Some("text/plain"), &[b'x'; 100], &limits).unwrap_err();
        assert_eq!(summary(&e), (413, "event_too_large", None));
        // Whitespace in the body does not count: the stored form is compact.
        let padded = format!(
            r#"{{"specversion":"1.0","id":"1","source":"/s","type":"t"{}}}"#,
            " ".repeat(200)
        );
        assert!(parse_structured(padded.as_bytes(), &limits).is_ok());
    }

    #[test]
    fn content_type_that_is_not_ascii_is_refused() {
        let mut h = headers(&BINARY);
        h.insert(CONTENT_TYPE, HeaderValue::from_bytes(b"text/\xe9").unwrap());
        let e = parse_cloudevents(&h, b"", &IngestLimits::default()).unwrap_err();
        assert_eq!(summary(&e), (400, "invalid_header", Some("content-type")));
    }
}
