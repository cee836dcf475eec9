//! The HTTP client webhooks are sent with, and the egress policy it enforces.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::super::Failure;
use super::super::engine::EngineConfig;
use super::classify::forbidden;
use crate::net::{AllowList, EgressPolicy, ResolveError};

/// The connection-pooling HTTP client shared by all `http` targets.
///
/// reqwest on rustls with the *ring* provider: it builds with nothing but a C
/// compiler (no OpenSSL headers, no cmake). Trusted roots are Mozilla's,
/// compiled in, plus the system store. Redirects are never followed: a
/// webhook that moved is a configuration error, and following it would
/// resend the body (and credentials) to a host nobody configured.
///
/// Destinations are held to the egress policy ([`crate::net::egress`]): an
/// address in the URL is checked before connecting, a host name is resolved
/// by a resolver that returns only the addresses the policy admits (so the
/// connection goes to a checked address, and a second DNS answer cannot
/// redirect it), and environment proxies are ignored (a proxy would resolve
/// the host itself). A refused delivery fails permanently with
/// `forbidden_destination` before any request is sent.
///
/// Each tenant with its own `[egress.tenants.*]` list gets its own pool, so
/// a connection opened under one tenant's list is never reused under
/// another's; [`HttpClient::for_tenant`] picks it.
#[derive(Clone, Debug)]
pub struct HttpClient {
    /// The client for this handle's list.
    inner: Policed,
    /// The client of every tenant with a list of its own; the rest use `all`.
    tenants: Arc<HashMap<String, Policed>>,
    /// The client for every other tenant.
    all: Policed,
}

/// A reqwest client whose resolver enforces `allow`.
#[derive(Clone, Debug)]
struct Policed {
    client: reqwest::Client,
    allow: Arc<AllowList>,
}

impl Policed {
    fn new(allow: Arc<AllowList>, idle_per_host: usize) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .user_agent(concat!("busbar/", env!("CARGO_PKG_VERSION")))
            // Keep warm connections to busy targets, but not forever. A
            // target has up to its cap of calls in flight, each on its own
            // connection (HTTP/1.1): keeping fewer idle than that closed
            // the rest after every burst and opened them again for the
            // next (thousands of connections a second at full speed).
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(idle_per_host)
            .tcp_nodelay(true)
            .no_proxy()
            .dns_resolver(Arc::new(CheckedResolver(allow.clone())))
            .build()?;
        Ok(Self { client, allow })
    }
}

impl HttpClient {
    /// Builds the client (one pool per tenant list) for `egress`, keeping
    /// as many idle connections per host as a target may have calls in
    /// flight by default.
    pub fn new(egress: &EgressPolicy) -> anyhow::Result<Self> {
        Self::keeping_idle(egress, EngineConfig::default().per_target_cap)
    }

    /// [`Self::new`], keeping up to `idle_per_host` idle connections per
    /// host: the engine's per-target cap, so a target at full speed reuses
    /// its connections.
    pub fn keeping_idle(egress: &EgressPolicy, idle_per_host: usize) -> anyhow::Result<Self> {
        let all = Policed::new(egress.for_all(), idle_per_host)?;
        let tenants = egress
            .tenant_lists()
            .map(|(tenant, allow)| {
                Ok((
                    tenant.to_owned(),
                    Policed::new(allow.clone(), idle_per_host)?,
                ))
            })
            .collect::<anyhow::Result<HashMap<_, _>>>()?;
        Ok(Self {
            inner: all.clone(),
            tenants: Arc::new(tenants),
            all,
        })
    }

    /// The client for `tenant`'s targets: its own list and pool if the
    /// config gives it one, else those of every tenant.
    pub fn for_tenant(&self, tenant: &str) -> Self {
        Self {
            inner: self.tenants.get(tenant).unwrap_or(&self.all).clone(),
            ..self.clone()
        }
    }

    /// The reqwest client requests go through.
    pub(super) fn reqwest(&self) -> &reqwest::Client {
        &self.inner.client
    }

    /// Refuses `url` up front when its host is an address egress does not
    /// allow (host names are checked when resolved).
    pub(super) fn check_destination(&self, url: &Url) -> Result<(), Failure> {
        // The URL parser has normalised address literals (`0x7f.1` is
        // `127.0.0.1`); IPv6 ones come in brackets.
        let host = url.host_str().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let Ok(ip) = host.parse::<IpAddr>() else {
            return Ok(());
        };
        self.inner
            .allow
            .check_address(ip)
            .map_err(|refused| forbidden(&refused))
    }
}

/// Resolves host names like the system does, then keeps only the addresses
/// the list admits; none left fails the lookup with the refusal, which
/// [`super::classify::find_forbidden`] finds again in the request's error.
struct CheckedResolver(Arc<AllowList>);

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.0.clone();
        Box::pin(async move {
            match allow.resolve(name.as_str(), 0).await {
                Ok(addrs) => Ok(Box::new(addrs.into_iter()) as Addrs),
                Err(ResolveError::Forbidden(refused)) => Err(refused.into()),
                Err(ResolveError::Lookup { source, .. }) => Err(source.into()),
            }
        })
    }
}

/// Reads at most `cap` bytes of the body; stops early on an error.
pub(super) async fn read_capped(response: &mut reqwest::Response, cap: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < cap {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(cap);
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literal_destinations_are_checked_up_front() {
        let guarded = HttpClient::new(&EgressPolicy::default()).unwrap();
        let open = HttpClient::new(
            &EgressPolicy::allowing(&["127.0.0.0/8", "::1", "169.254.169.254"]).unwrap(),
        )
        .unwrap();
        for url in [
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data",
            "http://0x7f.1/",
        ] {
            let url = Url::parse(url).unwrap();
            let err = guarded.check_destination(&url).unwrap_err();
            assert_eq!(err.code, "forbidden_destination", "{url}");
            assert!(open.check_destination(&url).is_ok());
        }
        for url in [
            "http://8.8.8.8/",
            "https://hooks.example/",
            "http://[2606:4700::1]/",
        ] {
            assert!(
                guarded.check_destination(&Url::parse(url).unwrap()).is_ok(),
                "{url}"
            );
        }
    }

    #[test]
    fn each_tenant_list_has_its_client() {
        let config: crate::net::EgressConfig =
            toml::from_str("allow = [\"10.0.0.1\"]\n[tenants.acme]\nallow = [\"127.0.0.1\"]\n")
                .unwrap();
        let client = HttpClient::new(&EgressPolicy::from_config(&config, &[]).unwrap()).unwrap();
        let loopback = Url::parse("http://127.0.0.1/").unwrap();
        let private = Url::parse("http://10.0.0.1/").unwrap();
        assert!(client.check_destination(&loopback).is_err());
        let acme = client.for_tenant("acme");
        assert!(acme.check_destination(&loopback).is_ok());
        assert!(acme.check_destination(&private).is_ok());
        // Picking again from a tenant's handle starts from the whole policy.
        assert!(
            acme.for_tenant("globex")
                .check_destination(&loopback)
                .is_err()
        );
        assert!(
            client
                .for_tenant("globex")
                .check_destination(&private)
                .is_ok()
        );
    }
}
