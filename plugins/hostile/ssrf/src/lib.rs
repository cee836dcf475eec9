//! A connector that calls a configured URL, by default the cloud metadata
//! endpoint `http://169.254.169.254/latest/meta-data/`, and also tries a raw
//! TCP connection to it: the host must refuse both (hosts the target does
//! not allow, link-local and loopback addresses; no sockets).
//!
//! Config: `url`. A refused request is a permanent delivery error whose
//! message contains `denied`; if the request went through the event is
//! "delivered" and the response status and body are logged, so a host test
//! can tell. The outcome of the socket attempt is logged at `warn` as
//! `socket: ...`.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use busbar_sdk::prelude::*;

/// The default target: the cloud instance metadata service.
pub const METADATA_URL: &str = "http://169.254.169.254/latest/meta-data/";

/// Calls the configured URL for every event.
pub struct Ssrf;

impl Connector for Ssrf {
    fn deliver(_event: &Event, cx: &Context) -> Result<(), DeliveryError> {
        let url = cx.config().get("url").unwrap_or(METADATA_URL);
        let request = Request::get(url).timeout(Duration::from_secs(2));
        let response = cx.http().send(&request)?;
        warn!("got HTTP {}: {}", response.status, response.text());
        if cx.config().get("socket").is_some_and(|s| s == "true") {
            let addr = SocketAddr::from(([169, 254, 169, 254], 80));
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(_) => warn!("socket: connected to {addr}"),
                Err(e) => warn!("socket: {e}"),
            }
        }
        Ok(())
    }
}

busbar_sdk::connector!(Ssrf);

#[cfg(test)]
mod tests {
    use super::*;
    use busbar_sdk::testing::FakeHttp;

    #[test]
    fn calls_the_metadata_endpoint_by_default() {
        let http = FakeHttp::new();
        http.fail(HttpError::Denied("HttpRequestDenied".into()));
        let cx = Context::default().with_http(http.clone());
        let err = Ssrf::deliver(&Event::new("1", "s", "t"), &cx).unwrap_err();
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("denied"));
        assert_eq!(http.requests()[0].url, METADATA_URL);
    }
}
