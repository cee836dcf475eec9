//! Binary mode's body: the event's payload as the request body, its media
//! type as `Content-Type`.
//!
//! Decoding (a request into an event): a JSON media type makes `data` the
//! parsed JSON; `text/*` that is UTF-8 makes `data` a string; anything else
//! (including no `Content-Type`) is kept byte-exact as `data_base64`.
//! Encoding (an event into a request): `data_base64` is sent decoded (as
//! `application/octet-stream` without a declared type); `data` is sent as
//! its JSON text (as `application/json` without a declared type), except a
//! string under a non-JSON type, which is sent as the text itself.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;

use super::view::EventView;
use super::{EncodeError, media};
use std::borrow::Cow;

/// The event member a binary-mode body becomes, and its value.
///
/// Fails only when `content_type` declares JSON and the body does not parse.
pub fn from_body(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(&'static str, Value), serde_json::Error> {
    if let Some(ct) = content_type {
        if media::is_json(ct) {
            return serde_json::from_slice(body).map(|data| ("data", data));
        }
        if media::is_text(ct)
            && let Ok(text) = std::str::from_utf8(body)
        {
            return Ok(("data", Value::String(text.to_owned())));
        }
    }
    Ok(("data_base64", Value::String(BASE64.encode(body))))
}

/// The `Content-Type` (none when the event has no data and declares no
/// type) and body of a binary-mode request carrying the event's payload.
pub fn to_body(event: &EventView<'_>) -> Result<(Option<String>, Vec<u8>), EncodeError> {
    let declared = event.str_attr("datacontenttype").map(str::to_owned);
    if let Some(encoded) = event.attribute("data_base64").filter(|v| !v.is_null()) {
        let bytes = encoded
            .as_str()
            .and_then(|s| BASE64.decode(s).ok())
            .ok_or(EncodeError::Base64)?;
        let content_type = declared.unwrap_or_else(|| media::OCTET_STREAM.to_owned());
        return Ok((Some(content_type), bytes));
    }
    match event.data() {
        None => Ok((declared, Vec::new())),
        Some(data) => {
            let content_type = declared.unwrap_or_else(|| media::APPLICATION_JSON.to_owned());
            let text = data.get();
            let body = match serde_json::from_str::<Cow<'_, str>>(text) {
                // Non-JSON media types carry their text as a JSON string.
                Ok(string) if !media::is_json(&content_type) => string.into_owned().into_bytes(),
                // JSON goes as stored (compact, as serde_json writes it).
                _ => text.as_bytes().to_vec(),
            };
            Ok((Some(content_type), body))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(value: &Value) -> Vec<u8> {
        serde_json::to_vec(value).unwrap()
    }

    #[test]
    fn bodies_decode_by_media_type() {
        let cases: &[(Option<&str>, &[u8], &str, Value)] = &[
            (
                Some("application/json"),
                br#"{"a":1}"#,
                "data",
                json!({"a": 1}),
            ),
            (Some("text/json"), b"[1]", "data", json!([1])),
            (Some("application/vnd.x+json"), b"\"s\"", "data", json!("s")),
            (
                Some("text/plain"),
                "héllo".as_bytes(),
                "data",
                json!("héllo"),
            ),
            (Some("text/plain"), b"h\xe9", "data_base64", json!("aOk=")),
            (Some("image/png"), b"\x00\xff", "data_base64", json!("AP8=")),
            (None, b"{}", "data_base64", json!("e30=")),
        ];
        for (ct, body, member, value) in cases {
            assert_eq!(
                from_body(*ct, body).unwrap(),
                (*member, value.clone()),
                "{ct:?}"
            );
        }
        assert!(from_body(Some("application/json"), b"{nope").is_err());
    }

    #[test]
    fn what_is_encoded_decodes_back() {
        let base = json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t"});
        for (ct, member, data) in [
            (Some("application/json"), "data", json!({"total": 3})),
            (None, "data", json!([1, 2])),
            (Some("text/plain; charset=utf-8"), "data", json!("hello")),
            (Some("image/png"), "data_base64", json!("AJ+Slg==")),
        ] {
            let mut value = base.clone();
            value[member] = data.clone();
            if let Some(ct) = ct {
                value["datacontenttype"] = json!(ct);
            }
            let json = stored(&value);
            let (content_type, body) = to_body(&EventView::parse(&json).unwrap()).unwrap();
            let (back_member, back) = from_body(content_type.as_deref(), &body).unwrap();
            assert_eq!((back_member, back), (member, data), "{ct:?}");
        }
    }

    /// A JSON payload goes out as the stored text, which must be what
    /// serialising the parsed payload writes (the store holds serde_json's
    /// compact form): numbers, escapes and member order included.
    #[test]
    fn a_json_payload_is_sent_as_serialising_it_would_write_it() {
        let base = json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t"});
        for data in [
            json!({"z": 1, "a": [1.5, -0.0, 1e300, 12345678901234567890u64, -7]}),
            json!({"s": "\u{e9}\"\\\u{1}\u{2028}/", "n": null, "t": true}),
            json!([[], {}, ""]),
            json!(0.1),
            json!("a string under a JSON type"),
        ] {
            let mut value = base.clone();
            value["data"] = data.clone();
            let json = stored(&value);
            let (content_type, body) = to_body(&EventView::parse(&json).unwrap()).unwrap();
            assert_eq!(content_type.as_deref(), Some("application/json"));
            assert_eq!(body, serde_json::to_vec(&data).unwrap(), "{data}");
        }
    }
}
