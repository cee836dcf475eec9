//! Posts a Slack-style incoming-webhook message (`{"text": ...}`) per event.
//!
//! Config:
//! - `webhook_url` (required): the incoming-webhook URL;
//! - `channel`: sent as `channel` when given;
//! - `template`: the message text, with placeholders `{id}`, `{source}`,
//!   `{type}`, `{subject}`, `{time}`, `{data}` (the data as JSON text) and
//!   `{data.a.b}` (a field of JSON data; `{data.items.0}` indexes arrays).
//!   Unknown or missing placeholders render as empty. Default:
//!   `"{type} from {source}: {subject}"`.
//!
//! Outcomes follow the HTTP status: 2xx delivered, 429/5xx retryable, other
//! 4xx permanent.

use busbar_sdk::prelude::*;

/// The default message template.
pub const DEFAULT_TEMPLATE: &str = "{type} from {source}: {subject}";

/// The chat notification connector.
pub struct ChatNotify;

impl Connector for ChatNotify {
    fn validate_config(config: &Config) -> Result<(), PluginError> {
        busbar_sdk::http::split_url(config.require("webhook_url")?)
            .map_err(|e| PluginError::invalid_config(format!("`webhook_url`: {e}")))?;
        let template = config.get("template").unwrap_or(DEFAULT_TEMPLATE);
        if template.matches('{').count() != template.matches('}').count() {
            return Err(PluginError::invalid_config(
                "`template` has unbalanced braces",
            ));
        }
        Ok(())
    }

    fn deliver(event: &Event, cx: &Context) -> Result<(), DeliveryError> {
        let config = cx.config();
        let text = render(config.get("template").unwrap_or(DEFAULT_TEMPLATE), event);
        let mut message = json!({ "text": text });
        if let Some(channel) = config.get("channel") {
            message["channel"] = Value::from(channel);
        }
        let request = Request::post(config.require("webhook_url")?).json(&message)?;
        cx.http().send(&request)?.error_for_status()
    }
}

busbar_sdk::connector!(ChatNotify);

/// Renders `template` for `event`.
pub fn render(template: &str, event: &Event) -> String {
    let data = event.json_value().ok();
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|i| open + i) else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push_str(&placeholder(&rest[open + 1..close], event, data.as_ref()));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

fn placeholder(name: &str, event: &Event, data: Option<&Value>) -> String {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    match name {
        "id" => event.id.clone(),
        "source" => event.source.clone(),
        "type" => event.ty.clone(),
        "subject" => text(&event.subject),
        "time" => text(&event.time),
        "data" => match data {
            Some(value) => value.to_string(),
            None => event
                .data
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned(),
        },
        _ => match (name.strip_prefix("data."), data) {
            (Some(path), Some(value)) => {
                let pointer = format!("/{}", path.replace('.', "/"));
                match value.pointer(&pointer) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                }
            }
            _ => String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use busbar_sdk::serde_json;
    use busbar_sdk::testing::FakeHttp;

    fn order() -> Event {
        Event::builder("o-1", "shop", "order.created")
            .subject("order/1")
            .json(&json!({"total": 120.5, "customer": {"name": "Ann"}, "items": ["a", "b"]}))
            .unwrap()
            .build()
    }

    #[test]
    fn renders_attributes_and_data_fields() {
        let event = order();
        assert_eq!(
            render(DEFAULT_TEMPLATE, &event),
            "order.created from shop: order/1"
        );
        assert_eq!(
            render(
                "{data.customer.name} spent {data.total} on {data.items.1} ({id}){nope}",
                &event
            ),
            "Ann spent 120.5 on b (o-1)"
        );
        assert_eq!(render("raw {data.items}", &event), r#"raw ["a","b"]"#);
        assert_eq!(render("unclosed {id", &event), "unclosed {id");
    }

    #[test]
    fn posts_text_and_channel() {
        let http = FakeHttp::new();
        let cx = Context::new(Config::from_pairs([
            ("webhook_url", "https://hooks.slack.example/services/T/B/X"),
            ("channel", "#sales"),
            ("template", "New order {subject}: {data.total}"),
        ]))
        .with_http(http.clone());
        ChatNotify::deliver(&order(), &cx).unwrap();
        let request = &http.requests()[0];
        assert_eq!(
            request.header_value("content-type"),
            Some("application/json")
        );
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(
            body,
            json!({"text": "New order order/1: 120.5", "channel": "#sales"})
        );
    }

    #[test]
    fn rate_limits_retry_and_bad_requests_do_not() {
        let http = FakeHttp::new();
        http.respond(Response::new(429).with_header("retry-after", "2"))
            .respond(Response::new(404).with_body(b"no_service".to_vec()));
        let cx = Context::new(Config::from_pairs([("webhook_url", "https://h.example/x")]))
            .with_http(http.clone());
        assert_eq!(
            ChatNotify::deliver(&order(), &cx),
            Err(DeliveryError::retry_after("HTTP 429", 2_000))
        );
        assert_eq!(
            ChatNotify::deliver(&order(), &cx),
            Err(DeliveryError::permanent("HTTP 404: no_service"))
        );
    }

    #[test]
    fn validate_config_requires_a_webhook_url() {
        assert!(ChatNotify::validate_config(&Config::default()).is_err());
        assert!(
            ChatNotify::validate_config(&Config::from_pairs([("webhook_url", "nope")])).is_err()
        );
        let bad_template =
            Config::from_pairs([("webhook_url", "https://h.example"), ("template", "{x")]);
        assert!(ChatNotify::validate_config(&bad_template).is_err());
        let ok = Config::from_pairs([("webhook_url", "https://h.example")]);
        assert_eq!(ChatNotify::validate_config(&ok), Ok(()));
    }
}
