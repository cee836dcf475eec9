//! Outbound HTTP for connectors: a small blocking client over `wasi:http`.
//!
//! Build a [`Request`], send it with [`Context::http`](crate::Context::http),
//! and turn the [`Response`] into a delivery outcome with
//! [`Response::error_for_status`]:
//!
//! ```
//! use busbar_sdk::prelude::*;
//! use busbar_sdk::testing::FakeHttp;
//!
//! let http = FakeHttp::new();
//! http.respond(Response::new(503).with_header("retry-after", "7"));
//! let cx = Context::default().with_http(http.clone());
//!
//! let request = Request::post("https://example.com/hook")
//!     .header("x-api-key", "k")
//!     .json(&json!({"hello": "world"}))
//!     .unwrap();
//! let outcome = cx.http().send(&request).unwrap().error_for_status();
//! assert_eq!(outcome.unwrap_err().retry_after_ms(), Some(7_000));
//! assert_eq!(http.requests()[0].header_value("content-type"), Some("application/json"));
//! ```
//!
//! The host allows a connector to reach only the hosts its target lists; a
//! refused request fails with [`HttpError::Denied`], which is a permanent
//! delivery error.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::{DeliveryError, PluginError};

/// The most response body bytes the client keeps; the rest is discarded.
pub const MAX_RESPONSE_BODY: usize = 1024 * 1024;

/// The timeout used when a request sets none (connect, first byte and
/// between bytes each).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `PATCH`
    Patch,
    /// `DELETE`
    Delete,
}

impl Method {
    /// The method's name, e.g. `"POST"`.
    ///
    /// ```
    /// assert_eq!(busbar_sdk::http::Method::Post.as_str(), "POST");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
        }
    }
}

/// An outbound HTTP request.
///
/// ```
/// use busbar_sdk::http::{Method, Request};
///
/// let request = Request::post("https://example.com/in").header("x-k", "v").body(b"hi".to_vec());
/// assert_eq!(request.method, Method::Post);
/// assert_eq!(request.header_value("X-K"), Some("v"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The absolute `http://` or `https://` URL.
    pub url: String,
    /// Header (name, value) pairs, in order.
    pub headers: Vec<(String, String)>,
    /// The body; empty for none.
    pub body: Vec<u8>,
    /// Connect, first-byte and between-bytes timeout; [`DEFAULT_TIMEOUT`]
    /// when `None`.
    pub timeout: Option<Duration>,
}

impl Request {
    /// A request with `method` to `url`, no headers and no body.
    ///
    /// ```
    /// use busbar_sdk::http::{Method, Request};
    /// assert_eq!(Request::new(Method::Put, "https://x").url, "https://x");
    /// ```
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Self {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
        }
    }

    /// A `GET` request.
    ///
    /// ```
    /// assert_eq!(busbar_sdk::http::Request::get("https://x").method, busbar_sdk::http::Method::Get);
    /// ```
    pub fn get(url: impl Into<String>) -> Self {
        Self::new(Method::Get, url)
    }

    /// A `POST` request.
    ///
    /// ```
    /// assert_eq!(busbar_sdk::http::Request::post("https://x").method, busbar_sdk::http::Method::Post);
    /// ```
    pub fn post(url: impl Into<String>) -> Self {
        Self::new(Method::Post, url)
    }

    /// Adds a header.
    ///
    /// ```
    /// let r = busbar_sdk::http::Request::get("https://x").header("a", "1");
    /// assert_eq!(r.headers, vec![("a".to_owned(), "1".to_owned())]);
    /// ```
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    ///
    /// ```
    /// let r = busbar_sdk::http::Request::post("https://x").body(b"x".to_vec());
    /// assert_eq!(r.body, b"x");
    /// ```
    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    /// Sets the body to `value` as JSON and the `content-type` header to
    /// `application/json`.
    ///
    /// ```
    /// let r = busbar_sdk::http::Request::post("https://x").json(&[1]).unwrap();
    /// assert_eq!(r.body, b"[1]");
    /// ```
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Result<Self, PluginError> {
        let body = serde_json::to_vec(value)
            .map_err(|e| PluginError::internal(format!("cannot serialise JSON body: {e}")))?;
        Ok(self.header("content-type", "application/json").body(body))
    }

    /// Sets the connect, first-byte and between-bytes timeout.
    ///
    /// ```
    /// use std::time::Duration;
    /// let r = busbar_sdk::http::Request::get("https://x").timeout(Duration::from_secs(2));
    /// assert_eq!(r.timeout, Some(Duration::from_secs(2)));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The first value of header `name` (case-insensitive).
    ///
    /// ```
    /// let r = busbar_sdk::http::Request::get("https://x").header("Content-Type", "a/b");
    /// assert_eq!(r.header_value("content-type"), Some("a/b"));
    /// ```
    pub fn header_value(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// An HTTP response.
///
/// ```
/// use busbar_sdk::http::Response;
///
/// let response = Response::new(200).with_header("Content-Type", "text/plain").with_body(b"ok".to_vec());
/// assert!(response.is_success());
/// assert_eq!(response.header("content-type"), Some("text/plain"));
/// assert_eq!(response.text(), "ok");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header (name, value) pairs, in order.
    pub headers: Vec<(String, String)>,
    /// The body, at most [`MAX_RESPONSE_BODY`] bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with `status`, no headers and no body.
    ///
    /// ```
    /// assert_eq!(busbar_sdk::http::Response::new(204).status, 204);
    /// ```
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// This response with a header added.
    ///
    /// ```
    /// let r = busbar_sdk::http::Response::new(200).with_header("a", "1");
    /// assert_eq!(r.header("A"), Some("1"));
    /// ```
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// This response with `body`.
    ///
    /// ```
    /// let r = busbar_sdk::http::Response::new(200).with_body(b"x".to_vec());
    /// assert_eq!(r.body, b"x");
    /// ```
    #[must_use]
    pub fn with_body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    /// The first value of header `name` (case-insensitive).
    ///
    /// ```
    /// assert_eq!(busbar_sdk::http::Response::new(200).header("x"), None);
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Whether the status is 2xx.
    ///
    /// ```
    /// assert!(!busbar_sdk::http::Response::new(302).is_success());
    /// ```
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text, invalid UTF-8 replaced.
    ///
    /// ```
    /// assert_eq!(busbar_sdk::http::Response::new(200).with_body(b"hi".to_vec()).text(), "hi");
    /// ```
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The delay a `Retry-After` header asks for, in milliseconds, when it
    /// is given in seconds (the HTTP-date form is ignored).
    ///
    /// ```
    /// let r = busbar_sdk::http::Response::new(429).with_header("Retry-After", "3");
    /// assert_eq!(r.retry_after_ms(), Some(3_000));
    /// ```
    pub fn retry_after_ms(&self) -> Option<u64> {
        self.header("retry-after")?
            .trim()
            .parse::<u64>()
            .ok()
            .map(|secs| secs.saturating_mul(1000))
    }

    /// The delivery outcome this response means:
    /// - 2xx: delivered;
    /// - 408, 429 and 5xx: [`DeliveryError::Retryable`], with the
    ///   `Retry-After` delay when given;
    /// - any other status (4xx, or an unfollowed 1xx/3xx):
    ///   [`DeliveryError::Permanent`].
    ///
    /// ```
    /// use busbar_sdk::http::Response;
    /// assert!(Response::new(202).error_for_status().is_ok());
    /// assert!(Response::new(500).error_for_status().unwrap_err().is_retryable());
    /// assert!(!Response::new(404).error_for_status().unwrap_err().is_retryable());
    /// ```
    pub fn error_for_status(&self) -> Result<(), DeliveryError> {
        if self.is_success() {
            return Ok(());
        }
        let message = self.describe();
        match self.status {
            408 | 429 | 500..=599 => Err(DeliveryError::Retryable {
                message,
                retry_after_ms: self.retry_after_ms(),
            }),
            _ => Err(DeliveryError::Permanent(message)),
        }
    }

    /// `"HTTP 503: <start of body>"`, for error messages.
    fn describe(&self) -> String {
        const SNIPPET: usize = 200;
        let text = self.text();
        let text = text.trim();
        if text.is_empty() {
            format!("HTTP {}", self.status)
        } else {
            let snippet: String = text.chars().take(SNIPPET).collect();
            format!("HTTP {}: {snippet}", self.status)
        }
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The host refused the request (a host the target does not allow, or
    /// a plugin kind without HTTP).
    Denied(String),
    /// The request is malformed (bad URL, header name or value).
    InvalidRequest(String),
    /// Connecting or waiting for the response took too long.
    Timeout(String),
    /// The connection failed (DNS, refused, reset, TLS, protocol error).
    Connection(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Denied(m) => write!(f, "request denied: {m}"),
            Self::InvalidRequest(m) => write!(f, "invalid request: {m}"),
            Self::Timeout(m) => write!(f, "timeout: {m}"),
            Self::Connection(m) => write!(f, "connection failed: {m}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// A denied or malformed request will fail the same way again: permanent.
/// Timeouts and connection failures are retryable.
impl From<HttpError> for DeliveryError {
    fn from(err: HttpError) -> Self {
        match err {
            HttpError::Denied(_) | HttpError::InvalidRequest(_) => Self::Permanent(err.to_string()),
            HttpError::Timeout(_) | HttpError::Connection(_) => Self::retryable(err.to_string()),
        }
    }
}

/// Sends requests. [`Context::http`](crate::Context::http) gives the
/// plugin's client; [`testing::FakeHttp`](crate::testing::FakeHttp) is one
/// for tests. Implement it to stub HTTP your own way:
///
/// ```
/// use busbar_sdk::http::{HttpClient, HttpError, Request, Response};
///
/// /// Answers 200 to the staging host and refuses every other host.
/// struct StagingOnly;
///
/// impl HttpClient for StagingOnly {
///     fn send(&self, request: &Request) -> Result<Response, HttpError> {
///         match busbar_sdk::http::split_url(&request.url)?.authority {
///             "staging.example.com" => Ok(Response::new(200)),
///             other => Err(HttpError::Denied(other.to_owned())),
///         }
///     }
/// }
///
/// let cx = busbar_sdk::Context::default().with_http(StagingOnly);
/// assert!(cx.http().send(&Request::get("https://prod.example.com/")).is_err());
/// ```
pub trait HttpClient {
    /// Sends `request` and waits for the response (the body is read whole,
    /// up to [`MAX_RESPONSE_BODY`] bytes).
    fn send(&self, request: &Request) -> Result<Response, HttpError>;
}

/// The parts of an absolute URL that `wasi:http` wants separately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlParts<'a> {
    /// Whether the scheme is `https`.
    pub https: bool,
    /// `host[:port]`, with any `user:password@` prefix removed.
    pub authority: &'a str,
    /// The path and query, starting with `/`.
    pub path_and_query: String,
}

/// Splits an absolute `http`/`https` URL for `wasi:http`. The fragment is
/// dropped.
///
/// ```
/// let parts = busbar_sdk::http::split_url("https://api.example.com:8443/v1/x?a=1#frag").unwrap();
/// assert!(parts.https);
/// assert_eq!(parts.authority, "api.example.com:8443");
/// assert_eq!(parts.path_and_query, "/v1/x?a=1");
/// assert!(busbar_sdk::http::split_url("ftp://x").is_err());
/// ```
pub fn split_url(url: &str) -> Result<UrlParts<'_>, HttpError> {
    let invalid = |why: &str| HttpError::InvalidRequest(format!("URL {url:?} {why}"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid("is not absolute"))?;
    let https = match scheme.to_ascii_lowercase().as_str() {
        "https" => true,
        "http" => false,
        _ => return Err(invalid("must use http or https")),
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = authority.rsplit('@').next().unwrap_or_default();
    if authority.is_empty() || authority.contains(char::is_whitespace) {
        return Err(invalid("has no valid host"));
    }
    let path_and_query = if tail.starts_with('/') {
        tail.to_owned()
    } else {
        format!("/{tail}")
    };
    Ok(UrlParts {
        https,
        authority,
        path_and_query,
    })
}

#[cfg(target_arch = "wasm32")]
pub(crate) mod wasi {
    //! [`HttpClient`] over `wasi:http/outgoing-handler`.

    use super::{DEFAULT_TIMEOUT, HttpClient, HttpError, MAX_RESPONSE_BODY, Method, Request};
    use super::{Response, split_url};
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{
        ErrorCode, Fields, IncomingBody, Method as WasiMethod, OutgoingBody, OutgoingRequest,
        RequestOptions, Scheme,
    };
    use wasip2::io::streams::StreamError;

    /// `wasi:http` accepts at most this many bytes per blocking write.
    const WRITE_CHUNK: usize = 4096;
    const READ_CHUNK: u64 = 64 * 1024;

    /// Sends requests through the host's `wasi:http` implementation.
    pub(crate) struct WasiHttp;

    impl HttpClient for WasiHttp {
        fn send(&self, request: &Request) -> Result<Response, HttpError> {
            let parts = split_url(&request.url)?;
            let headers = Fields::new();
            for (name, value) in &request.headers {
                headers
                    .append(name, value.as_bytes())
                    .map_err(|e| HttpError::InvalidRequest(format!("header {name:?}: {e:?}")))?;
            }
            // Without it the body goes out chunked, which some receivers
            // refuse; the host checks that the body matches it.
            let has_length = request.header_value("content-length").is_some();
            if !has_length && (!request.body.is_empty() || request.method != Method::Get) {
                let length = request.body.len().to_string();
                headers
                    .append("content-length", length.as_bytes())
                    .map_err(|e| HttpError::InvalidRequest(format!("content-length: {e:?}")))?;
            }
            let outgoing = OutgoingRequest::new(headers);
            let method = match request.method {
                Method::Get => WasiMethod::Get,
                Method::Post => WasiMethod::Post,
                Method::Put => WasiMethod::Put,
                Method::Patch => WasiMethod::Patch,
                Method::Delete => WasiMethod::Delete,
            };
            let scheme = if parts.https {
                Scheme::Https
            } else {
                Scheme::Http
            };
            let invalid = |what: &str| HttpError::InvalidRequest(format!("invalid {what}"));
            outgoing
                .set_method(&method)
                .map_err(|()| invalid("method"))?;
            outgoing
                .set_scheme(Some(&scheme))
                .map_err(|()| invalid("scheme"))?;
            outgoing
                .set_authority(Some(parts.authority))
                .map_err(|()| invalid("authority"))?;
            outgoing
                .set_path_with_query(Some(&parts.path_and_query))
                .map_err(|()| invalid("path"))?;

            let body = outgoing.body().map_err(|()| invalid("body"))?;
            let options = RequestOptions::new();
            let timeout_ns = u64::try_from(request.timeout.unwrap_or(DEFAULT_TIMEOUT).as_nanos())
                .unwrap_or(u64::MAX);
            // Hosts may refuse to let a guest set timeouts; theirs apply then.
            let _ = options.set_connect_timeout(Some(timeout_ns));
            let _ = options.set_first_byte_timeout(Some(timeout_ns));
            let _ = options.set_between_bytes_timeout(Some(timeout_ns));

            let pending = outgoing_handler::handle(outgoing, Some(options)).map_err(map_error)?;
            // A server may answer before it has read the whole body (HTTP
            // allows it, and a fast 4xx often does), and the host may refuse
            // the request (a host not allowed, a restricted address) while
            // the body is being written; either way the body stream closes.
            // So a failed write is not an error of its own: the response, or
            // the host's reason for having none, says what happened.
            let mut write_failed = false;
            {
                let stream = body.write().map_err(|()| invalid("body stream"))?;
                for chunk in request.body.chunks(WRITE_CHUNK) {
                    if stream.blocking_write_and_flush(chunk).is_err() {
                        write_failed = true;
                        break;
                    }
                }
            }
            if !write_failed {
                OutgoingBody::finish(body, None).map_err(map_error)?;
            }

            pending.subscribe().block();
            let incoming = match pending.get() {
                Some(Ok(Ok(response))) => response,
                Some(Ok(Err(code))) => return Err(map_error(code)),
                Some(Err(())) | None => {
                    return Err(HttpError::Connection("response already taken".into()));
                }
            };
            let status = incoming.status();
            let headers = incoming
                .headers()
                .entries()
                .into_iter()
                .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
                .collect();
            let body = read_body(
                incoming
                    .consume()
                    .map_err(|()| HttpError::Connection("response body unavailable".into()))?,
            )?;
            Ok(Response {
                status,
                headers,
                body,
            })
        }
    }

    fn read_body(body: IncomingBody) -> Result<Vec<u8>, HttpError> {
        let mut bytes = Vec::new();
        {
            let stream = body
                .stream()
                .map_err(|()| HttpError::Connection("response body stream unavailable".into()))?;
            loop {
                match stream.blocking_read(READ_CHUNK) {
                    Ok(chunk) => {
                        let room = MAX_RESPONSE_BODY.saturating_sub(bytes.len());
                        bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
                        if room == 0 {
                            break;
                        }
                    }
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        return Err(HttpError::Connection(format!(
                            "reading response body: {}",
                            e.to_debug_string()
                        )));
                    }
                }
            }
        }
        drop(IncomingBody::finish(body));
        Ok(bytes)
    }

    fn map_error(code: ErrorCode) -> HttpError {
        let message = format!("{code:?}");
        match code {
            ErrorCode::HttpRequestDenied | ErrorCode::DestinationIpProhibited => {
                HttpError::Denied(message)
            }
            ErrorCode::HttpRequestMethodInvalid
            | ErrorCode::HttpRequestUriInvalid
            | ErrorCode::HttpRequestUriTooLong
            | ErrorCode::HttpRequestHeaderSectionSize(_)
            | ErrorCode::HttpRequestHeaderSize(_)
            | ErrorCode::HttpRequestBodySize(_) => HttpError::InvalidRequest(message),
            ErrorCode::DnsTimeout
            | ErrorCode::ConnectionTimeout
            | ErrorCode::ConnectionReadTimeout
            | ErrorCode::ConnectionWriteTimeout
            | ErrorCode::HttpResponseTimeout => HttpError::Timeout(message),
            _ => HttpError::Connection(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_url_handles_userinfo_and_missing_path() {
        let parts = split_url("http://u:p@example.com?x=1").unwrap();
        assert!(!parts.https);
        assert_eq!(parts.authority, "example.com");
        assert_eq!(parts.path_and_query, "/?x=1");
    }

    #[test]
    fn split_url_rejects_relative_and_empty_host() {
        assert!(matches!(
            split_url("/relative"),
            Err(HttpError::InvalidRequest(_))
        ));
        assert!(matches!(
            split_url("https:///path"),
            Err(HttpError::InvalidRequest(_))
        ));
    }

    #[test]
    fn status_classification() {
        for (status, retryable) in [
            (408, true),
            (429, true),
            (502, true),
            (400, false),
            (410, false),
            (301, false),
        ] {
            let err = Response::new(status).error_for_status().unwrap_err();
            assert_eq!(err.is_retryable(), retryable, "status {status}");
        }
    }

    #[test]
    fn http_errors_map_to_delivery_errors() {
        assert!(!DeliveryError::from(HttpError::Denied("x".into())).is_retryable());
        assert!(DeliveryError::from(HttpError::Timeout("x".into())).is_retryable());
        assert!(DeliveryError::from(HttpError::Connection("x".into())).is_retryable());
    }

    #[test]
    fn error_message_includes_body_snippet() {
        let err = Response::new(400)
            .with_body(b"bad field".to_vec())
            .error_for_status()
            .unwrap_err();
        assert_eq!(err, DeliveryError::permanent("HTTP 400: bad field"));
    }
}
