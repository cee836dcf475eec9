//! Outbound HTTP for connectors: `wasi:http/outgoing-handler` behind an
//! allow-list.
//!
//! A request goes out only if its host is listed by the target (exact name or
//! `*.suffix`). The host resolves the name itself and refuses loopback,
//! link-local (which includes cloud metadata at 169.254.169.254), private,
//! shared, unspecified, multicast and broadcast addresses, unless the
//! operator opted that exact host or address in
//! ([`OutboundConfig::allow_private`], meant for tests and trusted
//! networks). Plain-HTTP requests are then sent to the checked address, so a
//! second DNS answer cannot redirect them. Timeouts the guest asks for are
//! clamped, and each tenant has a cap on concurrent outbound requests.
//! Refusals reach the guest as `error-code::http-request-denied`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// Operator settings for outbound HTTP.
#[derive(Clone, Debug)]
pub struct OutboundConfig {
    /// URL hosts (a name, or an address literal; exact, no wildcards) that
    /// may reach otherwise refused addresses — e.g. `127.0.0.1` for a test
    /// receiver. `127.0.0.1` allows `http://127.0.0.1:..` but not a name
    /// resolving to it. A tenant's allow-list alone never reaches such an
    /// address.
    pub allow_private: Vec<String>,
    /// Upper bound on the connect timeout (and the default).
    pub connect_timeout: Duration,
    /// Upper bound on the time to the first response byte (and the default).
    pub first_byte_timeout: Duration,
    /// Upper bound on the time between response body frames (and the default).
    pub between_bytes_timeout: Duration,
    /// Concurrent outbound requests per tenant.
    pub max_concurrent_per_tenant: usize,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            allow_private: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(30),
            between_bytes_timeout: Duration::from_secs(30),
            max_concurrent_per_tenant: 32,
        }
    }
}

/// Per-tenant request semaphores, shared by all invocations.
#[derive(Debug, Default)]
pub struct TenantPermits(Mutex<HashMap<String, Arc<Semaphore>>>);

impl TenantPermits {
    fn get(&self, tenant: &str, n: usize) -> Arc<Semaphore> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(tenant.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(n.max(1))))
            .clone()
    }
}

/// The outbound policy of one connector invocation; the [`WasiHttpHooks`]
/// of its store.
pub struct OutboundHttp {
    allowed: Arc<[String]>,
    config: Arc<OutboundConfig>,
    permits: Option<Arc<Semaphore>>,
}

impl OutboundHttp {
    /// A policy allowing `allowed_hosts` for `tenant`.
    pub fn new(
        tenant: &str,
        allowed_hosts: &[String],
        config: Arc<OutboundConfig>,
        permits: &TenantPermits,
    ) -> Self {
        Self {
            allowed: allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            permits: Some(permits.get(tenant, config.max_concurrent_per_tenant)),
            config,
        }
    }

    /// A policy that refuses every request (filters and transformers, which
    /// never get `wasi:http` linked anyway).
    pub fn deny_all() -> Self {
        Self {
            allowed: Arc::from(Vec::new()),
            config: Arc::new(OutboundConfig::default()),
            permits: None,
        }
    }
}

/// Whether `host` (lower-case, no port) and `port` match an allow-list entry:
/// `name`, `name:port`, `*.suffix` or `*.suffix:port`.
pub fn host_allowed(allowed: &[String], host: &str, port: u16) -> bool {
    allowed.iter().any(|entry| {
        let (pattern, entry_port) = split_port(entry);
        if entry_port.is_some_and(|p| p != port) {
            return false;
        }
        match pattern.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
            None => pattern == host,
        }
    })
}

/// Splits `host:port` (or `[v6]:port`); a bare IPv6 address has no port.
fn split_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once("]:") {
            return (h, p.parse().ok());
        }
        return (rest.trim_end_matches(']'), None);
    }
    match entry.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
        _ => (entry, None),
    }
}

/// Whether an address is never reachable from a connector without an
/// explicit operator opt-in.
pub fn is_restricted(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => restricted_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return restricted_v4(v4);
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7 (incl. fd00:ec2::254)
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64 may embed any v4
                || (s[0] == 0x2002) // 6to4 may embed any v4
                || v6.to_ipv4().is_some_and(|v4| s[0..6] == [0; 6] && restricted_v4(v4))
        }
    }
}

fn restricted_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16, incl. 169.254.169.254 metadata
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared 100.64/10 (incl. 100.100.100.200 metadata)
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || o[0] >= 240 // reserved
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let allowed = self.allowed.clone();
        let config = self.config.clone();
        let permits = self.permits.clone();
        Box::new(async move {
            let Some(permits) = permits else {
                return Err(HttpError::HttpRequestDenied);
            };
            let uri = request.uri().clone();
            let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
            let host = uri
                .host()
                .ok_or(HttpError::HttpRequestUriInvalid)?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase();
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            if !host_allowed(&allowed, &host, port) {
                tracing::info!(%host, "outbound request to a host not allowed by the target refused");
                return Err(HttpError::HttpRequestDenied);
            }
            let addr = resolve(&host, port, &config).await?;
            if !https {
                // Pin the checked address: the default client would resolve
                // the name again. The Host header still names the host.
                let authority = http::uri::Authority::try_from(addr.to_string())
                    .map_err(|_| HttpError::HttpRequestUriInvalid)?;
                let mut parts = uri.into_parts();
                parts.authority = Some(authority);
                *request.uri_mut() =
                    http::Uri::from_parts(parts).map_err(|_| HttpError::HttpRequestUriInvalid)?;
            }
            let clamp =
                |asked: Option<Duration>, max: Duration| Some(asked.map_or(max, |a| a.min(max)));
            let options = options.unwrap_or_default();
            let options = RequestOptions {
                connect_timeout: clamp(options.connect_timeout, config.connect_timeout),
                first_byte_timeout: clamp(options.first_byte_timeout, config.first_byte_timeout),
                between_bytes_timeout: clamp(
                    options.between_bytes_timeout,
                    config.between_bytes_timeout,
                ),
            };
            let permit = permits
                .acquire_owned()
                .await
                .map_err(|_| HttpError::ConnectionLimitReached)?;
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            use http_body_util::BodyExt;
            let io: Box<dyn Future<Output = Result<(), HttpError>> + Send> = Box::new(async move {
                // The permit is held until the connection is done.
                let _permit = permit;
                io.await
            });
            Ok((response.map(BodyExt::boxed_unsync), io))
        })
    }
}

/// Resolves `host` and returns an address the policy allows.
async fn resolve(host: &str, port: u16, config: &OutboundConfig) -> Result<SocketAddr, HttpError> {
    let opted_in = |what: &str| {
        config
            .allow_private
            .iter()
            .any(|a| a.eq_ignore_ascii_case(what))
    };
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout(
            config.connect_timeout,
            tokio::net::lookup_host((host, port)),
        )
        .await
        .map_err(|_| HttpError::DnsTimeout)?
        .map_err(|e| HttpError::DnsError {
            rcode: Some(e.to_string()),
            info_code: None,
        })?
        .collect(),
    };
    // Every answer must pass: a name that resolves to one public and one
    // private address is refused as a whole.
    // The opt-in names what the URL says — a host name, or an address
    // literal — so a name a tenant controls cannot reach an opted-in address
    // by resolving to it.
    for addr in &addrs {
        let ip = addr.ip();
        if is_restricted(ip) && !opted_in(host) {
            tracing::info!(%host, %ip, "outbound request to a restricted address refused");
            return Err(HttpError::HttpRequestDenied);
        }
    }
    addrs.first().copied().ok_or(HttpError::DestinationNotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matching() {
        let allowed = vec![
            "hooks.slack.com".to_owned(),
            "*.example.com".to_owned(),
            "api.test:8443".to_owned(),
        ];
        assert!(host_allowed(&allowed, "hooks.slack.com", 443));
        assert!(!host_allowed(&allowed, "evil-hooks.slack.com", 443));
        assert!(host_allowed(&allowed, "a.example.com", 80));
        assert!(host_allowed(&allowed, "a.b.example.com", 80));
        assert!(!host_allowed(&allowed, "example.com", 80));
        assert!(!host_allowed(&allowed, "badexample.com", 80));
        assert!(host_allowed(&allowed, "api.test", 8443));
        assert!(!host_allowed(&allowed, "api.test", 443));
        assert!(!host_allowed(&[], "hooks.slack.com", 443));
    }

    #[test]
    fn restricted_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.100.100.200",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(is_restricted(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["1.1.1.1", "172.32.0.1", "93.184.216.34", "2606:4700::1111"] {
            assert!(!is_restricted(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn resolution_refuses_private_unless_opted_in() {
        let config = OutboundConfig::default();
        assert!(matches!(
            resolve("127.0.0.1", 80, &config).await,
            Err(HttpError::HttpRequestDenied)
        ));
        assert!(matches!(
            resolve("localhost", 80, &config).await,
            Err(HttpError::HttpRequestDenied)
        ));
        let config = OutboundConfig {
            allow_private: vec!["127.0.0.1".into()],
            ..OutboundConfig::default()
        };
        let addr = resolve("127.0.0.1", 8080, &config).await.unwrap();
        assert_eq!(addr, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
        // Opting in an address does not let a name resolve to it.
        assert!(matches!(
            resolve("localhost", 80, &config).await,
            Err(HttpError::HttpRequestDenied)
        ));
        assert!(matches!(
            resolve("169.254.169.254", 80, &config).await,
            Err(HttpError::HttpRequestDenied)
        ));
    }
}
