//! The `http` (webhook) target: one delivery attempt to one URL.
//!
//! An [`HttpTargetSpec`] is the target as written in a rule; [`HttpTarget::new`]
//! validates it into a runtime target that cannot be invalid, and
//! [`HttpTarget::deliver`] makes one attempt and classifies the result as an
//! [`Outcome`]:
//!
//! | what happened                                   | outcome     | code            |
//! |-------------------------------------------------|-------------|-----------------|
//! | 2xx                                             | `Delivered` |                 |
//! | 429                                             | `Retry`     | `rate_limited`  |
//! | 408, 5xx                                        | `Retry`     | `http_status`   |
//! | 401 with OAuth2 (the cached token is dropped)   | `Retry`     | `http_status`   |
//! | other 4xx, 3xx (redirects are not followed)     | `Permanent` | `http_status`   |
//! | no TCP/TLS connection                           | `Retry`     | `connect_error` |
//! | connection lost mid-request                     | `Retry`     | `request_error` |
//! | no complete answer within `timeout_ms`          | `Retry`     | `timeout`       |
//! | the OAuth2 token endpoint failed                | `Retry`     | `auth_error`    |
//! | the event cannot be rendered (bad base64, ...)  | `Permanent` | `render_error`  |
//! | a private address, when the client refuses them | `Permanent` | `forbidden_destination` |
//!
//! The event is sent in CloudEvents HTTP binary mode (attributes as `ce-*`
//! headers, the payload as the body) unless the target asks for structured
//! mode (the whole event as `application/cloudevents+json`). Requests can be
//! authenticated (API key, basic, OAuth2 client credentials) and signed
//! (Standard Webhooks), and each target can be rate-limited and given a
//! concurrency cap; both make `deliver` wait, never fail.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::Semaphore;
use tokio::time::Instant;

pub use super::SpecError;
use super::{Failure, FailureCode, Outcome, Payload, Problems};
use crate::event::Event;

/// The default request timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// The largest request timeout a target may ask for.
pub const MAX_TIMEOUT_MS: u64 = 60_000;
/// How much of a failed response's body is kept for the error message.
pub const ERROR_BODY_CAP: usize = 4 * 1024;
/// How much of a token endpoint's answer is read (JWT access tokens can be a
/// few kilobytes).
const TOKEN_BODY_CAP: usize = 64 * 1024;
/// Slowest and fastest allowed rate limits (requests per second).
const MIN_RATE_PER_S: f64 = 0.001;
const MAX_RATE_PER_S: f64 = 100_000.0;
/// Largest allowed concurrency cap.
const MAX_CONCURRENCY: u32 = 10_000;
/// Standard Webhooks secrets are 24 to 64 random bytes.
const SIGNING_KEY_LEN: std::ops::RangeInclusive<usize> = 24..=64;
/// Prefix of a Standard Webhooks symmetric secret.
const SIGNING_SECRET_PREFIX: &str = "whsec_";

/// An `http` target as written in a rule.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpTargetSpec {
    /// The webhook URL (`http` or `https`).
    pub url: String,
    /// `POST` (the default), `PUT` or `PATCH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Extra headers sent with every request. Headers the bus sets itself
    /// (`Content-Type`, `ce-*`, `webhook-*`, ...) cannot be overridden.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Time allowed for connecting and receiving the complete answer; default
    /// 5000, at most 60000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// CloudEvents HTTP binding mode.
    #[serde(default)]
    pub mode: DeliveryMode,
    /// How requests authenticate to the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// Standard Webhooks signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<SigningSpec>,
    /// At most this many requests per second, spaced evenly (no bursts);
    /// deliveries beyond it wait their turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_s: Option<f64>,
    /// At most this many requests in flight at once; more wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
}

/// How an event is laid out in the request (CloudEvents HTTP binding).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMode {
    /// Attributes as `ce-*` headers, the payload as the body.
    #[default]
    Binary,
    /// The whole event as an `application/cloudevents+json` body.
    Structured,
}

/// How requests authenticate to the target, tagged by `type`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthSpec {
    /// A fixed secret in a header of the target's choosing.
    ApiKey {
        /// The header name, e.g. `X-Api-Key`.
        header: String,
        /// The header value.
        value: Secret,
    },
    /// HTTP basic authentication.
    Basic {
        /// The user name (must not contain `:`).
        username: String,
        /// The password.
        password: Secret,
    },
    /// OAuth2 client credentials grant; the access token is sent as a bearer
    /// token, cached until shortly before it expires, and dropped when the
    /// target answers 401.
    Oauth2 {
        /// The token endpoint.
        token_url: String,
        /// The client id.
        client_id: String,
        /// The client secret.
        client_secret: Secret,
        /// Space-separated scopes to request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
    },
}

/// Standard Webhooks signing (<https://www.standardwebhooks.com>).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SigningSpec {
    /// `whsec_` followed by the base64 of 24 to 64 random bytes.
    pub secret: Secret,
}

/// A credential from a target spec. It serialises as the plain string (specs
/// are stored and read back) but never shows in `Debug` output or logs.
#[derive(Deserialize, Serialize, Clone, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The credential itself, for the code that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl HttpTargetSpec {
    /// A spec for `url` with every option at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            method: None,
            headers: BTreeMap::new(),
            timeout_ms: None,
            mode: DeliveryMode::Binary,
            auth: None,
            signing: None,
            rate_limit_per_s: None,
            max_concurrency: None,
        }
    }

    /// Checks the spec; reports every problem with its field path.
    pub fn validate(&self) -> Result<(), SpecError> {
        let mut problems = Problems::default();
        let _ = self.compile(&mut problems);
        problems.finish()
    }

    /// Turns the spec into its runtime parts, recording problems on the way.
    /// Returns `None` exactly when a problem was recorded.
    fn compile(&self, problems: &mut Problems) -> Option<Compiled> {
        let url = check_url(&self.url, "url", problems);
        let method = match self.method.as_deref() {
            None => Some(Method::POST),
            Some(m) => match m.to_ascii_uppercase().as_str() {
                "POST" => Some(Method::POST),
                "PUT" => Some(Method::PUT),
                "PATCH" => Some(Method::PATCH),
                _ => {
                    problems.add("method", "must be POST, PUT or PATCH");
                    None
                }
            },
        };

        let auth_header = match &self.auth {
            Some(AuthSpec::ApiKey { header, .. }) => Some(header.to_ascii_lowercase()),
            Some(AuthSpec::Basic { .. } | AuthSpec::Oauth2 { .. }) => {
                Some("authorization".to_owned())
            }
            None => None,
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let field = format!("headers.{name}");
            let Ok(header_name) = HeaderName::from_bytes(name.as_bytes()) else {
                problems.add(field, "is not a valid header name");
                continue;
            };
            if let Some(why) = reserved_header(header_name.as_str()) {
                problems.add(field, why);
                continue;
            }
            if auth_header.as_deref() == Some(header_name.as_str()) {
                problems.add(field, "is set by auth");
                continue;
            }
            if headers.contains_key(&header_name) {
                problems.add(field, "repeats a header (names are case-insensitive)");
                continue;
            }
            match HeaderValue::from_str(value) {
                Ok(value) => {
                    headers.insert(header_name, value);
                }
                Err(_) => problems.add(field, "is not a valid header value"),
            }
        }

        let timeout_ms = self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            problems.add(
                "timeout_ms",
                format!("must be between 1 and {MAX_TIMEOUT_MS}"),
            );
        }

        let auth = self
            .auth
            .as_ref()
            .and_then(|auth| check_auth(auth, problems));
        let signer = self.signing.as_ref().and_then(|signing| {
            Signer::from_secret(signing.secret.expose())
                .map_err(|reason| problems.add("signing.secret", reason))
                .ok()
        });

        let rate = match self.rate_limit_per_s {
            None => None,
            Some(rate) if (MIN_RATE_PER_S..=MAX_RATE_PER_S).contains(&rate) => {
                Duration::try_from_secs_f64(1.0 / rate)
                    .ok()
                    .map(RateLimiter::new)
            }
            Some(_) => {
                problems.add(
                    "rate_limit_per_s",
                    format!("must be between {MIN_RATE_PER_S} and {MAX_RATE_PER_S}"),
                );
                None
            }
        };
        let concurrency = match self.max_concurrency {
            None => None,
            Some(n @ 1..=MAX_CONCURRENCY) => Some(Semaphore::new(n as usize)),
            Some(_) => {
                problems.add(
                    "max_concurrency",
                    format!("must be between 1 and {MAX_CONCURRENCY}"),
                );
                None
            }
        };

        let url = url?;
        let method = method?;
        if problems.is_empty() {
            Some(Compiled {
                url,
                method,
                headers,
                timeout: Duration::from_millis(timeout_ms),
                auth,
                signer,
                rate,
                concurrency,
            })
        } else {
            None
        }
    }
}

/// Why a header cannot be set in `headers` (the bus sets it), if it cannot.
fn reserved_header(lowercase_name: &str) -> Option<&'static str> {
    const RESERVED: [&str; 13] = [
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    ];
    if RESERVED.contains(&lowercase_name) {
        Some("is set by the bus")
    } else if lowercase_name.starts_with("ce-") {
        Some("ce-* headers carry the event's attributes")
    } else {
        None
    }
}

fn check_url(raw: &str, field: &str, problems: &mut Problems) -> Option<Url> {
    let url = match Url::parse(raw) {
        Ok(url) => url,
        Err(e) => {
            problems.add(field, format!("is not a valid URL: {e}"));
            return None;
        }
    };
    if !matches!(url.scheme(), "http" | "https") {
        problems.add(field, "must be an http or https URL");
        None
    } else if url.host().is_none() {
        problems.add(field, "must name a host");
        None
    } else if !url.username().is_empty() || url.password().is_some() {
        problems.add(field, "must not contain credentials; use auth");
        None
    } else {
        Some(url)
    }
}

fn check_auth(auth: &AuthSpec, problems: &mut Problems) -> Option<Auth> {
    match auth {
        AuthSpec::ApiKey { header, value } => {
            let name = match HeaderName::from_bytes(header.as_bytes()) {
                Ok(name) => match reserved_header(name.as_str()) {
                    Some(why) => {
                        problems.add("auth.header", why);
                        None
                    }
                    None => Some(name),
                },
                Err(_) => {
                    problems.add("auth.header", "is not a valid header name");
                    None
                }
            };
            let value = if value.expose().is_empty() {
                problems.add("auth.value", "must not be empty");
                None
            } else {
                match HeaderValue::from_str(value.expose()) {
                    Ok(value) => Some(sensitive(value)),
                    Err(_) => {
                        problems.add("auth.value", "is not a valid header value");
                        None
                    }
                }
            };
            Some(Auth::Header(name?, value?))
        }
        AuthSpec::Basic { username, password } => {
            if username.is_empty() || username.contains(':') {
                problems.add("auth.username", "must be non-empty and without ':'");
                return None;
            }
            let credentials = BASE64.encode(format!("{username}:{}", password.expose()));
            match HeaderValue::from_str(&format!("Basic {credentials}")) {
                Ok(value) => Some(Auth::Header(header::AUTHORIZATION, sensitive(value))),
                Err(_) => None, // base64 is always a valid header value
            }
        }
        AuthSpec::Oauth2 {
            token_url,
            client_id,
            client_secret,
            scope,
        } => {
            let token_url = check_url(token_url, "auth.token_url", problems);
            if client_id.is_empty() {
                problems.add("auth.client_id", "must not be empty");
            }
            if client_secret.expose().is_empty() {
                problems.add("auth.client_secret", "must not be empty");
            }
            if scope.as_deref().is_some_and(|s| s.trim().is_empty()) {
                problems.add("auth.scope", "must not be empty when given");
            }
            Some(Auth::OAuth2(Box::new(OAuth2 {
                token_url: token_url?,
                client_id: client_id.clone(),
                client_secret: client_secret.clone(),
                scope: scope.clone(),
                cache: tokio::sync::Mutex::default(),
            })))
        }
    }
}

fn sensitive(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

/// The validated runtime parts of a spec.
struct Compiled {
    url: Url,
    method: Method,
    headers: HeaderMap,
    timeout: Duration,
    auth: Option<Auth>,
    signer: Option<Signer>,
    rate: Option<RateLimiter>,
    concurrency: Option<Semaphore>,
}

/// One shared connection-pooling HTTP client for all targets.
///
/// reqwest on rustls with the *ring* provider: it builds with nothing but a C
/// compiler (no OpenSSL headers, no cmake). Trusted roots are Mozilla's,
/// compiled in, plus the system store. Redirects are never followed: a
/// webhook that moved is a configuration error, and following it would
/// resend the body (and credentials) to a host nobody configured.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: reqwest::Client,
    /// Whether non-public destinations are refused (see
    /// [`HttpClientOptions::deny_private_networks`]).
    deny_private_networks: bool,
}

/// How the shared [`HttpClient`] is built.
#[derive(Clone, Debug, Default)]
pub struct HttpClientOptions {
    /// Refuse to deliver to loopback, private, link-local and other
    /// non-public addresses, whether the URL names them directly or a host
    /// name resolves to them (a guard against tenants using webhooks to
    /// reach the bus's own network, e.g. cloud metadata endpoints). Such a
    /// delivery fails permanently with `forbidden_destination`. Environment
    /// proxies are ignored when this is on, since a proxy would resolve the
    /// host itself. Off by default: a single-tenant bus often delivers to
    /// services next to it.
    pub deny_private_networks: bool,
}

impl HttpClient {
    /// Builds the client with the default options.
    pub fn new() -> anyhow::Result<Self> {
        Self::with_options(&HttpClientOptions::default())
    }

    /// Builds the client.
    pub fn with_options(options: &HttpClientOptions) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .user_agent(concat!("busbar/", env!("CARGO_PKG_VERSION")))
            // Keep warm connections to busy targets, but not forever.
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true);
        if options.deny_private_networks {
            builder = builder
                .no_proxy()
                .dns_resolver(Arc::new(PublicOnlyResolver));
        }
        Ok(Self {
            inner: builder.build()?,
            deny_private_networks: options.deny_private_networks,
        })
    }

    /// Refuses `url` up front when it names a non-public IP address and the
    /// client guards against those (host names are checked when resolved).
    fn check_destination(&self, url: &Url) -> Result<(), Failure> {
        let host = url.host_str().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let Ok(ip) = host.parse::<IpAddr>() else {
            return Ok(());
        };
        if self.deny_private_networks && !is_public(ip) {
            Err(ForbiddenDestination(ip).into())
        } else {
            Ok(())
        }
    }
}

/// A destination the client refuses to connect to.
#[derive(Debug, thiserror::Error)]
#[error("{0} is not a public address; delivery to private networks is disabled")]
struct ForbiddenDestination(IpAddr);

impl From<ForbiddenDestination> for Failure {
    fn from(error: ForbiddenDestination) -> Self {
        Failure::new(FORBIDDEN_DESTINATION, error.to_string())
    }
}

/// The failure code of a refused destination.
const FORBIDDEN_DESTINATION: FailureCode = FailureCode::ForbiddenDestination;

/// Resolves host names like the system does, then keeps only public
/// addresses (all of them private: the lookup fails with
/// [`ForbiddenDestination`]).
struct PublicOnlyResolver;

impl reqwest::dns::Resolve for PublicOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|addr| is_public(addr.ip()))
                .collect();
            match (public.is_empty(), resolved.first()) {
                (true, Some(first)) => Err(ForbiddenDestination(first.ip()).into()),
                _ => Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

/// Whether an address is on the public internet: not loopback, private,
/// link-local, carrier-grade NAT, documentation, benchmarking, multicast or
/// reserved (IPv4-mapped and NAT64 IPv6 addresses are judged by their IPv4).
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            let embedded_v4 = || {
                let [.., a, b, c, d] = v6.octets();
                Ipv4Addr::new(a, b, c, d)
            };
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public_v4(embedded_v4());
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || v6.is_unique_local()
                || v6.is_unicast_link_local()
                || segments[..6] == [0; 6] // IPv4-compatible (deprecated)
                || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || segments[..2] == [0x2001, 0x0db8]) // documentation
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0 // "this network"
        || (a == 100 && (b & 0xc0) == 64) // carrier-grade NAT, 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b & 0xfe) == 18) // benchmarking, 198.18/15
        || a >= 240) // reserved
}

/// A validated `http` target, ready to deliver. Cheap to share via `Arc`;
/// the rate limiter, concurrency cap and OAuth2 token cache live here, so
/// share one `HttpTarget` per configured target.
pub struct HttpTarget {
    /// Kept to answer [`HttpTarget::spec`] and for the delivery mode.
    spec: HttpTargetSpec,
    /// Shared by all targets, so connections are pooled across them.
    client: HttpClient,
    url: Url,
    method: Method,
    /// The spec's static headers, parsed once.
    headers: HeaderMap,
    /// Covers connecting, sending and receiving the (capped) answer.
    timeout: Duration,
    /// Precomputed header, or OAuth2 state with its token cache.
    auth: Option<Auth>,
    signer: Option<Signer>,
    /// Per target, so one slow or limited receiver never holds back others.
    rate: Option<RateLimiter>,
    /// Permits for requests in flight; never closed.
    concurrency: Option<Semaphore>,
}

impl fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpTarget")
            .field("method", &self.method)
            .field("url", &self.url.as_str())
            .field("mode", &self.spec.mode)
            .finish_non_exhaustive()
    }
}

impl HttpTarget {
    /// Validates `spec` and builds the target; requests go through `client`.
    pub fn new(spec: HttpTargetSpec, client: HttpClient) -> Result<Self, SpecError> {
        let mut problems = Problems::default();
        let compiled = spec.compile(&mut problems);
        problems.finish()?;
        let Some(c) = compiled else {
            return Err(SpecError::new("", "invalid target"));
        };
        Ok(Self {
            spec,
            client,
            url: c.url,
            method: c.method,
            headers: c.headers,
            timeout: c.timeout,
            auth: c.auth,
            signer: c.signer,
            rate: c.rate,
            concurrency: c.concurrency,
        })
    }

    /// The spec this target was built from.
    pub fn spec(&self) -> &HttpTargetSpec {
        &self.spec
    }

    /// Makes one delivery attempt and classifies the result.
    ///
    /// Waits for a concurrency slot and then for the rate limit, if the
    /// target has them; the timeout starts after both. An OAuth2 token
    /// request, when one is needed, gets its own `timeout_ms` before it.
    pub async fn deliver(&self, payload: Payload<'_>) -> Outcome {
        let rendered = match render(self.spec.mode, payload) {
            Ok(rendered) => rendered,
            Err(failure) => return Outcome::Permanent(failure),
        };
        let token_url = match &self.auth {
            Some(Auth::OAuth2(oauth)) => Some(&oauth.token_url),
            _ => None,
        };
        for url in std::iter::once(&self.url).chain(token_url) {
            if let Err(failure) = self.client.check_destination(url) {
                return Outcome::Permanent(failure);
            }
        }
        // Held until the attempt ends; the semaphore is never closed.
        let _permit = match &self.concurrency {
            Some(semaphore) => match semaphore.acquire().await {
                Ok(permit) => Some(permit),
                Err(_) => {
                    return Outcome::Retry(Failure::new(
                        FailureCode::RequestError,
                        "target shut down",
                    ));
                }
            },
            None => None,
        };
        if let Some(rate) = &self.rate {
            rate.acquire().await;
        }
        let bearer = match &self.auth {
            Some(Auth::OAuth2(oauth)) => match oauth.token(&self.client, self.timeout).await {
                Ok(token) => Some(token),
                Err(failure) if failure.code == FORBIDDEN_DESTINATION => {
                    return Outcome::Permanent(failure);
                }
                Err(failure) => return Outcome::Retry(failure),
            },
            _ => None,
        };
        let outcome = self
            .attempt(payload.event.id(), rendered, bearer.as_ref())
            .await;
        if let (Some(Auth::OAuth2(oauth)), Some(token)) = (&self.auth, &bearer)
            && outcome.failure().and_then(|f| f.status) == Some(401)
        {
            oauth.invalidate(token).await;
        }
        outcome
    }

    async fn attempt(&self, id: &str, rendered: Rendered, bearer: Option<&HeaderValue>) -> Outcome {
        let mut headers = self.headers.clone();
        headers.extend(rendered.headers);
        match &self.auth {
            Some(Auth::Header(name, value)) => {
                headers.insert(name.clone(), value.clone());
            }
            Some(Auth::OAuth2(_)) => {
                if let Some(token) = bearer {
                    headers.insert(header::AUTHORIZATION, token.clone());
                }
            }
            None => {}
        }
        if let Some(signer) = &self.signer {
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            headers.extend(signer.headers(id, timestamp, &rendered.body));
        }

        let deadline = Instant::now() + self.timeout;
        let request = self
            .client
            .inner
            .request(self.method.clone(), self.url.clone())
            .headers(headers)
            .body(rendered.body)
            .send();
        let mut response = match tokio::time::timeout_at(deadline, request).await {
            Err(_) => return Outcome::Retry(self.timed_out()),
            Ok(Err(e)) => return classify_error(e),
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Read (a bounded part of) the body within the same deadline: for a
        // failure it explains why, for a success it lets the connection go
        // back to the pool. A 2xx is delivered even if the body stalls.
        let body = tokio::time::timeout_at(deadline, read_capped(&mut response, ERROR_BODY_CAP))
            .await
            .unwrap_or_default();
        let oauth = matches!(self.auth, Some(Auth::OAuth2(_)));
        classify(status, retry_after, &body, location.as_deref(), oauth)
    }

    fn timed_out(&self) -> Failure {
        Failure::new(
            FailureCode::Timeout,
            format!("no complete answer within {} ms", self.timeout.as_millis()),
        )
    }
}

/// Classifies an HTTP answer (see the module docs' table).
fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    location: Option<&str>,
    oauth: bool,
) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Delivered {
            status: Some(status),
        };
    }
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut message = format!("HTTP {status} {reason}").trim_end().to_owned();
    if let Some(location) = location.filter(|_| (300..400).contains(&status)) {
        message.push_str(&format!(" (redirect to {location} not followed)"));
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if !text.is_empty() {
        message.push_str(": ");
        message.push_str(text);
    }
    let failure = |code: FailureCode| Failure {
        code,
        message: message.clone(),
        status: Some(status),
        retry_after,
    };
    match status {
        429 => Outcome::Retry(failure(FailureCode::RateLimited)),
        408 | 500..=599 => Outcome::Retry(failure(FailureCode::HttpStatus)),
        401 if oauth => Outcome::Retry(failure(FailureCode::HttpStatus)),
        _ => Outcome::Permanent(failure(FailureCode::HttpStatus)),
    }
}

/// Classifies a request that got no HTTP answer.
fn classify_error(error: reqwest::Error) -> Outcome {
    if let Some(forbidden) = find_forbidden(&error) {
        return Outcome::Permanent(forbidden);
    }
    let code = if error.is_timeout() {
        FailureCode::Timeout
    } else if error.is_connect() {
        FailureCode::ConnectError
    } else if error.is_builder() {
        return Outcome::Permanent(Failure::new(FailureCode::RequestError, error_chain(error)));
    } else {
        FailureCode::RequestError
    };
    Outcome::Retry(Failure::new(code, error_chain(error)))
}

/// The [`ForbiddenDestination`] behind a failed request, if that was why.
fn find_forbidden(error: &reqwest::Error) -> Option<Failure> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        // `io::Error` hides its payload from `source()`; look inside it.
        let inner = current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in std::iter::once(current).chain(inner) {
            if let Some(forbidden) = candidate.downcast_ref::<ForbiddenDestination>() {
                return Some(Failure::new(FORBIDDEN_DESTINATION, forbidden.to_string()));
            }
        }
        cause = current.source();
    }
    None
}

/// The error and its causes on one line, without the URL (it may carry
/// secrets in its query string).
fn error_chain(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Reads at most `cap` bytes of the body; stops early on an error.
async fn read_capped(response: &mut reqwest::Response, cap: usize) -> Vec<u8> {
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

/// Parses a `Retry-After` value: delta-seconds or an HTTP-date (a date in the
/// past means "now").
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The request's event-dependent headers and body.
#[derive(Debug)]
struct Rendered {
    headers: HeaderMap,
    body: Vec<u8>,
}

/// Lays out the payload per the CloudEvents HTTP binding.
fn render(mode: DeliveryMode, payload: Payload<'_>) -> Result<Rendered, Failure> {
    let mut headers = HeaderMap::new();
    if mode == DeliveryMode::Binary {
        add_ce_headers(payload.event, &mut headers)?;
    }
    let (content_type, body) = match (payload.body, mode) {
        (Some(text), _) => {
            let content_type = if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            };
            (Some(content_type.to_owned()), text.as_bytes().to_vec())
        }
        (None, DeliveryMode::Structured) => (
            Some("application/cloudevents+json; charset=utf-8".to_owned()),
            payload.event.to_json_bytes(),
        ),
        (None, DeliveryMode::Binary) => binary_body(payload.event)?,
    };
    if let Some(content_type) = content_type {
        let value = HeaderValue::from_str(&content_type).map_err(|_| {
            Failure::new(
                FailureCode::RenderError,
                "datacontenttype is not a valid Content-Type",
            )
        })?;
        headers.insert(header::CONTENT_TYPE, value);
    }
    Ok(Rendered { headers, body })
}

/// The Content-Type and body of a binary-mode request carrying the event's
/// own payload.
fn binary_body(event: &Event) -> Result<(Option<String>, Vec<u8>), Failure> {
    let map = event.as_map();
    let declared = event.str_attr("datacontenttype").map(str::to_owned);
    if let Some(encoded) = map.get("data_base64").filter(|v| !v.is_null()) {
        let bytes = encoded
            .as_str()
            .and_then(|s| BASE64.decode(s).ok())
            .ok_or_else(|| {
                Failure::new(FailureCode::RenderError, "data_base64 is not valid base64")
            })?;
        let content_type = declared.unwrap_or_else(|| "application/octet-stream".to_owned());
        return Ok((Some(content_type), bytes));
    }
    match map.get("data").filter(|v| !v.is_null()) {
        None => Ok((declared, Vec::new())),
        Some(data) => {
            let content_type = declared.unwrap_or_else(|| "application/json".to_owned());
            let body = match data {
                // Non-JSON media types carry their text as a JSON string.
                Value::String(text) if !is_json_media_type(&content_type) => {
                    text.as_bytes().to_vec()
                }
                data => serde_json::to_vec(data).unwrap_or_default(),
            };
            Ok((Some(content_type), body))
        }
    }
}

/// Whether a media type is JSON (`application/json`, `text/json`, `*/*+json`).
fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// Adds a `ce-<name>` header for every attribute and extension except the
/// payload and its content type (which is `Content-Type`).
fn add_ce_headers(event: &Event, headers: &mut HeaderMap) -> Result<(), Failure> {
    for (name, value) in event.as_map() {
        if matches!(name.as_str(), "data" | "data_base64" | "datacontenttype") {
            continue;
        }
        let text = match value {
            Value::Null => continue,
            Value::String(s) => s.clone(),
            Value::Array(items) => items.iter().map(json_text).collect::<Vec<_>>().join(","),
            other => json_text(other),
        };
        let header_name =
            HeaderName::from_bytes(format!("ce-{name}").as_bytes()).map_err(|_| {
                Failure::new(
                    FailureCode::RenderError,
                    format!("attribute {name:?} cannot be an HTTP header"),
                )
            })?;
        // Percent-encoding leaves only visible ASCII, always a valid value.
        if let Ok(value) = HeaderValue::from_str(&percent_encode_header(&text)) {
            headers.insert(header_name, value);
        }
    }
    Ok(())
}

/// A JSON value as header text: strings as themselves, the rest as JSON.
fn json_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Percent-encodes a `ce-*` header value per the CloudEvents HTTP binding
/// (3.1.3.2): space, `"`, `%` and everything outside printable ASCII become
/// `%XX` of their UTF-8 bytes.
fn percent_encode_header(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (0x21..=0x7e).contains(&byte) && byte != b'"' && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(byte));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// Standard Webhooks symmetric signer.
struct Signer {
    key: Vec<u8>,
}

impl Signer {
    /// Decodes a `whsec_<base64>` secret.
    fn from_secret(secret: &str) -> Result<Self, String> {
        let encoded = secret
            .strip_prefix(SIGNING_SECRET_PREFIX)
            .ok_or_else(|| format!("must start with {SIGNING_SECRET_PREFIX}"))?;
        let key = BASE64
            .decode(encoded)
            .map_err(|_| format!("must be {SIGNING_SECRET_PREFIX} followed by base64"))?;
        if !SIGNING_KEY_LEN.contains(&key.len()) {
            return Err(format!(
                "must encode {} to {} bytes, not {}",
                SIGNING_KEY_LEN.start(),
                SIGNING_KEY_LEN.end(),
                key.len()
            ));
        }
        Ok(Self { key })
    }

    /// `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).
    fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        // HMAC accepts keys of any length; the key length is validated anyway.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => return String::new(),
        };
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }

    /// The `webhook-id`, `webhook-timestamp` and `webhook-signature` headers.
    ///
    /// The id is percent-encoded like a `ce-*` value (a no-op for the usual
    /// ASCII ids) and signed as sent, so receivers can verify with what they
    /// received.
    fn headers(&self, id: &str, timestamp: u64, body: &[u8]) -> HeaderMap {
        let id = percent_encode_header(id);
        let mut headers = HeaderMap::new();
        let signature = self.sign(&id, timestamp, body);
        // Percent-encoded text and base64 are always valid header values.
        if let (Ok(id), Ok(signature)) = (
            HeaderValue::from_str(&id),
            HeaderValue::from_str(&signature),
        ) {
            headers.insert(HeaderName::from_static("webhook-id"), id);
            headers.insert(HeaderName::from_static("webhook-signature"), signature);
        }
        headers.insert(
            HeaderName::from_static("webhook-timestamp"),
            HeaderValue::from(timestamp),
        );
        headers
    }
}

/// Runtime authentication.
enum Auth {
    /// A fixed header (API key or basic credentials).
    Header(HeaderName, HeaderValue),
    /// OAuth2 client credentials.
    OAuth2(Box<OAuth2>),
}

/// OAuth2 client-credentials state: where to get tokens, and the cached one.
struct OAuth2 {
    token_url: Url,
    client_id: String,
    client_secret: Secret,
    scope: Option<String>,
    /// The current token, or the last failure to get one. An async mutex
    /// held across the token request, so that concurrent deliveries wait for
    /// one refresh instead of each asking the endpoint.
    cache: tokio::sync::Mutex<TokenState>,
}

/// What the token cache holds.
#[derive(Default)]
enum TokenState {
    /// Nothing yet, or the token was refused.
    #[default]
    Empty,
    /// A token to use until it nears expiry.
    Valid(Token),
    /// The last request for a token failed at `at`. Deliveries queued behind
    /// that request get the same failure for a moment instead of each
    /// waiting for its own timeout in turn.
    Failed {
        /// When the request failed.
        at: Instant,
        /// Why.
        failure: Failure,
    },
}

/// How long a token endpoint failure is reused for waiting deliveries.
const TOKEN_FAILURE_REUSE: Duration = Duration::from_secs(1);

/// A cached access token.
struct Token {
    /// `Bearer <token>`, ready to send.
    header: HeaderValue,
    /// When to stop using it; `None` when the endpoint gave no `expires_in`
    /// (then it is used until the target answers 401).
    refresh_at: Option<Instant>,
}

/// The token endpoint's answer (RFC 6749 section 5.1).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    /// Seconds; some servers send it as a string.
    #[serde(default)]
    expires_in: Option<Value>,
}

impl OAuth2 {
    /// A valid access token as an `Authorization` value: the cached one, or a
    /// fresh one from the token endpoint.
    async fn token(&self, client: &HttpClient, timeout: Duration) -> Result<HeaderValue, Failure> {
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        match &*cache {
            TokenState::Valid(token) if token.refresh_at.is_none_or(|at| now < at) => {
                return Ok(token.header.clone());
            }
            TokenState::Failed { at, failure } if now < *at + TOKEN_FAILURE_REUSE => {
                return Err(failure.clone());
            }
            _ => {}
        }
        let fetched = tokio::time::timeout(timeout, self.fetch(client))
            .await
            .unwrap_or_else(|_| {
                Err(auth_error(format!(
                    "token endpoint gave no answer within {} ms",
                    timeout.as_millis()
                )))
            });
        match fetched {
            Ok(token) => {
                let header = token.header.clone();
                *cache = TokenState::Valid(token);
                Ok(header)
            }
            Err(failure) => {
                *cache = TokenState::Failed {
                    at: Instant::now(),
                    failure: failure.clone(),
                };
                Err(failure)
            }
        }
    }

    /// Forgets `used` if it is still the cached token (the target refused it).
    async fn invalidate(&self, used: &HeaderValue) {
        let mut cache = self.cache.lock().await;
        if matches!(&*cache, TokenState::Valid(token) if token.header == used) {
            *cache = TokenState::Empty;
        }
    }

    /// Asks the token endpoint for a token (client credentials grant, client
    /// authenticated with HTTP basic as RFC 6749 section 2.3.1 prefers).
    async fn fetch(&self, client: &HttpClient) -> Result<Token, Failure> {
        let mut form = "grant_type=client_credentials".to_owned();
        if let Some(scope) = &self.scope {
            form.push_str("&scope=");
            form.push_str(&form_encode(scope));
        }
        let requested_at = Instant::now();
        let mut response = client
            .inner
            .post(self.token_url.clone())
            .basic_auth(
                form_encode(&self.client_id),
                Some(form_encode(self.client_secret.expose())),
            )
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(form)
            .send()
            .await
            .map_err(|e| match find_forbidden(&e) {
                Some(forbidden) => forbidden,
                None => auth_error(format!("token endpoint: {}", error_chain(e))),
            })?;
        let status = response.status();
        let body = read_capped(&mut response, TOKEN_BODY_CAP).await;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY_CAP)]);
            return Err(Failure {
                status: Some(status.as_u16()),
                ..auth_error(format!("token endpoint answered {status}: {}", text.trim()))
            });
        }
        let answer: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| auth_error(format!("token endpoint answer is not a token: {e}")))?;
        if let Some(kind) = &answer.token_type
            && !kind.eq_ignore_ascii_case("bearer")
        {
            return Err(auth_error(format!("unsupported token_type {kind:?}")));
        }
        let header = HeaderValue::from_str(&format!("Bearer {}", answer.access_token))
            .map_err(|_| auth_error("access_token is not a valid header value"))?;
        let expires_in = answer.expires_in.as_ref().and_then(|v| match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        });
        let refresh_at = expires_in
            .and_then(|secs| Duration::try_from_secs_f64(secs.max(0.0)).ok())
            .map(|lifetime| requested_at + lifetime - refresh_margin(lifetime));
        Ok(Token {
            header: sensitive(header),
            refresh_at,
        })
    }
}

/// How long before expiry a token is replaced: a tenth of its lifetime, at
/// most 30 seconds, so that a token is never sent just as it expires.
fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(30))
}

fn auth_error(message: impl Into<String>) -> Failure {
    Failure::new(FailureCode::AuthError, message)
}

/// Spaces requests evenly at the configured rate (a token bucket holding one
/// token): a request may start `interval` after the previous one.
struct RateLimiter {
    interval: Duration,
    /// When the next request may start.
    next: Mutex<Instant>,
}

impl RateLimiter {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Reserves the next slot and waits for it.
    async fn acquire(&self) {
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(value: Value) -> Event {
        let Value::Object(map) = value else {
            panic!("not an object")
        };
        Event::from_validated(map)
    }

    fn base_event() -> Value {
        json!({
            "specversion": "1.0",
            "id": "evt-1",
            "source": "shop.orders",
            "type": "order.created",
        })
    }

    #[test]
    fn classification_table() {
        let cases: &[(u16, &str, Option<&str>)] = &[
            (200, "delivered", None),
            (201, "delivered", None),
            (204, "delivered", None),
            (299, "delivered", None),
            (301, "permanent", Some("http_status")),
            (302, "permanent", Some("http_status")),
            (304, "permanent", Some("http_status")),
            (400, "permanent", Some("http_status")),
            (401, "permanent", Some("http_status")),
            (403, "permanent", Some("http_status")),
            (404, "permanent", Some("http_status")),
            (408, "retry", Some("http_status")),
            (409, "permanent", Some("http_status")),
            (413, "permanent", Some("http_status")),
            (422, "permanent", Some("http_status")),
            (429, "retry", Some("rate_limited")),
            (500, "retry", Some("http_status")),
            (502, "retry", Some("http_status")),
            (503, "retry", Some("http_status")),
            (504, "retry", Some("http_status")),
            (599, "retry", Some("http_status")),
        ];
        for &(status, kind, code) in cases {
            let outcome = classify(status, None, b"", None, false);
            let got = match &outcome {
                Outcome::Delivered { status: s } => {
                    assert_eq!(*s, Some(status));
                    "delivered"
                }
                Outcome::Retry(_) => "retry",
                Outcome::Permanent(_) => "permanent",
            };
            assert_eq!(got, kind, "status {status}");
            assert_eq!(outcome.failure().map(|f| f.code.as_str()), code);
            if let Some(f) = outcome.failure() {
                assert_eq!(f.status, Some(status));
            }
        }
        // With OAuth2 a 401 means "token refused": retry with a new one.
        assert!(matches!(
            classify(401, None, b"", None, true),
            Outcome::Retry(_)
        ));
    }

    #[test]
    fn failure_message_carries_status_body_and_redirect() {
        let retry_after = Some(Duration::from_secs(3));
        let Outcome::Retry(f) =
            classify(503, retry_after, b"  down for maintenance\n", None, false)
        else {
            panic!("503 must retry")
        };
        assert_eq!(
            f.message,
            "HTTP 503 Service Unavailable: down for maintenance"
        );
        assert_eq!(f.retry_after, retry_after);
        let Outcome::Permanent(f) = classify(301, None, b"", Some("https://new.example/"), false)
        else {
            panic!("301 must be permanent")
        };
        assert!(
            f.message
                .contains("redirect to https://new.example/ not followed")
        );
    }

    #[test]
    fn retry_after_parsing() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        let cases: &[(&str, Option<u64>)] = &[
            ("120", Some(120)),
            (" 0 ", Some(0)),
            ("Wed, 21 Oct 2015 07:28:30 GMT", Some(30)),
            ("Wednesday, 21-Oct-15 07:29:00 GMT", Some(60)), // RFC 850
            ("Wed Oct 21 07:28:10 2015", Some(10)),          // asctime
            ("Wed, 21 Oct 2015 07:00:00 GMT", Some(0)),      // in the past
            ("-5", None),
            ("1.5", None),
            ("soon", None),
            ("", None),
            ("99999999999999999999999", None),
        ];
        for &(value, expected) in cases {
            assert_eq!(
                parse_retry_after(value, now),
                expected.map(Duration::from_secs),
                "{value:?}"
            );
        }
    }

    #[test]
    fn percent_encoding_follows_the_binding() {
        assert_eq!(percent_encode_header("plain-ASCII_1.0"), "plain-ASCII_1.0");
        assert_eq!(percent_encode_header("a b"), "a%20b");
        assert_eq!(percent_encode_header("say \"hi\""), "say%20%22hi%22");
        assert_eq!(percent_encode_header("100%"), "100%25");
        assert_eq!(percent_encode_header("€"), "%E2%82%AC");
        assert_eq!(percent_encode_header("tab\there\n"), "tab%09here%0A");
        assert_eq!(percent_encode_header("a,b;c=d/e'f"), "a,b;c=d/e'f");
        assert_eq!(form_encode("a b&c=d/é*"), "a+b%26c%3Dd%2F%C3%A9*");
    }

    #[test]
    fn binary_mode_maps_attributes_to_ce_headers() {
        let mut value = base_event();
        value["time"] = json!("2026-01-01T00:00:00Z");
        value["subject"] = json!("order 42 \"rush\"");
        value["datacontenttype"] = json!("application/json");
        value["resources"] = json!(["arn:a", "arn:b"]);
        value["hops"] = json!(2);
        value["vip"] = json!(true);
        value["nothing"] = Value::Null;
        value["data"] = json!({"total": 120});
        let event = event(value);
        let rendered = render(
            DeliveryMode::Binary,
            Payload {
                event: &event,
                body: None,
            },
        )
        .unwrap();
        let h = &rendered.headers;
        assert_eq!(h["ce-specversion"], "1.0");
        assert_eq!(h["ce-id"], "evt-1");
        assert_eq!(h["ce-source"], "shop.orders");
        assert_eq!(h["ce-type"], "order.created");
        assert_eq!(h["ce-time"], "2026-01-01T00:00:00Z");
        assert_eq!(h["ce-subject"], "order%2042%20%22rush%22");
        assert_eq!(h["ce-resources"], "arn:a,arn:b");
        assert_eq!(h["ce-hops"], "2");
        assert_eq!(h["ce-vip"], "true");
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        for absent in [
            "ce-data",
            "ce-datacontenttype",
            "ce-data_base64",
            "ce-nothing",
        ] {
            assert!(!h.contains_key(absent), "{absent}");
        }
        assert_eq!(rendered.body, br#"{"total":120}"#);
    }

    #[test]
    fn binary_mode_bodies() {
        // JSON data without a content type: application/json.
        let mut value = base_event();
        value["data"] = json!([1, 2]);
        let r = render_binary(value);
        assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(r.body, b"[1,2]");

        // A string under a non-JSON content type is sent as the text itself.
        let mut value = base_event();
        value["datacontenttype"] = json!("text/plain");
        value["data"] = json!("hello");
        let r = render_binary(value);
        assert_eq!(r.headers[header::CONTENT_TYPE], "text/plain");
        assert_eq!(r.body, b"hello");

        // A string under a JSON content type is a JSON string.
        let mut value = base_event();
        value["datacontenttype"] = json!("application/vnd.x+json; charset=utf-8");
        value["data"] = json!("hello");
        assert_eq!(render_binary(value).body, br#""hello""#);

        // Binary data is decoded.
        let mut value = base_event();
        value["datacontenttype"] = json!("image/png");
        value["data_base64"] = json!(BASE64.encode([0u8, 159, 146, 150]));
        let r = render_binary(value);
        assert_eq!(r.headers[header::CONTENT_TYPE], "image/png");
        assert_eq!(r.body, [0u8, 159, 146, 150]);

        let mut value = base_event();
        value["data_base64"] = json!("AAEC");
        let r = render_binary(value);
        assert_eq!(r.headers[header::CONTENT_TYPE], "application/octet-stream");

        // No data: no body, no Content-Type.
        let r = render_binary(base_event());
        assert!(r.body.is_empty());
        assert!(!r.headers.contains_key(header::CONTENT_TYPE));

        // Broken base64 is a permanent render error.
        let mut value = base_event();
        value["data_base64"] = json!("not base64!");
        let err = render(
            DeliveryMode::Binary,
            Payload {
                event: &event(value),
                body: None,
            },
        )
        .unwrap_err();
        assert_eq!(err.code, "render_error");
    }

    fn render_binary(value: Value) -> Rendered {
        render(
            DeliveryMode::Binary,
            Payload {
                event: &event(value),
                body: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn structured_mode_and_transformed_bodies() {
        let mut value = base_event();
        value["data"] = json!({"a": 1});
        let event = event(value);
        let r = render(
            DeliveryMode::Structured,
            Payload {
                event: &event,
                body: None,
            },
        )
        .unwrap();
        assert_eq!(
            r.headers[header::CONTENT_TYPE],
            "application/cloudevents+json; charset=utf-8"
        );
        assert_eq!(r.body, event.to_json_bytes());
        assert!(!r.headers.keys().any(|k| k.as_str().starts_with("ce-")));

        // A transform's output replaces the payload; binary mode keeps ce-*.
        let r = render(
            DeliveryMode::Binary,
            Payload {
                event: &event,
                body: Some(r#"{"order": 1}"#),
            },
        )
        .unwrap();
        assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(r.headers["ce-id"], "evt-1");
        assert_eq!(r.body, br#"{"order": 1}"#);
        let r = render(
            DeliveryMode::Structured,
            Payload {
                event: &event,
                body: Some("order 1 shipped"),
            },
        )
        .unwrap();
        assert_eq!(r.headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(r.body, b"order 1 shipped");
        assert!(!r.headers.contains_key("ce-id"));
    }

    #[test]
    fn signature_matches_the_standard_webhooks_vector() {
        // From the Standard Webhooks reference libraries' tests.
        let signer = Signer::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            signer.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let headers = signer.headers("msg_1", 1_700_000_000, b"{}");
        assert_eq!(headers["webhook-id"], "msg_1");
        let expected = signer.sign("msg_1", 1_700_000_000, b"{}");
        assert_eq!(headers["webhook-signature"], expected.as_str());
        assert_eq!(headers["webhook-timestamp"], "1700000000");
        // A non-ASCII id is sent, and signed, percent-encoded.
        let headers = signer.headers("é 1", 1, b"");
        assert_eq!(headers["webhook-id"], "%C3%A9%201");
        assert_eq!(
            headers["webhook-signature"],
            signer.sign("%C3%A9%201", 1, b"").as_str()
        );
        assert!(
            headers["webhook-signature"]
                .to_str()
                .unwrap()
                .starts_with("v1,")
        );
        assert!(Signer::from_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(Signer::from_secret("whsec_!!!").is_err());
        assert!(Signer::from_secret("whsec_c2hvcnQ=").is_err()); // 5 bytes
    }

    #[test]
    fn spec_deserialises_with_defaults_and_rejects_unknown_fields() {
        let spec: HttpTargetSpec = serde_json::from_value(json!({
            "url": "https://hooks.example/in",
            "auth": {"type": "oauth2", "token_url": "https://auth.example/token",
                     "client_id": "id", "client_secret": "s3cret"},
            "signing": {"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
        }))
        .unwrap();
        assert_eq!(spec.mode, DeliveryMode::Binary);
        assert!(spec.validate().is_ok());
        assert!(!format!("{spec:?}").contains("s3cret"));
        let back = serde_json::to_value(&spec).unwrap();
        assert_eq!(back["auth"]["client_secret"], "s3cret");
        assert_eq!(back["auth"]["type"], "oauth2");

        for bad in [
            json!({"url": "https://x.example", "retries": 3}),
            json!({"url": "https://x.example", "mode": "batch"}),
            json!({"url": "https://x.example", "auth": {"type": "digest"}}),
            json!({"url": "https://x.example",
                   "auth": {"type": "basic", "username": "u", "password": "p", "x": 1}}),
        ] {
            assert!(
                serde_json::from_value::<HttpTargetSpec>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn validate_reports_every_problem_with_its_path() {
        let spec: HttpTargetSpec = serde_json::from_value(json!({
            "url": "ftp://files.example/",
            "method": "GET",
            "headers": {"X-Ok": "1", "Content-Type": "text/xml", "ce-id": "x", "bad name": "v"},
            "timeout_ms": 120000,
            "auth": {"type": "oauth2", "token_url": "not a url", "client_id": "", "client_secret": "s"},
            "signing": {"secret": "nope"},
            "rate_limit_per_s": 0.0,
            "max_concurrency": 0,
        }))
        .unwrap();
        let err = spec.validate().unwrap_err();
        let fields: Vec<String> = err.problems().map(|p| p.field).collect();
        assert_eq!(
            fields,
            [
                "url",
                "method",
                "headers.Content-Type",
                "headers.bad name",
                "headers.ce-id",
                "timeout_ms",
                "auth.token_url",
                "auth.client_id",
                "signing.secret",
                "rate_limit_per_s",
                "max_concurrency",
            ]
        );
        assert!(HttpTarget::new(spec, HttpClient::new().unwrap()).is_err());

        let mut spec = HttpTargetSpec::new("https://user:pw@hooks.example/");
        assert_eq!(spec.validate().unwrap_err().field, "url");
        spec.url = "https://hooks.example/".into();
        spec.auth = Some(AuthSpec::ApiKey {
            header: "X-Key".into(),
            value: "k".into(),
        });
        spec.headers.insert("x-key".into(), "other".into());
        assert_eq!(spec.validate().unwrap_err().field, "headers.x-key");
        spec.headers.clear();
        spec.headers.insert("X-Trace".into(), "1".into());
        spec.headers.insert("x-trace".into(), "2".into());
        spec.headers.insert("Upgrade".into(), "h2c".into());
        let err = spec.validate().unwrap_err();
        let fields: Vec<String> = err.problems().map(|p| p.field).collect();
        assert_eq!(fields, ["headers.Upgrade", "headers.x-trace"]);
        spec.headers.clear();
        spec.rate_limit_per_s = Some(f64::NAN);
        assert_eq!(spec.validate().unwrap_err().field, "rate_limit_per_s");
    }

    #[test]
    fn refresh_margin_is_short_for_short_lived_tokens() {
        assert_eq!(
            refresh_margin(Duration::from_secs(1)),
            Duration::from_millis(100)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(3600)),
            Duration::from_secs(30)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_spaces_requests() {
        let limiter = RateLimiter::new(Duration::from_millis(100));
        let start = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        // The first goes at once, the next four 100 ms apart.
        assert_eq!(start.elapsed(), Duration::from_millis(400));
    }

    #[test]
    fn public_addresses() {
        let public = [
            "8.8.8.8",
            "1.1.1.1",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ];
        let private = [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fd00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
        ];
        for ip in public {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
        for ip in private {
            assert!(!is_public(ip.parse().unwrap()), "{ip} is private");
        }
    }

    #[test]
    fn ip_literal_destinations_are_checked_up_front() {
        let guarded = HttpClient::with_options(&HttpClientOptions {
            deny_private_networks: true,
        })
        .unwrap();
        let open = HttpClient::new().unwrap();
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
    fn target_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<HttpTarget>();
        assert_send_sync::<HttpClient>();
    }
}
