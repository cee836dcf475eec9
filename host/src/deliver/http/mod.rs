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
//! | a destination egress refuses (no request sent)  | `Permanent` | `forbidden_destination` |
//!
//! The event is sent in CloudEvents HTTP binary mode (attributes as `ce-*`
//! headers, the payload as the body) unless the target asks for structured
//! mode (the whole event as `application/cloudevents+json`). Requests can be
//! authenticated (API key, basic, OAuth2 client credentials) and signed
//! (Standard Webhooks), and each target can be rate-limited and given a
//! concurrency cap; both make `deliver` wait, never fail.
//!
//! One file per concern: [`spec`](HttpTargetSpec) (the rule's form and its
//! validation), `client` (the pooled client and the egress policy it
//! enforces), `render` (the request an event becomes), `auth`, `signing`,
//! `rate`, and `classify` (answers and errors into outcomes).

mod auth;
mod classify;
mod client;
mod rate;
mod render;
mod signing;
mod spec;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Url};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use self::auth::Auth;
use self::classify::{FORBIDDEN_DESTINATION, classify, classify_error, parse_retry_after};
pub use self::client::HttpClient;
use self::client::read_capped;
use self::rate::RateLimiter;
use self::render::{Rendered, render};
use self::signing::Signer;
pub use self::spec::{
    AuthSpec, DEFAULT_TIMEOUT_MS, DeliveryMode, HttpTargetSpec, MAX_TIMEOUT_MS, Secret, SigningSpec,
};
pub use super::SpecError;
use super::{Failure, FailureCode, Outcome, Payload, Problems};

/// How much of a failed response's body is kept for the error message.
pub const ERROR_BODY_CAP: usize = 4 * 1024;

/// A validated `http` target, ready to deliver. Cheap to share via `Arc`;
/// the rate limiter, concurrency cap and OAuth2 token cache live here, so
/// share one `HttpTarget` per configured target.
pub struct HttpTarget {
    /// Kept to answer [`HttpTarget::spec`] and for the delivery mode.
    spec: HttpTargetSpec,
    /// Shared by all targets, so connections are pooled across them; it
    /// also holds the egress policy of the target's tenant.
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
    /// Validates `spec` and builds the target; requests go through `client`
    /// (for a tenant's target, [`HttpClient::for_tenant`], so that tenant's
    /// egress list applies).
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
            .reqwest()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<HttpTarget>();
        assert_send_sync::<HttpClient>();
    }
}
