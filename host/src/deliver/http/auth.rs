//! How requests authenticate to a target: a fixed header (API key, HTTP
//! basic), or an OAuth2 client-credentials token, cached until shortly
//! before it expires and dropped when the target refuses it.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::Url;
use reqwest::header::{self, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;

use super::super::{Failure, FailureCode, Problems};
use super::ERROR_BODY_CAP;
use super::classify::{error_chain, find_forbidden};
use super::client::{HttpClient, read_capped};
use super::spec::{AuthSpec, Secret, check_url, reserved_header};

/// How much of a token endpoint's answer is read (JWT access tokens can be a
/// few kilobytes).
const TOKEN_BODY_CAP: usize = 64 * 1024;

/// How long a token endpoint failure is reused for waiting deliveries.
const TOKEN_FAILURE_REUSE: Duration = Duration::from_secs(1);

/// Runtime authentication.
pub(super) enum Auth {
    /// A fixed header (API key or basic credentials).
    Header(HeaderName, HeaderValue),
    /// OAuth2 client credentials.
    OAuth2(Box<OAuth2>),
}

impl Auth {
    /// Validates an auth spec, recording problems under `auth.*`.
    pub(super) fn compile(auth: &AuthSpec, problems: &mut Problems) -> Option<Self> {
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
                Some(Self::Header(name?, value?))
            }
            AuthSpec::Basic { username, password } => {
                if username.is_empty() || username.contains(':') {
                    problems.add("auth.username", "must be non-empty and without ':'");
                    return None;
                }
                let credentials = BASE64.encode(format!("{username}:{}", password.expose()));
                match HeaderValue::from_str(&format!("Basic {credentials}")) {
                    Ok(value) => Some(Self::Header(header::AUTHORIZATION, sensitive(value))),
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
                Some(Self::OAuth2(Box::new(OAuth2 {
                    token_url: token_url?,
                    client_id: client_id.clone(),
                    client_secret: client_secret.clone(),
                    scope: scope.clone(),
                    cache: tokio::sync::Mutex::default(),
                })))
            }
        }
    }
}

/// A header value that HTTP/2 must not index and logs must not show.
pub(super) fn sensitive(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

/// OAuth2 client-credentials state: where to get tokens, and the cached one.
pub(super) struct OAuth2 {
    pub(super) token_url: Url,
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
    pub(super) async fn token(
        &self,
        client: &HttpClient,
        timeout: Duration,
    ) -> Result<HeaderValue, Failure> {
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
    pub(super) async fn invalidate(&self, used: &HeaderValue) {
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
            .reqwest()
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("a b&c=d/é*"), "a+b%26c%3Dd%2F%C3%A9*");
    }
}
