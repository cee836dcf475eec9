//! The `http` target as written in a rule, and its validation into the
//! runtime parts of an [`HttpTarget`](super::HttpTarget).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::super::{Problems, SpecError};
use super::auth::Auth;
use super::rate::RateLimiter;
use super::signing::Signer;

/// The default request timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// The largest request timeout a target may ask for.
pub const MAX_TIMEOUT_MS: u64 = 60_000;
/// Slowest and fastest allowed rate limits (requests per second).
const MIN_RATE_PER_S: f64 = 0.001;
const MAX_RATE_PER_S: f64 = 100_000.0;
/// Largest allowed concurrency cap.
const MAX_CONCURRENCY: u32 = 10_000;
/// Events per batched request: the default and the most a target may ask for.
pub const DEFAULT_BATCH_EVENTS: u32 = 100;
/// The most events a target may take in one batched request.
pub const MAX_BATCH_EVENTS: u32 = 1_000;
/// Bytes per batched request body: the default, the least and the most.
pub const DEFAULT_BATCH_BYTES: u64 = 1024 * 1024;
/// The smallest `batch.max_bytes` (room for one ordinary event).
pub const MIN_BATCH_BYTES: u64 = 1024;
/// The largest `batch.max_bytes`.
pub const MAX_BATCH_BYTES: u64 = 16 * 1024 * 1024;
/// The longest a batch may wait to fill (ms); the default is not to wait.
pub const MAX_BATCH_WAIT_MS: u64 = 10_000;

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
    /// Several events per request (CloudEvents batch mode); `mode` then
    /// does not apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSpec>,
}

/// Batched delivery as written in a target: several events per request, as
/// an `application/cloudevents-batch+json` array of structured events.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// Most events in one request (1 to 1000; default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_events: Option<u32>,
    /// Most bytes in one request body (1 KiB to 16 MiB; default 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Longest a first delivery waits for others to fill its batch (0 to
    /// 10000 ms; default 0: send what is due now, batched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait_ms: Option<u64>,
}

/// A target's validated batching limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most events in one request.
    pub max_events: usize,
    /// Most bytes in one request body.
    pub max_bytes: usize,
    /// Longest a first delivery waits for its batch to fill.
    pub max_wait: Duration,
}

impl BatchSpec {
    /// Validates the limits (problems under `batch.`).
    fn compile(&self, problems: &mut Problems) -> Option<BatchLimits> {
        let before = problems.len();
        let max_events = self.max_events.unwrap_or(DEFAULT_BATCH_EVENTS);
        if !(1..=MAX_BATCH_EVENTS).contains(&max_events) {
            problems.add(
                "batch.max_events",
                format!("must be between 1 and {MAX_BATCH_EVENTS}"),
            );
        }
        let max_bytes = self.max_bytes.unwrap_or(DEFAULT_BATCH_BYTES);
        if !(MIN_BATCH_BYTES..=MAX_BATCH_BYTES).contains(&max_bytes) {
            problems.add(
                "batch.max_bytes",
                format!("must be between {MIN_BATCH_BYTES} and {MAX_BATCH_BYTES}"),
            );
        }
        let max_wait_ms = self.max_wait_ms.unwrap_or(0);
        if max_wait_ms > MAX_BATCH_WAIT_MS {
            problems.add(
                "batch.max_wait_ms",
                format!("must be between 0 and {MAX_BATCH_WAIT_MS}"),
            );
        }
        (problems.len() == before).then(|| BatchLimits {
            max_events: max_events as usize,
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            max_wait: Duration::from_millis(max_wait_ms),
        })
    }
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

/// The validated runtime parts of a spec.
pub(super) struct Compiled {
    pub(super) url: Url,
    pub(super) method: Method,
    pub(super) headers: HeaderMap,
    pub(super) timeout: Duration,
    pub(super) auth: Option<Auth>,
    pub(super) signer: Option<Signer>,
    pub(super) rate: Option<RateLimiter>,
    pub(super) concurrency: Option<Semaphore>,
    pub(super) batch: Option<BatchLimits>,
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
            batch: None,
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
    pub(super) fn compile(&self, problems: &mut Problems) -> Option<Compiled> {
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
            .and_then(|auth| Auth::compile(auth, problems));
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

        let batch = self.batch.as_ref().and_then(|b| b.compile(problems));

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
                batch,
            })
        } else {
            None
        }
    }
}

/// Why a header cannot be set in `headers` (the bus sets it), if it cannot.
pub(super) fn reserved_header(lowercase_name: &str) -> Option<&'static str> {
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
    } else if lowercase_name.starts_with(crate::binding::headers::PREFIX) {
        Some("ce-* headers carry the event's attributes")
    } else {
        None
    }
}

/// Parses a target or token endpoint URL: `http` or `https`, with a host,
/// without credentials. Whether egress allows the host is decided per
/// attempt (the policy is the operator's, and may change with a restart).
pub(super) fn check_url(raw: &str, field: &str, problems: &mut Problems) -> Option<Url> {
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

#[cfg(test)]
mod tests {
    use super::super::{HttpClient, HttpTarget};
    use super::*;
    use serde_json::json;

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
        let client = HttpClient::new(&crate::net::EgressPolicy::default()).unwrap();
        assert!(HttpTarget::new(spec, client).is_err());

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
}
