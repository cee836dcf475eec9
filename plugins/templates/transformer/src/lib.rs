//! {{name}}: a Busbar transformer plugin.
//!
//! Build: `cargo build --target wasm32-wasip2 --release`
//! Test:  `cargo test`

use busbar_sdk::prelude::*;

/// Adds the configured `label` (default `processed`) to the event's JSON
/// data as `"label"`. Return an empty `Vec` to drop an event, several
/// events (ids from `event.derive(..)`) to split it.
pub struct Plugin;

impl Transformer for Plugin {
    fn transform(mut event: Event, cx: &Context) -> Result<Vec<Event>, PluginError> {
        let mut data = event.json_value()?;
        let Some(fields) = data.as_object_mut() else {
            return Err(PluginError::invalid_event("data is not a JSON object"));
        };
        let label = cx.config().get("label").unwrap_or("processed");
        fields.insert("label".to_owned(), Value::from(label));
        event.set_json(&data)?;
        Ok(vec![event])
    }
}

busbar_sdk::transformer!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_the_label() {
        let cx = Context::new(Config::from_pairs([("label", "vip")]));
        let event = Event::json("1", "shop", "order.created", &json!({"amount": 1})).unwrap();
        let out = Plugin::transform(event, &cx).unwrap();
        assert_eq!(out[0].json_value().unwrap()["label"], "vip");
    }
}
