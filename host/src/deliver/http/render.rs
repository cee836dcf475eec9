//! The request an event becomes: CloudEvents binary or structured mode
//! ([`crate::binding`]), or a transform's output as the body.

use reqwest::header::{self, HeaderMap, HeaderValue};

use super::super::{Failure, FailureCode, Payload};
use super::spec::DeliveryMode;
use crate::binding::view::EventView;
use crate::binding::{EncodeError, body, headers, media};

/// The request's event-dependent headers and body.
#[derive(Debug)]
pub(super) struct Rendered {
    pub(super) headers: HeaderMap,
    pub(super) body: Vec<u8>,
}

/// Lays out the payload per the CloudEvents HTTP binding. A transform's
/// output replaces the payload: sent as `application/json` when it parses
/// as JSON, else as UTF-8 text; binary mode still carries the attributes.
pub(super) fn render(mode: DeliveryMode, payload: Payload<'_>) -> Result<Rendered, Failure> {
    let mut headers = HeaderMap::new();
    // Binary mode reads the attributes (and the payload) from the stored
    // JSON; the event itself is never built for it.
    let view = match mode {
        DeliveryMode::Binary => Some(EventView::parse(payload.event.json()).map_err(|e| {
            Failure::new(
                FailureCode::RenderError,
                format!("the stored event is not a JSON object: {e}"),
            )
        })?),
        DeliveryMode::Structured => None,
    };
    if let Some(view) = &view {
        headers::to_headers(view, &mut headers).map_err(render_error)?;
    }
    let (content_type, body) = match (payload.body, &view) {
        (Some(text), _) => {
            let content_type = if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
                media::APPLICATION_JSON
            } else {
                "text/plain; charset=utf-8"
            };
            (Some(content_type.to_owned()), text.as_bytes().to_vec())
        }
        (None, Some(view)) => body::to_body(view).map_err(render_error)?,
        (None, None) => (
            Some(media::STRUCTURED_CONTENT_TYPE.to_owned()),
            payload.event_json(),
        ),
    };
    if let Some(content_type) = content_type {
        let value = HeaderValue::from_str(&content_type)
            .map_err(|_| render_error(EncodeError::ContentType))?;
        headers.insert(header::CONTENT_TYPE, value);
    }
    Ok(Rendered { headers, body })
}

/// The `Content-Type` of a batched request.
pub(super) const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json; charset=utf-8";

/// One event as a member of a batched request's array: the structured
/// event, exactly as structured mode sends it. A transform's output
/// replaces the event's data (as JSON when it parses as JSON, else as
/// text), the attributes staying, as binary mode keeps them in headers.
pub(super) fn render_member(payload: Payload<'_>) -> Result<Vec<u8>, Failure> {
    let Some(text) = payload.body else {
        return Ok(payload.event_json());
    };
    let mut map = payload.event.event().as_map().clone();
    map.remove("data_base64");
    let (content_type, data) = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(json) => (media::APPLICATION_JSON, json),
        Err(_) => ("text/plain; charset=utf-8", serde_json::Value::from(text)),
    };
    map.insert("datacontenttype".to_owned(), content_type.into());
    map.insert("data".to_owned(), data);
    serde_json::to_vec(&map).map_err(|e| Failure::new(FailureCode::RenderError, e.to_string()))
}

/// Joins rendered members into a batch body: a JSON array.
pub(super) fn batch_body<'a>(members: impl Iterator<Item = &'a [u8]>, len: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(len);
    body.push(b'[');
    for (i, member) in members.enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(member);
    }
    body.push(b']');
    body
}

fn render_error(error: EncodeError) -> Failure {
    Failure::new(FailureCode::RenderError, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::StoredEvent;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use serde_json::{Value, json};

    /// The event as deliveries get it from the log: its stored JSON, the
    /// object not built.
    fn event(value: Value) -> StoredEvent {
        let id = value["id"].as_str().unwrap_or_default().to_owned();
        StoredEvent::from_json(id, serde_json::to_vec(&value).unwrap().into())
    }

    fn base_event() -> Value {
        json!({
            "specversion": "1.0",
            "id": "evt-1",
            "source": "shop.orders",
            "type": "order.created",
        })
    }

    #[test]
    fn binary_mode_maps_attributes_to_ce_headers() {
        let mut value = base_event();
        value["time"] = json!("2026-01-01T00:00:00Z");
        value["subject"] = json!("order 42 \"rush\"");
        value["datacontenttype"] = json!("application/json");
        value["resources"] = json!(["arn:a", "arn:b"]);
        value["hops"] = json!(2);
        value["vip"] = json!(true);
        value["nothing"] = Value::Null;
        value["data"] = json!({"total": 120});
        let event = event(value);
        let rendered = render(
            DeliveryMode::Binary,
            Payload {
                event: &event,
                body: None,
            },
        )
        .unwrap();
        let h = &rendered.headers;
        assert_eq!(h["ce-specversion"], "1.0");
        assert_eq!(h["ce-id"], "evt-1");
        assert_eq!(h["ce-source"], "shop.orders");
        assert_eq!(h["ce-type"], "order.created");
        assert_eq!(h["ce-time"], "2026-01-01T00:00:00Z");
        assert_eq!(h["ce-subject"], "order%2042%20%22rush%22");
        assert_eq!(h["ce-resources"], "arn:a,arn:b");
        assert_eq!(h["ce-hops"], "2");
        assert_eq!(h["ce-vip"], "true");
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        for absent in [
            "ce-data",
            "ce-datacontenttype",
            "ce-data_base64",
            "ce-nothing",
        ] {
            assert!(!h.contains_key(absent), "{absent}");
        }
        assert_eq!(rendered.body, br#"{"total":120}"#);
    }

    #[test]
    fn batch_members_are_structured_events() {
        let mut value = base_event();
        value["data"] = json!({"total": 120});
        let ev = event(value.clone());
        let plain = Payload {
            event: &ev,
            body: None,
        };
        let member = render_member(plain).unwrap();
        let structured = render(DeliveryMode::Structured, plain).unwrap();
        assert_eq!(
            member, structured.body,
            "the same rendering as structured mode"
        );
        let body = batch_body([member.as_slice(), member.as_slice()].into_iter(), 0);
        let array: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(array, json!([value, value]));

        // A transform's output replaces the data; the attributes stay.
        for (text, data, content_type) in [
            (r#"{"n": 1}"#, json!({"n": 1}), "application/json"),
            ("order 42", json!("order 42"), "text/plain; charset=utf-8"),
        ] {
            let member = render_member(Payload {
                event: &ev,
                body: Some(text),
            })
            .unwrap();
            let member: Value = serde_json::from_slice(&member).unwrap();
            assert_eq!(member["id"], "evt-1");
            assert_eq!(member["data"], data);
            assert_eq!(member["datacontenttype"], content_type);
        }
        let mut value = base_event();
        value["data_base64"] = json!("AAE=");
        let binary = event(value);
        let member: Value = serde_json::from_slice(
            &render_member(Payload {
                event: &binary,
                body: Some("x"),
            })
            .unwrap(),
        )
        .unwrap();
        assert!(member.get("data_base64").is_none());
        assert_eq!(member["data"], "x");
    }

    #[test]
    fn binary_mode_bodies() {
        // JSON data without a content type: application/json.
        let mut value = base_event();
        value["data"] = json!([1, 2]);
        let r = render_binary(value);
        assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(r.body, b"[1,2]");

        // A string under a non-JSON content type is sent as the text itself.
        let mut value = base_event();
        value["datacontenttype"] = json!("text/plain");
        value["data"] = json!("hello");
        let r = render_binary(value);
        assert_eq!(r.headers[header::CONTENT_TYPE], "text/plain");
        assert_eq!(r.body, b"hello");

        // A string under a JSON content type is a JSON string.
        let mut value = base_event();
        value["datacontenttype"] = json!("application/vnd.x+json; charset=utf-8");
        value["data"] = json!("hello");
        assert_eq!(render_binary(value).body, br#""hello""#);

        // Binary data is decoded.
        let mut value = base_event();
        value["datacontenttype"] = json!("image/png");
        value["data_base64"] = json!(BASE64.encode([0u8, 159, 146, 150]));
        let r = render_binary(value);
        assert_eq!(r.headers[header::CONTENT_TYPE], "image/png");
        assert_eq!(r.body, [0u8, 159, 146, 150]);

        let mut value = base_event();
        value["data_base64"] = json!("AAEC");
        let r = render_binary(value);
        assert_eq!(r.headers[header::CONTENT_TYPE], "application/octet-stream");

        // No data: no body, no Content-Type.
        let r = render_binary(base_event());
        assert!(r.body.is_empty());
        assert!(!r.headers.contains_key(header::CONTENT_TYPE));

        // Broken base64 is a permanent render error.
        let mut value = base_event();
        value["data_base64"] = json!("not base64!");
        let err = render(
            DeliveryMode::Binary,
            Payload {
                event: &event(value),
                body: None,
            },
        )
        .unwrap_err();
        assert_eq!(err.code, "render_error");
    }

    fn render_binary(value: Value) -> Rendered {
        render(
            DeliveryMode::Binary,
            Payload {
                event: &event(value),
                body: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn structured_mode_and_transformed_bodies() {
        let mut value = base_event();
        value["data"] = json!({"a": 1});
        let event = event(value);
        let r = render(
            DeliveryMode::Structured,
            Payload {
                event: &event,
                body: None,
            },
        )
        .unwrap();
        assert_eq!(
            r.headers[header::CONTENT_TYPE],
            "application/cloudevents+json; charset=utf-8"
        );
        assert_eq!(r.body, event.json().to_vec());
        assert!(!r.headers.keys().any(|k| k.as_str().starts_with("ce-")));

        // A transform's output replaces the payload; binary mode keeps ce-*.
        let r = render(
            DeliveryMode::Binary,
            Payload {
                event: &event,
                body: Some(r#"{"order": 1}"#),
            },
        )
        .unwrap();
        assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(r.headers["ce-id"], "evt-1");
        assert_eq!(r.body, br#"{"order": 1}"#);
        let r = render(
            DeliveryMode::Structured,
            Payload {
                event: &event,
                body: Some("order 1 shipped"),
            },
        )
        .unwrap();
        assert_eq!(r.headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(r.body, b"order 1 shipped");
        assert!(!r.headers.contains_key("ce-id"));
    }

    #[test]
    fn deliveries_send_the_stored_bytes_without_building_the_event() {
        // Stored with other spacing than a fresh serialisation would have,
        // so the bytes sent show which were used.
        let stored = br#"{"specversion": "1.0", "id": "evt-1", "source": "shop.orders", "type": "order.created", "data": {"a": [1, 2]}}"#;
        let ev = StoredEvent::from_json("evt-1".into(), stored.to_vec().into());
        let payload = Payload {
            event: &ev,
            body: None,
        };
        assert_eq!(
            render(DeliveryMode::Structured, payload).unwrap().body,
            stored
        );
        assert_eq!(render_member(payload).unwrap(), stored);
        let binary = render(DeliveryMode::Binary, payload).unwrap();
        assert_eq!(binary.headers["ce-source"], "shop.orders");
        assert_eq!(binary.body, br#"{"a": [1, 2]}"#, "the payload as stored");
        assert!(!ev.is_built(), "no delivery so far needed the event built");
        // A transform's output in a batch member is laid over the event.
        let transformed = Payload {
            body: Some("x"),
            ..payload
        };
        let member: Value = serde_json::from_slice(&render_member(transformed).unwrap()).unwrap();
        assert_eq!(member["data"], "x");
        assert_eq!(member["id"], "evt-1");
        assert!(ev.is_built());
    }

    #[test]
    fn a_stored_event_that_is_not_an_object_fails_its_binary_delivery_alone() {
        let ev = StoredEvent::from_json("e".into(), b"[1]".to_vec().into());
        let payload = Payload {
            event: &ev,
            body: None,
        };
        let err = render(DeliveryMode::Binary, payload).unwrap_err();
        assert_eq!(err.code, "render_error");
    }
}
