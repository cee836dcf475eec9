//! Validation of one event in CloudEvents JSON form, whatever mode it came in.
//!
//! Errors name the attribute (`source`, `data_base64`); the callers rewrite
//! that into a header name, a batch path or a PutEvents path.

use std::borrow::Cow;
use std::io;

use serde_json::{Map, Value};

use super::IngestLimits;
use super::error::{Field, IngestError};
use super::syntax::{self, Reason};

/// The attribute names this module sets or checks by name.
pub(crate) mod attr {
    pub(crate) const SPECVERSION: &str = "specversion";
    pub(crate) const ID: &str = "id";
    pub(crate) const SOURCE: &str = "source";
    pub(crate) const TYPE: &str = "type";
    pub(crate) const DATACONTENTTYPE: &str = "datacontenttype";
    pub(crate) const DATASCHEMA: &str = "dataschema";
    pub(crate) const SUBJECT: &str = "subject";
    pub(crate) const TIME: &str = "time";
    pub(crate) const DATA: &str = "data";
    pub(crate) const DATA_BASE64: &str = "data_base64";
}

/// The only CloudEvents version accepted.
pub(crate) const SPEC_VERSION: &str = "1.0";

fn invalid(field: &'static str, reason: Reason) -> IngestError {
    IngestError::InvalidAttribute {
        field: Cow::Borrowed(field),
        reason: Cow::Borrowed(reason),
    }
}

fn owned_field(name: &str) -> Field {
    Cow::Owned(name.to_owned())
}

/// A JSON string attribute, or an error naming it.
fn string_attr<'a>(field: &'static str, value: &'a Value) -> Result<&'a str, IngestError> {
    value
        .as_str()
        .ok_or_else(|| invalid(field, "must be a JSON string"))
}

fn non_empty_string(field: &'static str, value: &Value) -> Result<(), IngestError> {
    let s = string_attr(field, value)?;
    if s.is_empty() {
        return Err(invalid(field, "must be a non-empty string"));
    }
    syntax::check_string(s).map_err(|reason| invalid(field, reason))
}

/// An extension attribute's value: a String, a Boolean, or an Integer in the
/// CloudEvents range (signed 32 bits).
fn check_extension(name: &str, value: &Value) -> Result<(), IngestError> {
    let reason = match value {
        Value::String(s) => syntax::check_string(s).err(),
        Value::Bool(_) => None,
        Value::Number(n) => match n.as_i64() {
            Some(i) if i32::try_from(i).is_ok() => None,
            Some(_) => Some("is an integer outside the CloudEvents range (signed 32 bits)"),
            None if n.is_u64() => {
                Some("is an integer outside the CloudEvents range (signed 32 bits)")
            }
            None => Some("must be an integer, not a fraction"),
        },
        _ => Some("must be a string, a boolean or an integer"),
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(IngestError::InvalidAttribute {
            field: owned_field(name),
            reason: Cow::Borrowed(reason),
        }),
    }
}

/// Checks every attribute of an event in JSON format and normalises it:
/// `null` attributes are removed (the JSON format says they mean "unset";
/// `data: null` stays, it is an explicit null payload).
///
/// Does not check the size; see [`check_size`].
pub(crate) fn check_attributes(map: &mut Map<String, Value>) -> Result<(), IngestError> {
    let data = match map.get(attr::DATA) {
        None => DataShape::Absent,
        Some(Value::String(_)) => DataShape::String,
        Some(_) => DataShape::Other,
    };
    check_envelope(map, data)
}

/// What an event's `data` is, as far as the attribute rules care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DataShape {
    Absent,
    /// A JSON string.
    String,
    /// Any other JSON value, `null` included (an explicit null payload).
    Other,
}

/// [`check_attributes`] for an event whose `data`, of the given shape, is
/// kept outside `map` (as the text it came as).
pub(crate) fn check_envelope(
    map: &mut Map<String, Value>,
    data: DataShape,
) -> Result<(), IngestError> {
    if map.values().any(Value::is_null) {
        map.retain(|name, value| !value.is_null() || name == attr::DATA);
    }

    // specversion first: an event of another version fails for that reason,
    // not for whatever else that version does differently.
    let spec = map
        .get(attr::SPECVERSION)
        .ok_or(IngestError::MissingAttribute {
            field: Cow::Borrowed(attr::SPECVERSION),
        })?;
    let spec = string_attr(attr::SPECVERSION, spec)?;
    if spec != SPEC_VERSION {
        return Err(IngestError::UnsupportedSpecVersion {
            field: Cow::Borrowed(attr::SPECVERSION),
            value: spec.to_owned(),
        });
    }
    for required in [attr::ID, attr::SOURCE, attr::TYPE] {
        if !map.contains_key(required) {
            return Err(IngestError::MissingAttribute {
                field: Cow::Borrowed(required),
            });
        }
    }

    let mut content_type = None;
    let has_data = data != DataShape::Absent;
    let mut data_base64 = None;
    for (name, value) in map.iter() {
        match name.as_str() {
            attr::SPECVERSION => {}
            attr::ID => non_empty_string(attr::ID, value)?,
            attr::TYPE => non_empty_string(attr::TYPE, value)?,
            attr::SUBJECT => non_empty_string(attr::SUBJECT, value)?,
            attr::SOURCE => {
                let s = string_attr(attr::SOURCE, value)?;
                syntax::check_uri_reference(s).map_err(|r| invalid(attr::SOURCE, r))?;
            }
            attr::DATASCHEMA => {
                let s = string_attr(attr::DATASCHEMA, value)?;
                syntax::check_absolute_uri(s).map_err(|r| invalid(attr::DATASCHEMA, r))?;
            }
            attr::TIME => {
                let s = string_attr(attr::TIME, value)?;
                syntax::check_timestamp(s).map_err(|r| invalid(attr::TIME, r))?;
            }
            attr::DATACONTENTTYPE => {
                let s = string_attr(attr::DATACONTENTTYPE, value)?;
                syntax::check_media_type(s).map_err(|r| invalid(attr::DATACONTENTTYPE, r))?;
                content_type = Some(s);
            }
            attr::DATA => {}
            attr::DATA_BASE64 => data_base64 = Some(value),
            extension => {
                if !syntax::is_attribute_name(extension) {
                    return Err(IngestError::InvalidAttributeName {
                        field: owned_field(extension),
                    });
                }
                check_extension(extension, value)?;
            }
        }
    }

    if let Some(encoded) = data_base64 {
        if has_data {
            return Err(IngestError::ConflictingData {
                field: Cow::Borrowed(attr::DATA_BASE64),
            });
        }
        check_base64(encoded)?;
    } else if has_data
        && let Some(content_type) = content_type
        && !crate::binding::media::is_json(content_type)
        && data != DataShape::String
    {
        // JSON format 3.1.2: non-JSON data travels as a string.
        return Err(IngestError::InvalidData {
            field: Cow::Borrowed(attr::DATA),
            reason: Cow::Borrowed(
                "must be a string when datacontenttype is not a JSON media type \
                 (or send the bytes as data_base64)",
            ),
        });
    }
    Ok(())
}

fn check_base64(value: &Value) -> Result<(), IngestError> {
    use base64::Engine as _;
    let bad = |reason: &'static str| IngestError::InvalidData {
        field: Cow::Borrowed(attr::DATA_BASE64),
        reason: Cow::Borrowed(reason),
    };
    let encoded = value.as_str().ok_or_else(|| bad("must be a JSON string"))?;
    // RFC 4648 section 4, padded, canonical (no stray bits, no whitespace).
    // Decoding is the only way to check the last quantum; the bytes are dropped.
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map(drop)
        .map_err(|_| bad("must be standard padded base64 (RFC 4648 section 4)"))
}

/// Counts bytes written, to size an event's JSON form without building it.
struct ByteCounter(usize);

impl io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How much larger than its input an event's compact JSON form can be.
///
/// Strings never grow when re-serialised (escapes only shrink or stay), except
/// raw text bodies whose control bytes become `\u00XX` (6x); numbers can grow
/// (`1e15` becomes `1000000000000000.0`, 4.5x); base64 grows 4/3. So an event
/// built from `n` input bytes serialises to at most `6n` (plus a little per
/// attribute, see callers). Below `limit / 6` the exact count is skipped.
pub(crate) const MAX_GROWTH: usize = 6;

/// Fails with 413 when the event's CloudEvents JSON form is over the limit.
/// For events whose map is printed later (binary mode with a body not in
/// stored form, PutEvents); where ingest writes the JSON itself it checks
/// that JSON's length instead.
///
/// Three steps, cheapest first: when [`MAX_GROWTH`] times `input_bound` (the
/// size of the input the event was built from) fits, nothing is looked at (a
/// typical single event); when a structural upper bound of the serialised
/// size fits, no byte is serialised (a typical entry of a big request); only
/// events near the limit are serialised, into a counter.
pub(crate) fn check_size(
    map: &Map<String, Value>,
    input_bound: usize,
    limits: &IngestLimits,
) -> Result<(), IngestError> {
    let limit = limits.max_event_bytes;
    if input_bound.saturating_mul(MAX_GROWTH) <= limit || object_bound(map) <= limit {
        return Ok(());
    }
    let mut counter = ByteCounter(0);
    // Writing JSON values into a counter cannot fail.
    let _ = serde_json::to_writer(&mut counter, map);
    if counter.0 > limit {
        return Err(IngestError::EventTooLarge {
            field: None,
            size: counter.0,
            limit,
        });
    }
    Ok(())
}

/// The longest a number can print as (`-1.7976931348623157e308` is 23).
const MAX_NUMBER_LEN: usize = 24;

/// An upper bound of a string's serialised size: quotes plus at most six
/// bytes per byte (`\u00XX`).
fn string_bound(s: &str) -> usize {
    s.len().saturating_mul(6).saturating_add(2)
}

fn object_bound(map: &Map<String, Value>) -> usize {
    map.iter().fold(map.len() + 2, |sum, (key, value)| {
        sum.saturating_add(string_bound(key) + 1)
            .saturating_add(value_bound(value))
    })
}

/// An upper bound of a value's compact JSON size, from its structure alone.
fn value_bound(value: &Value) -> usize {
    match value {
        Value::Null => 4,
        Value::Bool(_) => 5,
        Value::Number(_) => MAX_NUMBER_LEN,
        Value::String(s) => string_bound(s),
        Value::Array(items) => items.iter().fold(items.len() + 2, |sum, item| {
            sum.saturating_add(value_bound(item))
        }),
        Value::Object(map) => object_bound(map),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(v: Value) -> Result<Map<String, Value>, IngestError> {
        let Value::Object(mut map) = v else {
            panic!("not an object")
        };
        check_attributes(&mut map).map(|()| map)
    }

    fn minimal() -> Value {
        json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"})
    }

    fn with(key: &str, value: Value) -> Value {
        let mut v = minimal();
        v[key] = value;
        v
    }

    fn without(key: &str) -> Value {
        let mut v = minimal();
        v.as_object_mut().unwrap().remove(key);
        v
    }

    fn err(v: Value) -> (u16, &'static str, String) {
        let e = check(v).unwrap_err();
        (e.status(), e.code(), e.field().unwrap_or("").to_owned())
    }

    fn bad(code: &'static str, field: &str) -> (u16, &'static str, String) {
        (400, code, field.to_owned())
    }

    #[test]
    fn minimal_event_is_valid() {
        assert_eq!(check(minimal()).unwrap().len(), 4);
    }

    #[test]
    fn all_optional_attributes_are_accepted() {
        let v = json!({
            "specversion": "1.0", "id": "A234-1234-1234", "source": "https://example.com/x",
            "type": "com.example.someevent", "subject": "larger-context",
            "time": "2018-04-05T17:31:00Z", "datacontenttype": "application/xml",
            "dataschema": "https://example.com/schema", "data": "<much wow=\"xml\"/>",
            "comexampleextension1": "value", "comexampleothervalue": 5, "flag": true,
            "neg": -2147483648
        });
        assert!(check(v).is_ok());
    }

    #[test]
    fn required_attributes_are_required() {
        for name in ["specversion", "id", "source", "type"] {
            assert_eq!(err(without(name)), bad("missing_attribute", name));
            assert_eq!(err(with(name, Value::Null)), bad("missing_attribute", name));
        }
    }

    #[test]
    fn required_attributes_are_non_empty_strings() {
        for name in ["id", "source", "type"] {
            assert_eq!(err(with(name, json!(""))), bad("invalid_attribute", name));
            assert_eq!(err(with(name, json!(7))), bad("invalid_attribute", name));
        }
        assert_eq!(
            err(with("specversion", json!(1.0))),
            bad("invalid_attribute", "specversion")
        );
    }

    #[test]
    fn specversion_must_be_1_0() {
        for v in ["0.3", "1", "1.0.1", "", "2.0"] {
            assert_eq!(
                err(with("specversion", json!(v))),
                bad("unsupported_specversion", "specversion")
            );
        }
        // specversion is judged before the other required attributes.
        assert_eq!(
            err(json!({"specversion": "0.3"})),
            bad("unsupported_specversion", "specversion")
        );
    }

    #[test]
    fn string_attributes_refuse_control_characters() {
        assert_eq!(
            err(with("id", json!("a\nb"))),
            bad("invalid_attribute", "id")
        );
        assert_eq!(
            err(with("type", json!("a\u{0}"))),
            bad("invalid_attribute", "type")
        );
        assert_eq!(
            err(with("subject", json!("\u{85}"))),
            bad("invalid_attribute", "subject")
        );
        assert_eq!(
            err(with("ext", json!("\u{fffe}"))),
            bad("invalid_attribute", "ext")
        );
    }

    #[test]
    fn optional_attributes_follow_their_types() {
        let cases = [
            ("subject", json!(""), "invalid_attribute"),
            ("subject", json!(1), "invalid_attribute"),
            ("source", json!("not a uri"), "invalid_attribute"),
            ("dataschema", json!("/relative"), "invalid_attribute"),
            ("dataschema", json!(""), "invalid_attribute"),
            ("time", json!("2018-04-05"), "invalid_attribute"),
            ("time", json!(1522949460), "invalid_attribute"),
            ("datacontenttype", json!("json"), "invalid_attribute"),
            ("datacontenttype", json!(true), "invalid_attribute"),
        ];
        for (name, value, code) in cases {
            assert_eq!(
                err(with(name, value.clone())),
                bad(code, name),
                "{name} = {value}"
            );
        }
    }

    #[test]
    fn null_optional_attributes_mean_unset() {
        let map = check(with("subject", Value::Null)).unwrap();
        assert!(!map.contains_key("subject"));
        let map = check(with("data", Value::Null)).unwrap();
        assert_eq!(map.get("data"), Some(&Value::Null));
    }

    #[test]
    fn extension_names_and_values() {
        assert_eq!(
            err(with("MyExt", json!("x"))),
            bad("invalid_attribute_name", "MyExt")
        );
        assert_eq!(
            err(with("my-ext", json!("x"))),
            bad("invalid_attribute_name", "my-ext")
        );
        assert_eq!(err(with("", json!("x"))), bad("invalid_attribute_name", ""));
        assert!(check(with("averylongextensionnamethatexceeds20", json!("x"))).is_ok());
        assert!(check(with("ext", json!(2147483647))).is_ok());
        for value in [
            json!(2147483648i64),
            json!(-2147483649i64),
            json!(u64::MAX),
            json!(1.5),
            json!([1]),
            json!({"a": 1}),
        ] {
            assert_eq!(
                err(with("ext", value.clone())),
                bad("invalid_attribute", "ext"),
                "{value}"
            );
        }
    }

    #[test]
    fn data_and_data_base64() {
        assert!(check(with("data", json!({"a": [1, 2]}))).is_ok());
        assert!(check(with("data", json!("a JSON string"))).is_ok());
        assert!(check(with("data_base64", json!("aGVsbG8="))).is_ok());
        assert!(check(with("data_base64", json!(""))).is_ok());
        let mut both = with("data", json!(1));
        both["data_base64"] = json!("aGVsbG8=");
        assert_eq!(err(both), bad("conflicting_data", "data_base64"));
        for b64 in [
            json!("aGVsbG8"),
            json!("aGVsbG9="),
            json!("a GVsbG8="),
            json!("!!!!"),
            json!(12),
        ] {
            assert_eq!(
                err(with("data_base64", b64.clone())),
                bad("invalid_data", "data_base64"),
                "{b64}"
            );
        }
    }

    #[test]
    fn non_json_content_type_wants_string_data() {
        let mut v = with("datacontenttype", json!("text/plain"));
        v["data"] = json!({"a": 1});
        assert_eq!(err(v.clone()), bad("invalid_data", "data"));
        v["data"] = json!("hello");
        assert!(check(v.clone()).is_ok());
        v["datacontenttype"] = json!("application/vnd.x+json");
        v["data"] = json!({"a": 1});
        assert!(check(v).is_ok());
    }

    #[test]
    fn structural_bound_is_an_upper_bound() {
        let values = [
            json!(null),
            json!({"a\u{1}\"": ["\u{0}\u{1f}\\", -1.7976931348623157e308, 1e15, u64::MAX, i64::MIN]}),
            json!([[], {}, "", true, false, 0.1, -0.0]),
            json!({"": {"": {"": [null, "\u{7f}\u{85}é😀"]}}}),
        ];
        for value in values {
            let exact = serde_json::to_vec(&value).unwrap().len();
            assert!(value_bound(&value) >= exact, "{value}");
        }
    }

    #[test]
    fn size_limit_counts_the_json_form() {
        let limits = IngestLimits {
            max_event_bytes: 100,
            ..IngestLimits::default()
        };
        let small = check(minimal()).unwrap();
        assert!(check_size(&small, 1000, &limits).is_ok());
        let big = check(with("data", json!("x".repeat(100)))).unwrap();
        let e = check_size(&big, 0, &limits);
        assert!(e.is_ok(), "a tiny input bound skips the count");
        let e = check_size(&big, 1000, &limits).unwrap_err();
        assert_eq!(
            (e.status(), e.code(), e.field()),
            (413, "event_too_large", None)
        );
        let exact = serde_json::to_vec(&big).unwrap().len();
        let limits = IngestLimits {
            max_event_bytes: exact,
            ..limits
        };
        assert!(
            check_size(&big, 1000, &limits).is_ok(),
            "the limit is inclusive"
        );
    }
}
