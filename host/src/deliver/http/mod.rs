//! The `http` (webhook) target: delivery attempts to one URL.
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
//! With `batch` ([`BatchSpec`]) the target takes several events per call
//! ([`HttpTarget::deliver_batch`]): CloudEvents batch mode, a JSON array of
//! structured events as `application/cloudevents-batch+json`, split into as
//! few requests as `batch.max_bytes` allows. A request's outcome (the table
//! above) is that of every event in it; the engine then retries or
//! dead-letters each event on its own. Rate limit, concurrency cap, auth
//! and signing apply per request (a batch's `webhook-id` is its event's id
//! for one event, else a digest of the events' ids).
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
use self::render::{BATCH_CONTENT_TYPE, Rendered, batch_body, render, render_member};
use self::signing::Signer;
pub use self::spec::{
    AuthSpec, BatchLimits, BatchSpec, DEFAULT_BATCH_BYTES, DEFAULT_BATCH_EVENTS,
    DEFAULT_TIMEOUT_MS, DeliveryMode, HttpTargetSpec, MAX_BATCH_BYTES, MAX_BATCH_EVENTS,
    MAX_BATCH_WAIT_MS, MAX_TIMEOUT_MS, MIN_BATCH_BYTES, Secret, SigningSpec,
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
    /// Batched delivery's limits, when the target takes batches.
    batch: Option<BatchLimits>,
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
            batch: c.batch,
        })
    }

    /// The spec this target was built from.
    pub fn spec(&self) -> &HttpTargetSpec {
        &self.spec
    }

    /// The batching limits, when the target sends events in batches.
    pub fn batch_limits(&self) -> Option<BatchLimits> {
        self.batch
    }

    /// Makes one delivery attempt and classifies the result.
    ///
    /// Waits for a concurrency slot and then for the rate limit, if the
    /// target has them; the timeout starts after both. An OAuth2 token
    /// request, when one is needed, gets its own `timeout_ms` before it.
    pub async fn deliver(&self, payload: Payload<'_>) -> Outcome {
        match render(self.spec.mode, payload) {
            Ok(rendered) => self.request(payload.event.id(), rendered).await,
            Err(failure) => Outcome::Permanent(failure),
        }
    }

    /// Delivers several events in CloudEvents batch mode: as few requests
    /// as `batch.max_bytes` allows, each an array of structured events.
    /// One outcome per payload, in order: a request's outcome is its every
    /// event's; an event that cannot be rendered, or alone exceeds
    /// `max_bytes`, fails permanently without holding back the others.
    /// Requests go one after another (order within a batch is kept).
    pub async fn deliver_batch(&self, payloads: &[Payload<'_>]) -> Vec<Outcome> {
        let max_bytes = self
            .batch
            .map_or(spec::DEFAULT_BATCH_BYTES as usize, |b| b.max_bytes);
        let mut outcomes: Vec<Option<Outcome>> = vec![None; payloads.len()];
        // Requests as (first member, members, body length) over `members`.
        let mut members: Vec<(usize, Vec<u8>)> = Vec::with_capacity(payloads.len());
        for (i, payload) in payloads.iter().enumerate() {
            match render_member(*payload) {
                Ok(bytes) if bytes.len() + 2 <= max_bytes => members.push((i, bytes)),
                Ok(bytes) => {
                    outcomes[i] = Some(Outcome::Permanent(Failure::new(
                        FailureCode::RenderError,
                        format!(
                            "the event is {} bytes as JSON, more than the target's batch.max_bytes ({max_bytes})",
                            bytes.len()
                        ),
                    )));
                }
                Err(failure) => outcomes[i] = Some(Outcome::Permanent(failure)),
            }
        }
        for request in split_by_bytes(&members, max_bytes) {
            let group = &members[request];
            let len = group.iter().map(|(_, m)| m.len() + 1).sum::<usize>() + 1;
            let body = batch_body(group.iter().map(|(_, m)| m.as_slice()), len);
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(BATCH_CONTENT_TYPE),
            );
            let ids: Vec<&str> = group.iter().map(|(i, _)| payloads[*i].event.id()).collect();
            let outcome = self
                .request(&batch_id(&ids), Rendered { headers, body })
                .await;
            for (i, _) in group {
                outcomes[*i] = Some(outcome.clone());
            }
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Outcome::Permanent(Failure::new(FailureCode::RenderError, "not rendered"))
                })
            })
            .collect()
    }

    /// Sends one rendered request (`id` names it for signing) and
    /// classifies the answer.
    async fn request(&self, id: &str, rendered: Rendered) -> Outcome {
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
        let outcome = self.attempt(id, rendered, bearer.as_ref()).await;
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

/// Splits rendered members into consecutive runs whose array (brackets and
/// commas included) fits in `max_bytes`; every member alone fits.
fn split_by_bytes(members: &[(usize, Vec<u8>)], max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut len = 1; // `[`
    for (i, (_, member)) in members.iter().enumerate() {
        // The member and the `,` or `]` after it.
        let adds = member.len() + 1;
        if i > start && len + adds > max_bytes {
            runs.push(start..i);
            start = i;
            len = 1;
        }
        len += adds;
    }
    if start < members.len() {
        runs.push(start..members.len());
    }
    runs
}

/// The id a batched request is signed with (`webhook-id`): the event's own
/// id for a batch of one, else a digest of the members' ids, so the same
/// batch sent again carries the same id.
fn batch_id(ids: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    match ids {
        [one] => (*one).to_owned(),
        _ => {
            let mut hash = Sha256::new();
            for id in ids {
                hash.update(id.as_bytes());
                hash.update([0]);
            }
            let digest = hash.finalize();
            let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            format!("batch_{hex}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_split_into_arrays_that_fit() {
        let members = |sizes: &[usize]| -> Vec<(usize, Vec<u8>)> {
            sizes
                .iter()
                .enumerate()
                .map(|(i, n)| (i, vec![b'x'; *n]))
                .collect()
        };
        // [aaaa,bbbb] is 11 bytes.
        assert_eq!(split_by_bytes(&members(&[4, 4]), 11), vec![0..2_usize; 1]);
        assert_eq!(split_by_bytes(&members(&[4, 4]), 10), [0..1, 1..2]);
        assert_eq!(
            split_by_bytes(&members(&[8, 1, 1, 8, 8]), 10),
            [0..1, 1..3, 3..4, 4..5]
        );
        assert!(split_by_bytes(&members(&[]), 10).is_empty());
        let ms = members(&[3, 2, 5, 1]);
        for max in 7..30 {
            for run in split_by_bytes(&ms, max) {
                let body = batch_body(ms[run].iter().map(|(_, m)| m.as_slice()), 0);
                assert!(body.len() <= max, "{max}");
            }
        }
    }

    #[test]
    fn batch_ids_are_stable_and_distinct() {
        assert_eq!(batch_id(&["e1"]), "e1");
        assert_eq!(batch_id(&["e1", "e2"]), batch_id(&["e1", "e2"]));
        assert_ne!(batch_id(&["e1", "e2"]), batch_id(&["e1e", "2"]));
        assert!(batch_id(&["a", "b"]).starts_with("batch_"));
    }

    #[test]
    fn target_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<HttpTarget>();
        assert_send_sync::<HttpClient>();
    }
}
