//! Conversions between bus events and `cloudevents-sdk` events, for Rust code
//! that speaks the SDK (clients building events with its `EventBuilder`,
//! bindings that render events with it).

use serde_json::{Map, Value};

use super::error::IngestError;
use super::{IngestLimits, validate};
use crate::event::Event;

/// Converts a bus event into a `cloudevents::Event`.
///
/// Extension values outside the CloudEvents type system (PutEvents'
/// `resources` array) become their JSON text, since the SDK holds only
/// strings, booleans and integers. The SDK parses `time` into UTC, so an
/// offset other than `Z` is normalised.
pub fn to_sdk_event(event: &Event) -> Result<cloudevents::Event, serde_json::Error> {
    let map: Map<String, Value> = event
        .as_map()
        .iter()
        .map(|(name, value)| {
            let value = match value {
                Value::Array(_) | Value::Object(_) if name != validate::attr::DATA => {
                    Value::String(value.to_string())
                }
                _ => value.clone(),
            };
            (name.clone(), value)
        })
        .collect();
    serde_json::from_value(Value::Object(map))
}

/// Validates a `cloudevents::Event` as if it had arrived in structured mode.
///
/// The SDK's builder checks far less than the bus (see the module docs of
/// [`crate::ingest`]), so an SDK event can still be refused here.
pub fn from_sdk_event(
    event: &cloudevents::Event,
    limits: &IngestLimits,
) -> Result<Event, IngestError> {
    let value = serde_json::to_value(event).map_err(|err| IngestError::MalformedJson {
        field: None,
        reason: err.to_string(),
    })?;
    let Value::Object(mut map) = value else {
        return Err(IngestError::WrongShape {
            field: None,
            expected: "a JSON object (one CloudEvent)",
        });
    };
    validate::check_attributes(&mut map)?;
    // No input size to bound the output by: count exactly.
    validate::check_size(&map, usize::MAX, limits)?;
    Ok(Event::from_validated(map))
}

#[cfg(test)]
mod tests {
    use cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};
    use serde_json::json;

    use super::*;

    #[test]
    fn sdk_events_round_trip() {
        let sdk = EventBuilderV10::new()
            .id("42")
            .source("/shop")
            .ty("order.created")
            .time("2024-01-02T03:04:05Z")
            .extension("tenant", "acme")
            .data("application/json", json!({"total": 5}))
            .build()
            .unwrap();
        let event = from_sdk_event(&sdk, &IngestLimits::default()).unwrap();
        assert_eq!(event.id(), "42");
        assert_eq!(event.str_attr("tenant"), Some("acme"));
        assert_eq!(event.as_map()["data"], json!({"total": 5}));
        let back = to_sdk_event(&event).unwrap();
        assert_eq!(back.id(), "42");
        assert_eq!(back.ty(), "order.created");
    }

    #[test]
    fn sdk_events_are_validated_by_the_bus_rules() {
        // The SDK accepts any non-empty source; the bus wants a URI-reference.
        let sdk = EventBuilderV10::new()
            .id("1")
            .source("not a uri")
            .ty("t")
            .build()
            .unwrap();
        let err = from_sdk_event(&sdk, &IngestLimits::default()).unwrap_err();
        assert_eq!(
            (err.code(), err.field()),
            ("invalid_attribute", Some("source"))
        );
    }

    #[test]
    fn array_extensions_become_json_text() {
        let map = json!({
            "specversion": "1.0", "id": "1", "source": "s", "type": "t",
            "resources": ["arn:a", "arn:b"]
        });
        let Value::Object(map) = map else {
            unreachable!()
        };
        let sdk = to_sdk_event(&Event::from_validated(map)).unwrap();
        let resources = sdk.extension("resources").unwrap().to_string();
        assert_eq!(resources, r#"["arn:a","arn:b"]"#);
    }
}
