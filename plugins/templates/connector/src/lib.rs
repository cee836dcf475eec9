//! {{name}}: a Busbar connector plugin.
//!
//! Build: `cargo build --target wasm32-wasip2 --release`
//! Test:  `cargo test`
//!
//! The target must list the URL's host in `allowed_hosts`.

use busbar_sdk::prelude::*;

/// POSTs each event, in CloudEvents JSON form, to the configured `url`.
pub struct Plugin;

impl Connector for Plugin {
    fn validate_config(config: &Config) -> Result<(), PluginError> {
        busbar_sdk::http::split_url(config.require("url")?)
            .map(|_| ())
            .map_err(|e| PluginError::invalid_config(format!("`url`: {e}")))
    }

    fn deliver(event: &Event, cx: &Context) -> Result<(), DeliveryError> {
        let request = Request::post(cx.config().require("url")?).json(&event.to_structured_json())?;
        // 2xx: delivered; 408/429/5xx: retried later; other statuses: dead-lettered.
        cx.http().send(&request)?.error_for_status()
    }
}

busbar_sdk::connector!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;
    use busbar_sdk::testing::FakeHttp;

    #[test]
    fn posts_the_event_and_retries_server_errors() {
        let http = FakeHttp::new();
        http.respond(Response::new(200)).respond(Response::new(503));
        let cx = Context::new(Config::from_pairs([("url", "https://example.com/in")]))
            .with_http(http.clone());
        let event = Event::new("1", "shop", "order.created");
        assert_eq!(Plugin::deliver(&event, &cx), Ok(()));
        assert!(Plugin::deliver(&event, &cx).unwrap_err().is_retryable());
        assert_eq!(http.requests()[0].url, "https://example.com/in");
    }
}
