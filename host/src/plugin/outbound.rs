//! Outbound HTTP for connectors: `wasi:http/outgoing-handler` behind an
//! allow-list.
//!
//! A request goes out only if its host is listed by the target (exact name or
//! `*.suffix`), and only to an address the bus's egress policy admits
//! ([`crate::net::egress`], the same policy webhooks follow): the host
//! resolves the name itself and refuses loopback, private, link-local (which
//! includes cloud metadata at 169.254.169.254) and every other non-public
//! address unless the operator's `[egress]` section (for every tenant, or
//! for the connector's tenant) allows it. The request is then sent by our
//! own client to the checked address, for `http` and `https` alike, so a
//! second DNS answer cannot redirect it; the URL host still names the server
//! in the `Host` header and, for `https`, in SNI and certificate verification
//! (against Mozilla's roots, as wasmtime's default client). Timeouts the
//! guest asks for are clamped, and each tenant has a cap on concurrent
//! outbound requests. Refusals reach the guest as
//! `error-code::http-request-denied`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig, pki_types::ServerName};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::net::{AllowList, EgressPolicy, ResolveError};

/// Operator settings for outbound HTTP.
#[derive(Clone, Debug)]
pub struct OutboundConfig {
    /// Which non-public destinations each tenant may reach (`[egress]`);
    /// none by default. A target's `allowed_hosts` alone never reaches such
    /// an address.
    pub egress: EgressPolicy,
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
            egress: EgressPolicy::default(),
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
    /// The tenant's egress list.
    egress: Arc<AllowList>,
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
            egress: config.egress.for_tenant(tenant),
            config,
        }
    }

    /// A policy that refuses every request (filters and transformers, which
    /// never get `wasi:http` linked anyway).
    pub fn deny_all() -> Self {
        Self {
            allowed: Arc::from(Vec::new()),
            egress: Arc::default(),
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

/// What becomes of a request once the connection is driven: the response
/// head (its body streams as the guest reads it) and the future that drives
/// the connection to its end.
type Sent = (http::Response<WasiBody>, IoFuture);

/// Drives a connection until it is finished; errors after the response head
/// are reported here.
type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

type SendFuture = Box<dyn Future<Output = Result<Sent, HttpError>> + Send>;

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> SendFuture {
        let allowed = self.allowed.clone();
        let egress = self.egress.clone();
        let config = self.config.clone();
        let permits = self.permits.clone();
        Box::new(async move {
            let Some(permits) = permits else {
                return Err(HttpError::HttpRequestDenied);
            };
            let target = Target::of(request.uri())?;
            if !host_allowed(&allowed, &target.host, target.port) {
                let host = &target.host;
                tracing::info!(%host, "outbound request to a host not allowed by the target refused");
                return Err(HttpError::HttpRequestDenied);
            }
            let addr = resolve(&target.host, target.port, &egress, &config).await?;
            let timeouts = Timeouts::clamped(options, &config);
            let tls = client_tls()?;
            let permit = permits
                .acquire_owned()
                .await
                .map_err(|_| HttpError::ConnectionLimitReached)?;
            let (response, io) = send_pinned(request, addr, timeouts, &tls).await?;
            let io: IoFuture = Box::new(async move {
                // The permit is held until the connection is done.
                let _permit = permit;
                Box::into_pin(io).await
            });
            Ok((response, io))
        })
    }
}

/// The server a request URL names.
struct Target {
    https: bool,
    /// Lower-case, without the brackets of an IPv6 literal.
    host: String,
    /// As written, or the scheme's default.
    port: u16,
}

impl Target {
    fn of(uri: &http::Uri) -> Result<Self, HttpError> {
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let host = uri
            .host()
            .ok_or(HttpError::HttpRequestUriInvalid)?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Self { https, host, port })
    }

    /// The `Host` header: the host, and the port unless it is the scheme's
    /// default.
    fn host_header(&self) -> Result<http::HeaderValue, HttpError> {
        let host = match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("[{}]", self.host),
            _ => self.host.clone(),
        };
        let default_port = if self.https { 443 } else { 80 };
        let value = if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        };
        http::HeaderValue::try_from(value).map_err(|_| HttpError::HttpRequestUriInvalid)
    }

    /// The name the server's certificate must be valid for (also sent as
    /// SNI): the URL host, never the address connected to.
    fn server_name(&self) -> Result<ServerName<'static>, HttpError> {
        match self.host.parse::<IpAddr>() {
            Ok(ip) => Ok(ServerName::from(ip)),
            Err(_) => Ok(ServerName::try_from(self.host.clone())?),
        }
    }
}

/// The timeouts of one request, each the guest's wish clamped to the
/// operator's bound (which is also the default).
#[derive(Clone, Copy, Debug)]
struct Timeouts {
    /// TCP connect and, for `https`, the TLS handshake, together.
    connect: Duration,
    /// From sending the request to the response head.
    first_byte: Duration,
    /// Between two frames of the response body.
    between_bytes: Duration,
}

impl Timeouts {
    fn clamped(asked: Option<RequestOptions>, config: &OutboundConfig) -> Self {
        let asked = asked.unwrap_or_default();
        let clamp = |asked: Option<Duration>, max: Duration| asked.map_or(max, |a| a.min(max));
        Self {
            connect: clamp(asked.connect_timeout, config.connect_timeout),
            first_byte: clamp(asked.first_byte_timeout, config.first_byte_timeout),
            between_bytes: clamp(asked.between_bytes_timeout, config.between_bytes_timeout),
        }
    }
}

/// The TLS client settings of every outbound `https` request, built once:
/// Mozilla's roots (what wasmtime's default client trusts) on ring.
static CLIENT_TLS: LazyLock<Result<Arc<ClientConfig>, rustls::Error>> = LazyLock::new(|| {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
});

fn client_tls() -> Result<Arc<ClientConfig>, HttpError> {
    CLIENT_TLS.as_ref().map(Arc::clone).map_err(|e| {
        tracing::error!(error = %e, "outbound TLS settings cannot be built");
        HttpError::InternalError(Some("TLS settings unavailable".to_owned()))
    })
}

/// Sends `request` to `addr` — the address the policy checked — without
/// resolving the URL host again. The URL host is still the server's name:
/// the `Host` header and, for `https` (with `tls`), SNI and the name the
/// certificate is verified against.
async fn send_pinned(
    mut request: http::Request<WasiBody>,
    addr: SocketAddr,
    timeouts: Timeouts,
    tls: &Arc<ClientConfig>,
) -> Result<Sent, HttpError> {
    let target = Target::of(request.uri())?;
    request
        .headers_mut()
        .insert(http::header::HOST, target.host_header()?);
    // Origin form: the scheme and authority belong on the wire only when
    // talking to a proxy.
    *request.uri_mut() = match request.uri().path_and_query() {
        Some(path) => http::Uri::from(path.clone()),
        None => http::Uri::from_static("/"),
    };

    // One deadline for everything before the request can be written.
    let connected_by = Instant::now() + timeouts.connect;
    let tcp = tokio::time::timeout_at(connected_by, TcpStream::connect(addr))
        .await
        .map_err(|_| HttpError::ConnectionTimeout)?
        .map_err(HttpError::Connect)?;
    if target.https {
        let name = target.server_name()?;
        let stream = tokio::time::timeout_at(
            connected_by,
            TlsConnector::from(tls.clone()).connect(name, tcp),
        )
        .await
        .map_err(|_| HttpError::ConnectionTimeout)?
        .map_err(tls_error)?;
        exchange(stream, request, timeouts, connected_by).await
    } else {
        exchange(tcp, request, timeouts, connected_by).await
    }
}

/// HTTP/1.1 over an open stream: sends the request, waits for the response
/// head while driving the connection, and hands back the rest of the
/// connection to be driven while the guest reads the body.
async fn exchange<S>(
    stream: S,
    request: http::Request<WasiBody>,
    timeouts: Timeouts,
    connected_by: Instant,
) -> Result<Sent, HttpError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = tokio::time::timeout_at(
        connected_by,
        hyper::client::conn::http1::handshake::<_, WasiBody>(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| HttpError::ConnectionTimeout)??;

    let mut conn = Some(Box::pin(conn));
    let mut head = std::pin::pin!(tokio::time::timeout(
        timeouts.first_byte,
        sender.send_request(request),
    ));
    // The response head arrives only while the connection is polled. The
    // connection may end (even fail, e.g. a TLS peer closing without
    // close_notify) right after delivering it: a delivered head wins.
    let mut failed = None;
    let head = loop {
        let Some(driving) = conn.as_mut() else {
            break head.await;
        };
        tokio::select! {
            biased;
            head = &mut head => break head,
            finished = driving => {
                conn = None;
                failed = finished.err();
            }
        }
    };
    let response = match head {
        Ok(Ok(response)) => response,
        // The connection's own failure says more than "the connection is
        // gone".
        Ok(Err(e)) => return Err(hyper_error(failed.unwrap_or(e))),
        Err(_) => return Err(HttpError::ConnectionReadTimeout),
    };

    let between_bytes = timeouts.between_bytes;
    let response = response.map(|body| {
        TimedBody {
            body,
            between_bytes,
            deadline: Box::pin(tokio::time::sleep(between_bytes)),
        }
        .boxed_unsync()
    });
    let io: IoFuture = Box::new(async move {
        match conn {
            Some(conn) => conn.await.map_err(hyper_error),
            None => Ok(()),
        }
    });
    Ok((response, io))
}

/// A response body that fails with `connection-read-timeout` when no frame
/// arrives for `between_bytes`.
struct TimedBody {
    body: Incoming,
    between_bytes: Duration,
    /// When the next frame is due; pushed back by every frame.
    deadline: Pin<Box<Sleep>>,
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = Instant::now() + this.between_bytes;
                this.deadline.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(hyper_error(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn hyper_error(e: hyper::Error) -> HttpError {
    if e.is_timeout() {
        HttpError::HttpResponseTimeout
    } else {
        HttpError::Hyper(e)
    }
}

/// A failed TLS handshake, told apart where the guest's error codes can:
/// a certificate that does not verify, an alert from the server, or any
/// other TLS failure.
fn tls_error(e: std::io::Error) -> HttpError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(_)) => HttpError::TlsCertificateError,
        Some(rustls::Error::AlertReceived(alert)) => HttpError::TlsAlertReceived {
            alert_id: Some(u8::from(*alert)),
            alert_message: alert.as_str().map(str::to_owned),
        },
        _ => HttpError::Tls(e),
    }
}

/// Resolves `host` and returns the first address the egress list admits
/// (see [`AllowList::resolve`]): the one the request is then sent to.
async fn resolve(
    host: &str,
    port: u16,
    egress: &AllowList,
    config: &OutboundConfig,
) -> Result<SocketAddr, HttpError> {
    let addrs = tokio::time::timeout(config.connect_timeout, egress.resolve(host, port))
        .await
        .map_err(|_| HttpError::DnsTimeout)?
        .map_err(|e| match e {
            ResolveError::Forbidden(refused) => {
                tracing::info!(%host, reason = %refused, "outbound request refused by egress");
                HttpError::HttpRequestDenied
            }
            ResolveError::Lookup { source, .. } => HttpError::DnsError {
                rcode: Some(source.to_string()),
                info_code: None,
            },
        })?;
    addrs.first().copied().ok_or(HttpError::DestinationNotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::rustls::ServerConfig;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    /// Longest any test waits for an outcome; far above the timeouts under
    /// test, so hitting it means the timeout under test did not fire.
    const PATIENCE: Duration = Duration::from_secs(10);

    const SHORT: Duration = Duration::from_millis(200);

    fn timeouts(each: Duration) -> Timeouts {
        Timeouts {
            connect: each,
            first_byte: each,
            between_bytes: each,
        }
    }

    fn get(url: &str) -> http::Request<WasiBody> {
        let body = http_body_util::Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        http::Request::get(url).body(body).unwrap()
    }

    /// Sends `request` to `addr`, drives the connection, and reads the whole
    /// response body — all under [`PATIENCE`].
    async fn fetch(
        request: http::Request<WasiBody>,
        addr: SocketAddr,
        timeouts: Timeouts,
        tls: &Arc<ClientConfig>,
    ) -> Result<(http::StatusCode, Bytes), HttpError> {
        tokio::time::timeout(PATIENCE, async {
            let (response, io) = send_pinned(request, addr, timeouts, tls).await?;
            tokio::spawn(Box::into_pin(io));
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok((status, body))
        })
        .await
        .expect("the request neither finished nor timed out")
    }

    /// Reads one request head from `stream`, answers `200 OK` with body
    /// `ok`, and returns the head as text. The stream is then dropped
    /// without a TLS close_notify, as many servers do.
    async fn answer_once<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0; 1];
            stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        stream.flush().await.unwrap();
        String::from_utf8(head).unwrap()
    }

    /// A TLS server on `127.0.0.1:0` presenting a self-signed certificate
    /// for `name`; returns its address, the certificate, and the heads of
    /// the requests it answers.
    async fn tls_server(
        name: &str,
    ) -> (
        SocketAddr,
        CertificateDer<'static>,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        let made = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let cert = made.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (heads, received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                // A client that rejects the certificate fails the handshake.
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = heads.send(answer_once(tls).await);
                }
            }
        });
        (addr, cert, received)
    }

    /// Client TLS settings trusting only `cert`.
    fn trusting(cert: CertificateDer<'static>) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// A server that accepts connections, then holds them without a word.
    async fn silent_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        addr
    }

    #[tokio::test]
    async fn plain_http_goes_to_the_checked_address_and_names_the_url_host() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            answer_once(stream).await
        });
        // `pinned.test` resolves nowhere: only the given address is used.
        let url = format!("http://pinned.test:{}/path?q=1", addr.port());
        let tls = client_tls().unwrap();
        let (status, body) = fetch(get(&url), addr, timeouts(PATIENCE), &tls)
            .await
            .unwrap();
        assert_eq!((status, &body[..]), (http::StatusCode::OK, &b"ok"[..]));
        let head = server.await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("get /path?q=1 http/1.1\r\n"), "{head}");
        let host = format!("\r\nhost: pinned.test:{}\r\n", addr.port());
        assert_eq!(head.matches("\r\nhost:").count(), 1, "{head}");
        assert!(head.contains(&host), "{head}");
    }

    #[tokio::test]
    async fn https_goes_to_the_checked_address_and_verifies_the_url_host() {
        let (addr, cert, mut heads) = tls_server("pinned.test").await;
        let url = format!("https://pinned.test:{}/x", addr.port());
        let (status, body) = fetch(get(&url), addr, timeouts(PATIENCE), &trusting(cert))
            .await
            .unwrap();
        assert_eq!((status, &body[..]), (http::StatusCode::OK, &b"ok"[..]));
        let head = heads.recv().await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("get /x http/1.1\r\n"), "{head}");
        let host = format!("\r\nhost: pinned.test:{}\r\n", addr.port());
        assert!(head.contains(&host), "{head}");
    }

    #[tokio::test]
    async fn https_refuses_a_certificate_for_another_name_or_from_an_unknown_issuer() {
        // Trusted, but issued for another name than the URL's host.
        let (addr, cert, _heads) = tls_server("other.test").await;
        let url = format!("https://pinned.test:{}/x", addr.port());
        let sent = fetch(get(&url), addr, timeouts(PATIENCE), &trusting(cert)).await;
        assert!(
            matches!(sent, Err(HttpError::TlsCertificateError)),
            "{sent:?}"
        );
        // The right name, but the shared settings do not trust a self-signed
        // certificate.
        let (addr, _cert, _heads) = tls_server("pinned.test").await;
        let url = format!("https://pinned.test:{}/x", addr.port());
        let sent = fetch(get(&url), addr, timeouts(PATIENCE), &client_tls().unwrap()).await;
        assert!(
            matches!(sent, Err(HttpError::TlsCertificateError)),
            "{sent:?}"
        );
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out_on_the_first_byte() {
        let addr = silent_server().await;
        let url = format!("http://pinned.test:{}/", addr.port());
        let started = Instant::now();
        let sent = fetch(get(&url), addr, timeouts(SHORT), &client_tls().unwrap()).await;
        assert!(
            matches!(sent, Err(HttpError::ConnectionReadTimeout)),
            "{sent:?}"
        );
        assert!(started.elapsed() >= SHORT);
    }

    #[tokio::test]
    async fn a_server_that_never_starts_tls_times_out_on_connect() {
        let addr = silent_server().await;
        let url = format!("https://pinned.test:{}/", addr.port());
        let sent = fetch(get(&url), addr, timeouts(SHORT), &client_tls().unwrap()).await;
        assert!(
            matches!(sent, Err(HttpError::ConnectionTimeout)),
            "{sent:?}"
        );
    }

    #[tokio::test]
    async fn a_body_that_stalls_times_out_between_bytes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0; 1024];
            let _ = stream.read(&mut buf).await.unwrap();
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
                .await
                .unwrap();
            // Seven bytes short, and silent from now on.
            std::future::pending::<()>().await;
        });
        let url = format!("http://pinned.test:{}/", addr.port());
        let sent = fetch(get(&url), addr, timeouts(SHORT), &client_tls().unwrap()).await;
        assert!(
            matches!(sent, Err(HttpError::ConnectionReadTimeout)),
            "{sent:?}"
        );
    }

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

    #[tokio::test]
    async fn resolution_refuses_private_unless_opted_in() {
        let config = OutboundConfig::default();
        let egress = AllowList::default();
        let resolve = |host, port, egress| resolve(host, port, egress, &config);
        assert!(matches!(
            resolve("127.0.0.1", 80, &egress).await,
            Err(HttpError::HttpRequestDenied)
        ));
        assert!(matches!(
            resolve("localhost", 80, &egress).await,
            Err(HttpError::HttpRequestDenied)
        ));
        let egress = AllowList::parse(&["127.0.0.1"]).unwrap();
        let addr = resolve("127.0.0.1", 8080, &egress).await.unwrap();
        assert_eq!(addr, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
        // Opting in an address does not let a name resolve to it.
        assert!(matches!(
            resolve("localhost", 80, &egress).await,
            Err(HttpError::HttpRequestDenied)
        ));
        assert!(matches!(
            resolve("169.254.169.254", 80, &egress).await,
            Err(HttpError::HttpRequestDenied)
        ));
    }

    #[test]
    fn each_invocation_gets_its_tenants_egress_list() {
        let config: crate::net::EgressConfig =
            toml::from_str("[tenants.acme]\nallow = [\"127.0.0.1\"]\n").unwrap();
        let config = Arc::new(OutboundConfig {
            egress: EgressPolicy::from_config(&config, &[]).unwrap(),
            ..OutboundConfig::default()
        });
        let permits = TenantPermits::default();
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let acme = OutboundHttp::new("acme", &[], config.clone(), &permits);
        assert!(acme.egress.check_address(loopback).is_ok());
        let other = OutboundHttp::new("globex", &[], config, &permits);
        assert!(other.egress.check_address(loopback).is_err());
        assert!(
            OutboundHttp::deny_all()
                .egress
                .check_address(loopback)
                .is_err()
        );
    }
}
