//! Adds fields from the configuration, and one derived field, to event data.
//!
//! Config:
//! - `region`, `tenant_tier`: added to the data under the same names;
//! - `field.<name>`: any other field to add, e.g. `field.team = payments`;
//! - `overwrite`: `true` to replace fields the data already has (default:
//!   existing fields win);
//! - `priority_tiers`: comma-separated tiers that make `priority` `high`
//!   (default `gold,platinum,enterprise`).
//!
//! Derived: `priority` is `high` when the tenant tier is one of the priority
//! tiers or the data's `amount` is at least `priority_amount` (default
//! 10000), `normal` otherwise. The region is also set as the `region`
//! extension attribute, so patterns can match it. Data must be a JSON object
//! (an event without data starts from `{}`).

use busbar_sdk::prelude::*;

/// The enrichment transformer.
pub struct Enrich;

impl Transformer for Enrich {
    fn transform(mut event: Event, cx: &Context) -> Result<Vec<Event>, PluginError> {
        let config = cx.config();
        let overwrite: bool = config.parse_or("overwrite", false)?;
        let priority_amount: f64 = config.parse_or("priority_amount", 10_000.0)?;
        let mut data = match event.data {
            Some(_) => event.json_value()?,
            None => json!({}),
        };
        let Value::Object(fields) = &mut data else {
            return Err(PluginError::invalid_event("data is not a JSON object"));
        };
        let added = config.iter().filter_map(|(key, value)| match key {
            "region" | "tenant_tier" => Some((key, value)),
            _ => key.strip_prefix("field.").map(|name| (name, value)),
        });
        for (name, value) in added {
            if overwrite || !fields.contains_key(name) {
                fields.insert(name.to_owned(), Value::from(value));
            }
        }
        let tier = fields
            .get("tenant_tier")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let priority_tiers = config
            .get("priority_tiers")
            .unwrap_or("gold,platinum,enterprise");
        let big = fields
            .get("amount")
            .and_then(Value::as_f64)
            .is_some_and(|a| a >= priority_amount);
        let vip = priority_tiers
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(tier) && !tier.is_empty());
        fields.insert(
            "priority".to_owned(),
            Value::from(if vip || big { "high" } else { "normal" }),
        );
        if let Some(region) = config.get("region") {
            event.set_extension("region", region);
        }
        event.set_json(&data)?;
        Ok(vec![event])
    }
}

busbar_sdk::transformer!(Enrich);

#[cfg(test)]
mod tests {
    use super::*;

    fn enrich(data: Option<Value>, config: &[(&str, &str)]) -> Result<Event, PluginError> {
        let cx = Context::new(Config::from_pairs(config.iter().copied()));
        let mut event = Event::new("1", "shop", "order.created");
        if let Some(data) = data {
            event.set_json(&data).unwrap();
        }
        let mut out = Enrich::transform(event, &cx)?;
        assert_eq!(out.len(), 1);
        Ok(out.remove(0))
    }

    #[test]
    fn adds_configured_fields_and_region_extension() {
        let out = enrich(
            Some(json!({"amount": 5})),
            &[
                ("region", "eu-west-1"),
                ("tenant_tier", "silver"),
                ("field.team", "payments"),
            ],
        )
        .unwrap();
        assert_eq!(
            out.json_value().unwrap(),
            json!({"amount": 5, "region": "eu-west-1", "tenant_tier": "silver", "team": "payments", "priority": "normal"})
        );
        assert_eq!(out.extension("region"), Some("eu-west-1"));
    }

    #[test]
    fn priority_from_tier_or_amount() {
        let gold = enrich(Some(json!({})), &[("tenant_tier", "Gold")]).unwrap();
        assert_eq!(gold.json_value().unwrap()["priority"], "high");
        let big = enrich(Some(json!({"amount": 20000})), &[("tenant_tier", "bronze")]).unwrap();
        assert_eq!(big.json_value().unwrap()["priority"], "high");
        let custom = enrich(
            Some(json!({"amount": 50})),
            &[
                ("tenant_tier", "bronze"),
                ("priority_tiers", "bronze"),
                ("priority_amount", "1e9"),
            ],
        )
        .unwrap();
        assert_eq!(custom.json_value().unwrap()["priority"], "high");
    }

    #[test]
    fn existing_fields_win_unless_overwrite() {
        let kept = enrich(Some(json!({"region": "us"})), &[("region", "eu")]).unwrap();
        assert_eq!(kept.json_value().unwrap()["region"], "us");
        let replaced = enrich(
            Some(json!({"region": "us"})),
            &[("region", "eu"), ("overwrite", "true")],
        )
        .unwrap();
        assert_eq!(replaced.json_value().unwrap()["region"], "eu");
    }

    #[test]
    fn no_data_starts_empty_and_non_objects_are_invalid() {
        let out = enrich(None, &[]).unwrap();
        assert_eq!(out.json_value().unwrap(), json!({"priority": "normal"}));
        assert!(matches!(
            enrich(Some(json!([1])), &[]),
            Err(PluginError::InvalidEvent(_))
        ));
        assert!(matches!(
            enrich(Some(json!({})), &[("overwrite", "maybe")]),
            Err(PluginError::InvalidConfig(_))
        ));
    }
}
