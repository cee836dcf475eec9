//! Passes events whose amount exceeds a threshold.
//!
//! Config: `field`, a JSON pointer into the event data (default `/amount`),
//! and `threshold` (a number, required). The amount may be a JSON number or
//! a numeric string; an event without it is dropped.

use busbar_sdk::prelude::*;

/// The amount filter.
pub struct AmountFilter;

impl Filter for AmountFilter {
    fn filter(event: &Event, cx: &Context) -> Result<bool, PluginError> {
        let field = cx.config().get("field").unwrap_or("/amount");
        let threshold: f64 = cx.config().require_parsed("threshold")?;
        let data = event.json_value()?;
        let amount = match data.pointer(field) {
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        Ok(amount.is_some_and(|amount| amount > threshold))
    }
}

busbar_sdk::filter!(AmountFilter);

#[cfg(test)]
mod tests {
    use super::*;

    fn cx(pairs: &[(&str, &str)]) -> Context {
        Context::new(Config::from_pairs(pairs.iter().copied()))
    }

    fn order(data: Value) -> Event {
        Event::json("1", "shop", "order.created", &data).unwrap()
    }

    #[test]
    fn passes_amounts_above_threshold_only() {
        let cx = cx(&[("threshold", "100")]);
        assert!(AmountFilter::filter(&order(json!({"amount": 100.5})), &cx).unwrap());
        assert!(!AmountFilter::filter(&order(json!({"amount": 100})), &cx).unwrap());
        assert!(!AmountFilter::filter(&order(json!({"amount": -5})), &cx).unwrap());
    }

    #[test]
    fn follows_configured_pointer_and_numeric_strings() {
        let cx = cx(&[("threshold", "10"), ("field", "/order/total")]);
        assert!(AmountFilter::filter(&order(json!({"order": {"total": "12.5"}})), &cx).unwrap());
        assert!(!AmountFilter::filter(&order(json!({"amount": 50})), &cx).unwrap());
    }

    #[test]
    fn drops_events_without_a_numeric_amount() {
        let cx = cx(&[("threshold", "0")]);
        assert!(!AmountFilter::filter(&order(json!({"amount": "lots"})), &cx).unwrap());
        assert!(!AmountFilter::filter(&order(json!({"amount": null})), &cx).unwrap());
    }

    #[test]
    fn missing_or_bad_threshold_is_invalid_config() {
        let event = order(json!({"amount": 1}));
        assert!(matches!(
            AmountFilter::filter(&event, &cx(&[])),
            Err(PluginError::InvalidConfig(m)) if m.contains("threshold")
        ));
        assert!(matches!(
            AmountFilter::filter(&event, &cx(&[("threshold", "ten")])),
            Err(PluginError::InvalidConfig(_))
        ));
    }

    #[test]
    fn event_without_json_data_is_invalid() {
        let event = Event::new("1", "shop", "order.created");
        assert!(matches!(
            AmountFilter::filter(&event, &cx(&[("threshold", "1")])),
            Err(PluginError::InvalidEvent(_))
        ));
    }
}
