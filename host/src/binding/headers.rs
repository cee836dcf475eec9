//! Binary mode's headers: each attribute travels as a `ce-<name>` header,
//! except the payload (`data`, `data_base64`: the body) and its media type
//! (`datacontenttype`: `Content-Type`). Values are percent-encoded (HTTP
//! binding 3.1.3.2): space, `"`, `%` and everything outside printable ASCII
//! become `%XX` of their UTF-8 bytes; a receiver also unquotes RFC 9110
//! quoted strings before decoding.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::EncodeError;
use super::view::EventView;

/// Prefix of the attribute headers (header names arrive lower-cased).
pub const PREFIX: &str = "ce-";

/// The attribute a header carries (`ce-id` → `id`), if it is a `ce-*` header.
pub fn attribute(header: &str) -> Option<&str> {
    header.strip_prefix(PREFIX)
}

/// Whether an attribute travels as its own `ce-*` header.
pub fn is_header_attribute(attribute: &str) -> bool {
    !matches!(attribute, "data" | "data_base64" | "datacontenttype")
}

/// Where an attribute travels in binary mode: its `ce-*` header,
/// `content-type` or `data` (the body). The empty name (the event as a
/// whole) stays empty.
pub fn carrier(attribute: &str) -> Cow<'static, str> {
    match attribute {
        "" => Cow::Borrowed(""),
        "datacontenttype" => Cow::Borrowed("content-type"),
        "data" | "data_base64" => Cow::Borrowed("data"),
        other => Cow::Owned(format!("{PREFIX}{other}")),
    }
}

/// An attribute value as header text: strings as themselves, lists (such
/// as PutEvents' `resources`) comma-joined, other values as JSON text;
/// `None` for `null` (an absent attribute).
pub fn value_text(value: &Value) -> Option<String> {
    let text = |value: &Value| match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match value {
        Value::Null => None,
        Value::Array(items) => Some(items.iter().map(text).collect::<Vec<_>>().join(",")),
        other => Some(text(other)),
    }
}

/// Adds a `ce-*` header for each of the event's header attributes.
pub fn to_headers(event: &EventView<'_>, headers: &mut HeaderMap) -> Result<(), EncodeError> {
    for (name, value) in event.attributes() {
        if !is_header_attribute(name) {
            continue;
        }
        let Some(text) = value_text(value) else {
            continue;
        };
        let header_name = HeaderName::from_bytes(format!("{PREFIX}{name}").as_bytes())
            .map_err(|_| EncodeError::HeaderName(name.to_owned()))?;
        // Percent-encoding leaves only visible ASCII, always a valid value.
        if let Ok(value) = HeaderValue::from_str(&encode_value(&text)) {
            headers.insert(header_name, value);
        }
    }
    Ok(())
}

/// Percent-encodes a header value (HTTP binding 3.1.3.2), upper-case hex.
pub fn encode_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (0x21..=0x7e).contains(&byte) && byte != b'"' && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes a header value (HTTP binding 3.1.3.2): optional whitespace
/// trimmed, double-quoted strings unescaped, then one round of
/// percent-decoding; the bytes must be UTF-8 (overlong forms refused).
/// The error is a sentence about the value.
pub fn decode_value(raw: &[u8]) -> Result<String, &'static str> {
    let start = raw.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    let end = raw.len()
        - raw[start..]
            .iter()
            .rev()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
    let raw = &raw[start..end];

    // Fast path: nothing to unquote or decode.
    if !raw.iter().any(|&b| b == b'%' || b == b'"') {
        return std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| "is not valid UTF-8");
    }

    let unquoted = unquote(raw)?;
    let mut out = Vec::with_capacity(unquoted.len());
    let mut i = 0;
    while i < unquoted.len() {
        let b = unquoted[i];
        if b == b'%' {
            let hi = unquoted.get(i + 1).and_then(|&h| (h as char).to_digit(16));
            let lo = unquoted.get(i + 2).and_then(|&h| (h as char).to_digit(16));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err("has a % not followed by two hex digits");
            };
            // Two hex digits always fit in a byte.
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "does not percent-decode to valid UTF-8")
}

/// Removes RFC 9110 double quotes and backslash escapes inside them.
fn unquote(raw: &[u8]) -> Result<Cow<'_, [u8]>, &'static str> {
    if !raw.contains(&b'"') {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut quoted = false;
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        match (quoted, b) {
            (_, b'"') => quoted = !quoted,
            (true, b'\\') => match bytes.next() {
                Some(&escaped) => out.push(escaped),
                None => return Err("ends inside a backslash escape"),
            },
            _ => out.push(b),
        }
    }
    if quoted {
        return Err("has an unterminated quoted string");
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn percent_encoding_follows_the_binding() {
        assert_eq!(encode_value("plain-ASCII_1.0"), "plain-ASCII_1.0");
        assert_eq!(encode_value("a b"), "a%20b");
        assert_eq!(encode_value("say \"hi\""), "say%20%22hi%22");
        assert_eq!(encode_value("100%"), "100%25");
        assert_eq!(encode_value("€"), "%E2%82%AC");
        assert_eq!(encode_value("tab\there\n"), "tab%09here%0A");
        assert_eq!(encode_value("a,b;c=d/e'f"), "a,b;c=d/e'f");
    }

    #[test]
    fn header_values_are_percent_decoded() {
        let decode = |s: &[u8]| decode_value(s);
        assert_eq!(
            decode(b"Euro%20%E2%82%AC%20%F0%9F%98%80").unwrap(),
            "Euro € 😀"
        );
        assert_eq!(decode(b"lower%e2%82%ac").unwrap(), "lower€");
        assert_eq!(
            decode(b"%41%42c").unwrap(),
            "ABc",
            "needless escapes are accepted"
        );
        assert_eq!(decode(b"  padded \t").unwrap(), "padded");
        assert_eq!(decode(b"\"quoted value\"").unwrap(), "quoted value");
        assert_eq!(decode(br#""say \"hi\"""#).unwrap(), "say \"hi\"");
        assert_eq!(decode(b"\"100%25\"").unwrap(), "100%");
        assert_eq!(decode(b"a=\"b c\"").unwrap(), "a=b c");
        assert_eq!(decode("raw é".as_bytes()).unwrap(), "raw é");
        for bad in [
            &b"%C0%A0"[..],
            b"%E2%82",
            b"%FF",
            b"100%",
            b"%2",
            b"%g0",
            b"\"open",
            b"\"x\\",
            b"\xff",
        ] {
            assert!(decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    /// The binding's encoder (3.1.3.2) written independently, with upper-
    /// or lower-case hex (a sender may use either).
    fn percent_encode(s: &str, lower: bool) -> String {
        let mut out = String::new();
        for c in s.chars() {
            if ('!'..='~').contains(&c) && c != '"' && c != '%' {
                out.push(c);
            } else {
                let mut buf = [0; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&if lower {
                        format!("%{b:02x}")
                    } else {
                        format!("%{b:02X}")
                    });
                }
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn percent_encoding_round_trips(s in "\\PC*", lower in proptest::bool::ANY) {
            let encoded = percent_encode(&s, lower);
            proptest::prop_assert_eq!(decode_value(encoded.as_bytes()).unwrap(), s.clone());
            // What the bus sends, the bus reads back.
            proptest::prop_assert_eq!(decode_value(encode_value(&s).as_bytes()).unwrap(), s.clone());
            if !lower {
                proptest::prop_assert_eq!(encode_value(&s), encoded);
            }
        }
    }

    #[test]
    fn attributes_and_their_carriers() {
        assert_eq!(attribute("ce-id"), Some("id"));
        assert_eq!(attribute("content-type"), None);
        for (name, header, carrier_name) in [
            ("id", true, "ce-id"),
            ("myext", true, "ce-myext"),
            ("data", false, "data"),
            ("data_base64", false, "data"),
            ("datacontenttype", false, "content-type"),
            ("", true, ""),
        ] {
            assert_eq!(is_header_attribute(name), header, "{name}");
            assert_eq!(carrier(name), carrier_name, "{name}");
        }
        assert_eq!(value_text(&json!("s")).as_deref(), Some("s"));
        assert_eq!(value_text(&json!(["a", 1])).as_deref(), Some("a,1"));
        assert_eq!(value_text(&json!(true)).as_deref(), Some("true"));
        assert_eq!(value_text(&json!({"a": 1})).as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(value_text(&Value::Null), None);
    }
}
