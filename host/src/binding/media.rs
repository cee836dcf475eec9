//! Media types: the one rule for "is this JSON?", and the CloudEvents types.
//!
//! A media type declares JSON when, stripped of parameters, it has the form
//! `*/json` or `*/*+json` (CloudEvents JSON format 1.0, section 3.1):
//! `application/json`, `text/json`, `application/cloudevents+json`,
//! `application/vnd.api+json`, ... Type and subtype must be RFC 9110 tokens,
//! a `+json` suffix needs a name before it, and case does not matter. An
//! absent content type means JSON ([`declares_json`]), as the JSON format
//! says. The guest SDK (`plugins/sdk/src/event.rs`) carries a copy of this
//! rule; both are held to the same case table, `tests/data/media_types.json`.

/// The JSON media type.
pub const APPLICATION_JSON: &str = "application/json";
/// The JSON event format (structured mode).
pub const STRUCTURED: &str = "application/cloudevents+json";
/// The JSON batch format (batched mode).
pub const BATCH: &str = "application/cloudevents-batch+json";
/// The `Content-Type` the bus sends in structured mode.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";
/// The `Content-Type` of binary data without a declared type.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// The media type without parameters and surrounding blanks, e.g.
/// `application/json` (case kept).
pub fn essence(media_type: &str) -> &str {
    let end = media_type.find(';').unwrap_or(media_type.len());
    media_type[..end].trim_matches([' ', '\t'])
}

/// Whether a media type declares JSON: `*/json` or `*/*+json`, any case,
/// parameters ignored (see the module docs).
pub fn is_json(media_type: &str) -> bool {
    let Some((kind, subtype)) = essence(media_type).split_once('/') else {
        return false;
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(is_tchar);
    if !token(kind) || !token(subtype) {
        return false;
    }
    // Tokens are ASCII, so the byte slice is on a character boundary.
    subtype.eq_ignore_ascii_case("json")
        || subtype.len() > 5 && subtype[subtype.len() - 5..].eq_ignore_ascii_case("+json")
}

/// Whether an event's `datacontenttype` declares JSON data; absent means
/// JSON (CloudEvents JSON format 1.0, section 3.1).
pub fn declares_json(content_type: Option<&str>) -> bool {
    content_type.is_none_or(is_json)
}

/// Whether a media type is `text/*`, any case.
pub fn is_text(media_type: &str) -> bool {
    essence(media_type)
        .get(..5)
        .is_some_and(|t| t.eq_ignore_ascii_case("text/"))
}

/// An RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cases the host and the guest SDK must both answer as listed.
    #[test]
    fn json_media_types_follow_the_shared_table() {
        let table: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/data/media_types.json")).unwrap();
        let cases = table["cases"].as_array().unwrap();
        assert!(cases.len() > 20);
        for case in cases {
            let media_type = case["media_type"].as_str();
            let json = case["json"].as_bool().unwrap();
            assert_eq!(declares_json(media_type), json, "{media_type:?}");
            if let Some(media_type) = media_type {
                assert_eq!(is_json(media_type), json, "{media_type:?}");
            }
        }
    }

    /// Moved from ingest's media-type syntax tests.
    #[test]
    fn media_type_kinds() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("text/json"));
        assert!(is_json("application/geo+json"));
        assert!(is_json("application/cloudevents+JSON"));
        assert!(!is_json("application/+json"));
        assert!(!is_json("application/jsonx"));
        assert!(!is_json("application/xml"));
        assert!(!is_json("json"));
        assert!(is_text("text/plain"));
        assert!(is_text("Text/CSV; charset=utf-8"));
        assert!(!is_text("application/text"));
        assert_eq!(essence(" text/plain ; charset=utf-8"), "text/plain");
    }

    #[test]
    fn essence_and_text() {
        assert_eq!(essence(" text/plain ; charset=utf-8"), "text/plain");
        assert_eq!(essence("Application/JSON"), "Application/JSON");
        assert!(is_text("text/plain"));
        assert!(is_text("TEXT/csv; charset=utf-8"));
        assert!(!is_text("text"));
        assert!(!is_text("application/text"));
    }
}
