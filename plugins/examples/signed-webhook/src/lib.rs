//! POSTs each event as JSON to a URL, signed per
//! [Standard Webhooks](https://www.standardwebhooks.com/).
//!
//! Config:
//! - `url` (required): the `http(s)://` endpoint;
//! - `secret` (required): the signing key, either `whsec_<base64>` (the
//!   Standard Webhooks form) or any other string, used as raw bytes;
//! - `body`: `event` (default) posts the CloudEvents structured JSON form,
//!   `data` posts the event data alone;
//! - `timeout_ms`: request timeout (default 10000).
//!
//! Headers: `webhook-id` (the event id), `webhook-timestamp` (Unix seconds)
//! and `webhook-signature` = `v1,` + base64(HMAC-SHA256(key,
//! `"{id}.{timestamp}.{body}"`)).
//!
//! Outcomes: 2xx delivered; 429, 408 and 5xx retryable (honouring
//! `Retry-After`); other 4xx permanent; a host that is not allowed is
//! permanent; timeouts and connection failures are retryable.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use busbar_sdk::prelude::*;
use busbar_sdk::serde_json;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The signed webhook connector.
pub struct SignedWebhook;

impl Connector for SignedWebhook {
    fn validate_config(config: &Config) -> Result<(), PluginError> {
        busbar_sdk::http::split_url(config.require("url")?)
            .map_err(|e| PluginError::invalid_config(format!("`url`: {e}")))?;
        signing_key(config)?;
        body_mode(config)?;
        config.parse::<u64>("timeout_ms")?;
        Ok(())
    }

    fn deliver(event: &Event, cx: &Context) -> Result<(), DeliveryError> {
        let config = cx.config();
        let key = signing_key(config)?;
        let body = match body_mode(config)? {
            BodyMode::Event => serde_json::to_vec(&event.to_structured_json()),
            BodyMode::Data => serde_json::to_vec(&event.json_value()?),
        }
        .map_err(|e| DeliveryError::permanent(format!("cannot serialise event: {e}")))?;
        let timestamp = cx.unix_time();
        let signature = sign(&key, &event.id, timestamp, &body)?;
        let timeout = Duration::from_millis(config.parse_or("timeout_ms", 10_000)?);
        let request = Request::post(config.require("url")?)
            .header("content-type", "application/json")
            .header("webhook-id", event.id.as_str())
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .timeout(timeout);
        let response = cx.http().send(&request)?;
        if !response.is_success() {
            warn!(
                "webhook for event {} answered {}",
                event.id, response.status
            );
        }
        response.error_for_status()
    }
}

busbar_sdk::connector!(SignedWebhook);

/// What the request body holds.
enum BodyMode {
    Event,
    Data,
}

fn body_mode(config: &Config) -> Result<BodyMode, PluginError> {
    match config.get("body").unwrap_or("event") {
        "event" => Ok(BodyMode::Event),
        "data" => Ok(BodyMode::Data),
        other => Err(PluginError::invalid_config(format!(
            "`body` must be `event` or `data`, not {other:?}"
        ))),
    }
}

/// The HMAC key the `secret` config value stands for.
pub fn signing_key(config: &Config) -> Result<Vec<u8>, PluginError> {
    let secret = config.require("secret")?;
    match secret.strip_prefix("whsec_") {
        Some(encoded) => STANDARD
            .decode(encoded)
            .map_err(|e| PluginError::invalid_config(format!("`secret` is not valid base64: {e}"))),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// The `webhook-signature` header value for one message.
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> Result<String, PluginError> {
    // HMAC accepts keys of any length; the error exists for other MACs.
    let mut mac = Hmac::<Sha256>::new_from_slice(key)
        .map_err(|e| PluginError::internal(format!("HMAC key: {e}")))?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use busbar_sdk::testing::FakeHttp;
    use std::time::UNIX_EPOCH;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn context(http: &FakeHttp, extra: &[(&str, &str)]) -> Context {
        let mut pairs = vec![("url", "https://hooks.example.com/in"), ("secret", SECRET)];
        pairs.extend_from_slice(extra);
        Context::new(Config::from_pairs(pairs))
            .with_http(http.clone())
            .with_time(UNIX_EPOCH + Duration::from_secs(1_614_265_330))
    }

    #[test]
    fn signature_matches_the_standard_webhooks_vector() {
        let key = signing_key(&Config::from_pairs([("secret", SECRET)])).unwrap();
        assert_eq!(
            sign(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            )
            .unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn posts_signed_structured_event() {
        let http = FakeHttp::new();
        let event = Event::json("evt-1", "shop", "order.created", &json!({"total": 3})).unwrap();
        SignedWebhook::deliver(&event, &context(&http, &[])).unwrap();

        let request = &http.requests()[0];
        assert_eq!(request.url, "https://hooks.example.com/in");
        assert_eq!(request.header_value("webhook-id"), Some("evt-1"));
        assert_eq!(
            request.header_value("webhook-timestamp"),
            Some("1614265330")
        );
        let key = signing_key(&Config::from_pairs([("secret", SECRET)])).unwrap();
        let expected = sign(&key, "evt-1", 1_614_265_330, &request.body).unwrap();
        assert_eq!(
            request.header_value("webhook-signature"),
            Some(expected.as_str())
        );
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["type"], "order.created");
        assert_eq!(body["data"], json!({"total": 3}));
    }

    #[test]
    fn data_mode_posts_data_only() {
        let http = FakeHttp::new();
        let event = Event::json("e", "s", "t", &json!([1, 2])).unwrap();
        SignedWebhook::deliver(&event, &context(&http, &[("body", "data")])).unwrap();
        assert_eq!(http.requests()[0].body, b"[1,2]");
    }

    #[test]
    fn maps_statuses_to_outcomes() {
        let http = FakeHttp::new();
        http.respond(Response::new(503).with_header("Retry-After", "30"))
            .respond(Response::new(429))
            .respond(Response::new(400))
            .respond(Response::new(204));
        let cx = context(&http, &[]);
        let events: Vec<Event> = (0..4)
            .map(|i| Event::new(i.to_string(), "s", "t"))
            .collect();
        let outcomes = SignedWebhook::deliver_batch(&events, &cx);
        assert_eq!(
            outcomes[0],
            Err(DeliveryError::retry_after("HTTP 503", 30_000))
        );
        assert_eq!(outcomes[1], Err(DeliveryError::retryable("HTTP 429")));
        assert_eq!(outcomes[2], Err(DeliveryError::permanent("HTTP 400")));
        assert_eq!(outcomes[3], Ok(()));
    }

    #[test]
    fn transport_errors_map_to_retryable_or_permanent() {
        let http = FakeHttp::new();
        http.fail(HttpError::Denied("host not allowed".into()))
            .fail(HttpError::Timeout("slow".into()));
        let cx = context(&http, &[]);
        let event = Event::new("1", "s", "t");
        assert!(
            !SignedWebhook::deliver(&event, &cx)
                .unwrap_err()
                .is_retryable()
        );
        assert!(
            SignedWebhook::deliver(&event, &cx)
                .unwrap_err()
                .is_retryable()
        );
    }

    #[test]
    fn validate_config_requires_url_and_secret() {
        let ok = Config::from_pairs([("url", "https://x.example/h"), ("secret", "plain")]);
        assert_eq!(SignedWebhook::validate_config(&ok), Ok(()));
        for bad in [
            Config::from_pairs([("secret", "s")]),
            Config::from_pairs([("url", "https://x.example")]),
            Config::from_pairs([("url", "ftp://x"), ("secret", "s")]),
            Config::from_pairs([("url", "https://x.example"), ("secret", "whsec_%%%")]),
            Config::from_pairs([
                ("url", "https://x.example"),
                ("secret", "s"),
                ("body", "xml"),
            ]),
        ] {
            assert!(
                matches!(
                    SignedWebhook::validate_config(&bad),
                    Err(PluginError::InvalidConfig(_))
                ),
                "{bad:?}"
            );
        }
    }
}
