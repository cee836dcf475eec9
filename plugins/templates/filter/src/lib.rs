//! {{name}}: a Busbar filter plugin.
//!
//! Build: `cargo build --target wasm32-wasip2 --release`
//! Test:  `cargo test`

use busbar_sdk::prelude::*;

/// Passes events whose data has `field` (config, default `/amount`) above
/// `threshold` (config, default 0).
pub struct Plugin;

impl Filter for Plugin {
    fn filter(event: &Event, cx: &Context) -> Result<bool, PluginError> {
        let field = cx.config().get("field").unwrap_or("/amount");
        let threshold: f64 = cx.config().parse_or("threshold", 0.0)?;
        let value = event.json_value()?.pointer(field).and_then(Value::as_f64);
        Ok(value.is_some_and(|v| v > threshold))
    }
}

busbar_sdk::filter!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_values_above_the_threshold() {
        let cx = Context::new(Config::from_pairs([("threshold", "10")]));
        let big = Event::json("1", "shop", "order.created", &json!({"amount": 11})).unwrap();
        let small = Event::json("2", "shop", "order.created", &json!({"amount": 9})).unwrap();
        assert!(Plugin::filter(&big, &cx).unwrap());
        assert!(!Plugin::filter(&small, &cx).unwrap());
    }
}
