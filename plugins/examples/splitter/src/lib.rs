//! Splits an event whose data holds an array into one event per element.
//!
//! Config:
//! - `pointer`: JSON pointer to the array in the data (default: the data
//!   itself);
//! - `type`: the `type` of the parts (default: the input's type);
//! - `max_parts`: the most parts allowed (default 1000); a larger array is an
//!   invalid event.
//!
//! Part `i` has the id `"{input id}-{i}"`, so a redelivered input yields the
//! same ids, and extensions `parentid`, `partindex` and `partcount`. An empty
//! array yields no events.

use busbar_sdk::prelude::*;

/// The splitting transformer.
pub struct Splitter;

impl Transformer for Splitter {
    fn transform(event: Event, cx: &Context) -> Result<Vec<Event>, PluginError> {
        let pointer = cx.config().get("pointer").unwrap_or_default();
        let max_parts: usize = cx.config().parse_or("max_parts", 1000)?;
        let mut data = event.json_value()?;
        let items = match data.pointer_mut(pointer).map(Value::take) {
            Some(Value::Array(items)) => items,
            Some(_) => {
                return Err(PluginError::invalid_event(format!(
                    "{pointer:?} is not an array"
                )));
            }
            None => {
                return Err(PluginError::invalid_event(format!(
                    "no {pointer:?} in data"
                )));
            }
        };
        if items.len() > max_parts {
            return Err(PluginError::invalid_event(format!(
                "{} elements exceed max_parts = {max_parts}",
                items.len()
            )));
        }
        let count = items.len().to_string();
        items
            .into_iter()
            .enumerate()
            .map(|(index, item)| {
                let mut part = event.derive(index);
                if let Some(ty) = cx.config().get("type") {
                    part.ty = ty.to_owned();
                }
                part.set_extension("parentid", event.id.as_str());
                part.set_extension("partindex", index.to_string());
                part.set_extension("partcount", count.as_str());
                part.set_json(&item)?;
                Ok(part)
            })
            .collect()
    }
}

busbar_sdk::transformer!(Splitter);

#[cfg(test)]
mod tests {
    use super::*;

    fn split(data: Value, config: &[(&str, &str)]) -> Result<Vec<Event>, PluginError> {
        let cx = Context::new(Config::from_pairs(config.iter().copied()));
        let event = Event::builder("batch-7", "shop", "orders.batch")
            .subject("s")
            .json(&data)
            .unwrap()
            .build();
        Splitter::transform(event, &cx)
    }

    #[test]
    fn one_event_per_element_with_deterministic_ids() {
        let parts = split(json!([{"n": 1}, {"n": 2}, 3]), &[]).unwrap();
        let ids: Vec<&str> = parts.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["batch-7-0", "batch-7-1", "batch-7-2"]);
        assert_eq!(parts[1].json_value().unwrap(), json!({"n": 2}));
        assert_eq!(parts[2].json_value().unwrap(), json!(3));
        assert_eq!(parts[1].extension("parentid"), Some("batch-7"));
        assert_eq!(parts[1].extension("partindex"), Some("1"));
        assert_eq!(parts[1].extension("partcount"), Some("3"));
        assert_eq!(parts[0].subject.as_deref(), Some("s"));
        assert_eq!(parts, split(json!([{"n": 1}, {"n": 2}, 3]), &[]).unwrap());
    }

    #[test]
    fn follows_pointer_and_renames_type() {
        let parts = split(
            json!({"order": {"lines": ["a", "b"]}}),
            &[("pointer", "/order/lines"), ("type", "order.line")],
        )
        .unwrap();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.ty == "order.line"));
    }

    #[test]
    fn empty_array_yields_nothing() {
        assert!(split(json!([]), &[]).unwrap().is_empty());
    }

    #[test]
    fn rejects_non_arrays_missing_pointers_and_oversized_arrays() {
        assert!(matches!(
            split(json!({"a": 1}), &[]),
            Err(PluginError::InvalidEvent(_))
        ));
        assert!(matches!(
            split(json!({"a": 1}), &[("pointer", "/b")]),
            Err(PluginError::InvalidEvent(_))
        ));
        assert!(matches!(
            split(json!([1, 2, 3]), &[("max_parts", "2")]),
            Err(PluginError::InvalidEvent(m)) if m.contains("max_parts")
        ));
        assert!(matches!(
            split(json!([1]), &[("max_parts", "many")]),
            Err(PluginError::InvalidConfig(_))
        ));
    }
}
