//! The `http` target against a real receiver: an axum server on 127.0.0.1:0
//! that records every request and plays the target's part (webhook, OAuth2
//! token endpoint, failing, slow or busy receiver).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use busbar::deliver::http::{
    AuthSpec, BatchSpec, DeliveryMode, HttpClient, HttpTarget, HttpTargetSpec, SigningSpec,
};
use busbar::deliver::retry::RetryPolicy;
use busbar::deliver::{Outcome, Payload, SpecError};
use busbar::event::{Event, StoredEvent};
use busbar::net::EgressPolicy;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::time::Instant;

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
struct Recorded {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Recorded>>,
    token_requests: AtomicUsize,
    /// `expires_in` the token endpoint answers with.
    token_lifetime_s: AtomicU64,
    /// The token `/protected` accepts.
    current_token: Mutex<String>,
    /// Makes `/protected` refuse the next request with 401.
    revoke: AtomicBool,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Receiver {
    async fn start() -> Self {
        let shared = Arc::new(Shared {
            token_lifetime_s: AtomicU64::new(3600),
            ..Shared::default()
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, shared }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self, path: &str) -> Vec<Recorded> {
        let requests = self.shared.requests.lock().unwrap();
        requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    fn last(&self, path: &str) -> Recorded {
        self.requests(path).pop().expect("no request recorded")
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    shared.requests.lock().unwrap().push(Recorded {
        method,
        path: path.clone(),
        headers: headers.clone(),
        body: body.clone(),
        at: Instant::now(),
    });
    match path.as_str() {
        "/hook" => StatusCode::OK.into_response(),
        "/fail" => (StatusCode::INTERNAL_SERVER_ERROR, "database on fire").into_response(),
        "/big-fail" => (StatusCode::BAD_GATEWAY, "x".repeat(1 << 20)).into_response(),
        "/busy" => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "7")],
            "slow down",
        )
            .into_response(),
        "/missing" => StatusCode::NOT_FOUND.into_response(),
        "/moved" => (StatusCode::FOUND, [("location", "/hook")]).into_response(),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK.into_response()
        }
        "/held" => {
            // A receiver that takes 50 ms per request and counts how many
            // requests it holds at once.
            let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            StatusCode::OK.into_response()
        }
        "/token" => token_endpoint(&shared, &headers, &body),
        "/protected" => {
            let expected = format!("Bearer {}", shared.current_token.lock().unwrap());
            let presented = headers.get("authorization").and_then(|v| v.to_str().ok());
            if shared.revoke.swap(false, Ordering::SeqCst) || presented != Some(&expected) {
                StatusCode::UNAUTHORIZED.into_response()
            } else {
                StatusCode::NO_CONTENT.into_response()
            }
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// An OAuth2 token endpoint (client credentials, client authenticated with
/// HTTP basic) that hands out `tok-1`, `tok-2`, ...
fn token_endpoint(shared: &Shared, headers: &HeaderMap, body: &Bytes) -> Response {
    let basic = format!("Basic {}", BASE64.encode("busbar-client:s3cret"));
    let form_ok = body.as_ref() == b"grant_type=client_credentials&scope=events%3Awrite";
    let content_type_ok = headers.get("content-type").map(|v| v.as_bytes())
        == Some(b"application/x-www-form-urlencoded");
    if headers.get("authorization").map(|v| v.as_bytes()) != Some(basic.as_bytes())
        || !form_ok
        || !content_type_ok
    {
        return (StatusCode::UNAUTHORIZED, r#"{"error":"invalid_client"}"#).into_response();
    }
    let n = shared.token_requests.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!("tok-{n}");
    *shared.current_token.lock().unwrap() = token.clone();
    let answer = json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": shared.token_lifetime_s.load(Ordering::SeqCst),
    });
    ([("content-type", "application/json")], answer.to_string()).into_response()
}

/// An event as deliveries get it: with its JSON as the store holds it.
fn event(value: Value) -> StoredEvent {
    let Value::Object(map) = value else {
        panic!("events are objects")
    };
    StoredEvent::of(Event::from_validated(map))
}

fn order_event() -> StoredEvent {
    event(json!({
        "specversion": "1.0",
        "id": "evt-42",
        "source": "shop.orders",
        "type": "order.created",
        "time": "2026-11-22T07:00:00Z",
        "subject": "order 42 – rush",
        "datacontenttype": "application/json",
        "resources": ["arn:shop:order/42", "arn:shop:customer/7"],
        "data": {"total": 120, "items": ["book"]},
    }))
}

/// A client that may reach the receivers, which listen on loopback.
fn loopback_client() -> HttpClient {
    HttpClient::new(&EgressPolicy::allowing(&["127.0.0.1", "::1", "localhost"]).unwrap()).unwrap()
}

fn target(spec: HttpTargetSpec) -> HttpTarget {
    HttpTarget::new(spec, loopback_client()).unwrap()
}

async fn deliver(target: &HttpTarget, event: &StoredEvent) -> Outcome {
    target.deliver(Payload { event, body: None }).await
}

fn header<'a>(request: &'a Recorded, name: &str) -> &'a str {
    request
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn binary_mode_sends_attributes_as_ce_headers_and_data_as_body() {
    let receiver = Receiver::start().await;
    let mut spec = HttpTargetSpec::new(receiver.url("/hook"));
    spec.headers.insert("X-Tenant".into(), "acme".into());
    let target = target(spec);
    let event = order_event();

    assert_eq!(
        deliver(&target, &event).await,
        Outcome::Delivered { status: Some(200) }
    );

    let request = receiver.last("/hook");
    assert_eq!(request.method, Method::POST);
    assert_eq!(header(&request, "ce-specversion"), "1.0");
    assert_eq!(header(&request, "ce-id"), "evt-42");
    assert_eq!(header(&request, "ce-source"), "shop.orders");
    assert_eq!(header(&request, "ce-type"), "order.created");
    assert_eq!(header(&request, "ce-time"), "2026-11-22T07:00:00Z");
    assert_eq!(
        header(&request, "ce-subject"),
        "order%2042%20%E2%80%93%20rush"
    );
    assert_eq!(
        header(&request, "ce-resources"),
        "arn:shop:order/42,arn:shop:customer/7"
    );
    assert_eq!(header(&request, "content-type"), "application/json");
    assert_eq!(header(&request, "x-tenant"), "acme");
    assert!(request.headers.get("ce-datacontenttype").is_none());
    assert!(request.headers.get("ce-data").is_none());
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body, json!({"total": 120, "items": ["book"]}));
}

#[tokio::test]
async fn structured_mode_sends_the_whole_event() {
    let receiver = Receiver::start().await;
    let mut spec = HttpTargetSpec::new(receiver.url("/hook"));
    spec.mode = DeliveryMode::Structured;
    spec.method = Some("put".into());
    let target = target(spec);
    let event = order_event();

    assert!(matches!(
        deliver(&target, &event).await,
        Outcome::Delivered { .. }
    ));

    let request = receiver.last("/hook");
    assert_eq!(request.method, Method::PUT);
    assert_eq!(
        header(&request, "content-type"),
        "application/cloudevents+json; charset=utf-8"
    );
    assert!(
        !request
            .headers
            .keys()
            .any(|k| k.as_str().starts_with("ce-"))
    );
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body, Value::Object(event.event().as_map().clone()));
}

#[tokio::test]
async fn a_transform_output_replaces_the_payload_but_ce_headers_stay() {
    let receiver = Receiver::start().await;
    let target = target(HttpTargetSpec::new(receiver.url("/hook")));
    let event = order_event();

    let outcome = target
        .deliver(Payload {
            event: &event,
            body: Some("Order 42 totals 120"),
        })
        .await;
    assert_eq!(outcome, Outcome::Delivered { status: Some(200) });

    let request = receiver.last("/hook");
    assert_eq!(request.body.as_ref(), b"Order 42 totals 120");
    assert_eq!(
        header(&request, "content-type"),
        "text/plain; charset=utf-8"
    );
    assert_eq!(header(&request, "ce-id"), "evt-42");
}

#[tokio::test]
async fn api_key_and_basic_auth_headers() {
    let receiver = Receiver::start().await;
    let event = order_event();

    let mut spec = HttpTargetSpec::new(receiver.url("/hook"));
    spec.auth = Some(AuthSpec::ApiKey {
        header: "X-Api-Key".into(),
        value: "key-123".into(),
    });
    deliver(&target(spec), &event).await;
    assert_eq!(header(&receiver.last("/hook"), "x-api-key"), "key-123");

    let mut spec = HttpTargetSpec::new(receiver.url("/hook"));
    spec.auth = Some(AuthSpec::Basic {
        username: "alice".into(),
        password: "pa:ss wörd".into(),
    });
    deliver(&target(spec), &event).await;
    let expected = format!("Basic {}", BASE64.encode("alice:pa:ss wörd"));
    assert_eq!(header(&receiver.last("/hook"), "authorization"), expected);
}

fn oauth_spec(receiver: &Receiver, path: &str) -> HttpTargetSpec {
    let mut spec = HttpTargetSpec::new(receiver.url(path));
    spec.auth = Some(AuthSpec::Oauth2 {
        token_url: receiver.url("/token"),
        client_id: "busbar-client".into(),
        client_secret: "s3cret".into(),
        scope: Some("events:write".into()),
    });
    spec
}

#[tokio::test]
async fn oauth2_token_is_reused_then_refreshed_after_expiry() {
    let receiver = Receiver::start().await;
    receiver.shared.token_lifetime_s.store(1, Ordering::SeqCst);
    let target = target(oauth_spec(&receiver, "/protected"));
    let event = order_event();

    // Two deliveries within the token's lifetime share one token.
    for _ in 0..2 {
        assert_eq!(
            deliver(&target, &event).await,
            Outcome::Delivered { status: Some(204) }
        );
    }
    assert_eq!(receiver.shared.token_requests.load(Ordering::SeqCst), 1);
    assert_eq!(
        header(&receiver.last("/protected"), "authorization"),
        "Bearer tok-1"
    );

    // Once it nears expiry (1 s), the next delivery fetches a new one.
    let deadline = Instant::now() + Duration::from_secs(5);
    while receiver.shared.token_requests.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "token never refreshed");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            deliver(&target, &event).await,
            Outcome::Delivered { status: Some(204) }
        );
    }
    assert_eq!(
        header(&receiver.last("/protected"), "authorization"),
        "Bearer tok-2"
    );
}

#[tokio::test]
async fn oauth2_401_drops_the_token_and_retries() {
    let receiver = Receiver::start().await;
    let target = target(oauth_spec(&receiver, "/protected"));
    let event = order_event();

    assert!(matches!(
        deliver(&target, &event).await,
        Outcome::Delivered { .. }
    ));
    receiver.shared.revoke.store(true, Ordering::SeqCst);
    let Outcome::Retry(failure) = deliver(&target, &event).await else {
        panic!("a refused token must be retried")
    };
    assert_eq!(failure.status, Some(401));
    // The next attempt gets a fresh token and succeeds.
    assert!(matches!(
        deliver(&target, &event).await,
        Outcome::Delivered { .. }
    ));
    assert_eq!(receiver.shared.token_requests.load(Ordering::SeqCst), 2);
    assert_eq!(
        header(&receiver.last("/protected"), "authorization"),
        "Bearer tok-2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_token_endpoint_failure_is_a_retryable_auth_error() {
    let receiver = Receiver::start().await;
    let mut spec = oauth_spec(&receiver, "/protected");
    if let Some(AuthSpec::Oauth2 { client_secret, .. }) = &mut spec.auth {
        *client_secret = "wrong".into();
    }
    let target = Arc::new(target(spec));
    let event = Arc::new(order_event());

    // Deliveries queued behind a failed token request share its failure
    // instead of each asking the endpoint in turn.
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (target, event) = (target.clone(), event.clone());
            tokio::spawn(async move { deliver(&target, &event).await })
        })
        .collect();
    for task in tasks {
        let Outcome::Retry(failure) = task.await.unwrap() else {
            panic!("token failures must be retried")
        };
        assert_eq!(failure.code, "auth_error");
        assert_eq!(failure.status, Some(401));
        assert!(failure.message.contains("invalid_client"), "{failure:?}");
    }
    assert_eq!(receiver.requests("/token").len(), 1);
    assert!(receiver.requests("/protected").is_empty());

    // A little later the endpoint is asked again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while receiver.requests("/token").len() < 2 {
        assert!(Instant::now() < deadline, "token endpoint never retried");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(matches!(deliver(&target, &event).await, Outcome::Retry(_)));
    }
}

#[tokio::test]
async fn signed_requests_verify_and_keep_the_event_id_across_retries() {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let receiver = Receiver::start().await;
    let mut spec = HttpTargetSpec::new(receiver.url("/fail"));
    spec.signing = Some(SigningSpec {
        secret: SECRET.into(),
    });
    let failing = target(spec.clone());
    spec.url = receiver.url("/hook");
    let working = target(spec);
    let event = order_event();

    assert!(matches!(deliver(&failing, &event).await, Outcome::Retry(_)));
    assert!(matches!(
        deliver(&working, &event).await,
        Outcome::Delivered { .. }
    ));

    let key = BASE64.decode(SECRET.trim_start_matches("whsec_")).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for request in [receiver.last("/fail"), receiver.last("/hook")] {
        // The receiver deduplicates on these: the same on every attempt.
        assert_eq!(header(&request, "webhook-id"), "evt-42");
        assert_eq!(header(&request, "ce-id"), "evt-42");
        let timestamp = header(&request, "webhook-timestamp");
        assert!(now.abs_diff(timestamp.parse().unwrap()) <= 5);
        let mut signed = format!("evt-42.{timestamp}.").into_bytes();
        signed.extend_from_slice(&request.body);
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(&signed);
        let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
        assert_eq!(header(&request, "webhook-signature"), expected);
    }
}

#[tokio::test]
async fn answers_are_classified() {
    let receiver = Receiver::start().await;
    let event = order_event();
    let outcome = |path: &str| {
        let target = target(HttpTargetSpec::new(receiver.url(path)));
        let event = &event;
        async move { deliver(&target, event).await }
    };

    let Outcome::Retry(f) = outcome("/fail").await else {
        panic!("500 must retry")
    };
    assert_eq!((f.code.as_str(), f.status), ("http_status", Some(500)));
    assert_eq!(
        f.message,
        "HTTP 500 Internal Server Error: database on fire"
    );

    let Outcome::Retry(f) = outcome("/busy").await else {
        panic!("429 must retry")
    };
    assert_eq!((f.code.as_str(), f.status), ("rate_limited", Some(429)));
    assert_eq!(f.retry_after, Some(Duration::from_secs(7)));

    let Outcome::Permanent(f) = outcome("/missing").await else {
        panic!("404 is permanent")
    };
    assert_eq!(f.status, Some(404));

    // Redirects are not followed.
    let Outcome::Permanent(f) = outcome("/moved").await else {
        panic!("302 is permanent")
    };
    assert_eq!(f.status, Some(302));
    assert!(receiver.requests("/hook").is_empty());

    // A huge error body is read only up to the cap.
    let Outcome::Retry(f) = outcome("/big-fail").await else {
        panic!("502 must retry")
    };
    assert!(f.message.len() < 4200, "{} bytes", f.message.len());
}

#[tokio::test]
async fn connection_refused_is_retried() {
    // A port that was free a moment ago and has no listener now.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let target = target(HttpTargetSpec::new(format!("http://{addr}/hook")));

    let Outcome::Retry(f) = deliver(&target, &order_event()).await else {
        panic!("connection errors must retry")
    };
    assert_eq!(f.code, "connect_error");
    assert_eq!(f.status, None);
}

#[tokio::test]
async fn a_failed_tls_handshake_is_a_retryable_connect_error() {
    // The receiver speaks plain HTTP: rustls sends its ClientHello and
    // gets garbage back.
    let receiver = Receiver::start().await;
    let url = format!("https://{}/hook", receiver.addr);
    let target = target(HttpTargetSpec::new(url));

    let Outcome::Retry(f) = deliver(&target, &order_event()).await else {
        panic!("TLS failures must retry")
    };
    assert_eq!(f.code, "connect_error", "{f:?}");
    assert!(receiver.requests("/hook").is_empty());
}

#[tokio::test]
async fn a_slow_receiver_times_out_and_is_retried() {
    let receiver = Receiver::start().await;
    let mut spec = HttpTargetSpec::new(receiver.url("/slow"));
    spec.timeout_ms = Some(200);
    let target = target(spec);

    let started = Instant::now();
    let Outcome::Retry(f) = deliver(&target, &order_event()).await else {
        panic!("timeouts must retry")
    };
    let elapsed = started.elapsed();
    assert_eq!(f.code, "timeout");
    assert!(
        (Duration::from_millis(200)..Duration::from_secs(3)).contains(&elapsed),
        "{elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_spaces_requests_instead_of_failing_them() {
    let receiver = Receiver::start().await;
    let mut spec = HttpTargetSpec::new(receiver.url("/hook"));
    spec.rate_limit_per_s = Some(20.0);
    let target = Arc::new(target(spec));
    let event = Arc::new(order_event());

    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (target, event) = (target.clone(), event.clone());
            tokio::spawn(async move { deliver(&target, &event).await })
        })
        .collect();
    for task in tasks {
        assert!(matches!(task.await.unwrap(), Outcome::Delivered { .. }));
    }

    // 8 requests at 20/s: the last starts at least 7 × 50 ms after the first.
    let arrivals: Vec<Instant> = receiver.requests("/hook").iter().map(|r| r.at).collect();
    assert_eq!(arrivals.len(), 8);
    let span = *arrivals.iter().max().unwrap() - *arrivals.iter().min().unwrap();
    assert!(span >= Duration::from_millis(300), "{span:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_cap_bounds_requests_in_flight() {
    let receiver = Receiver::start().await;
    let mut spec = HttpTargetSpec::new(receiver.url("/held"));
    spec.max_concurrency = Some(2);
    let target = Arc::new(target(spec));
    let event = Arc::new(order_event());

    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (target, event) = (target.clone(), event.clone());
            tokio::spawn(async move { deliver(&target, &event).await })
        })
        .collect();
    for task in tasks {
        assert!(matches!(task.await.unwrap(), Outcome::Delivered { .. }));
    }

    assert_eq!(receiver.requests("/held").len(), 10);
    // Never more than the cap, and the cap was actually reached.
    assert_eq!(receiver.shared.max_in_flight.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_guarded_client_refuses_private_destinations() {
    let receiver = Receiver::start().await;
    let guarded = HttpClient::new(&EgressPolicy::default()).unwrap();
    let port = receiver.addr.port();
    let event = order_event();

    // By IP literal (refused before connecting) and by a name that resolves
    // to loopback (refused by the resolver).
    for url in [
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://localhost:{port}/hook"),
    ] {
        let target = HttpTarget::new(HttpTargetSpec::new(&url), guarded.clone()).unwrap();
        let Outcome::Permanent(f) = deliver(&target, &event).await else {
            panic!("{url} must be refused")
        };
        assert_eq!(f.code, "forbidden_destination", "{url}: {f:?}");
    }
    // The OAuth2 token endpoint is guarded too.
    let mut spec = oauth_spec(&receiver, "/protected");
    spec.url = "https://hooks.example/in".into();
    let target = HttpTarget::new(spec, guarded).unwrap();
    let Outcome::Permanent(f) = deliver(&target, &event).await else {
        panic!("a private token endpoint must be refused")
    };
    assert_eq!(f.code, "forbidden_destination");
    assert!(receiver.shared.requests.lock().unwrap().is_empty());

    // A client allowing loopback delivers to the same receiver.
    let open = target_for(&format!("http://localhost:{port}/hook"));
    assert_eq!(
        deliver(&open, &event).await,
        Outcome::Delivered { status: Some(200) }
    );
}

/// An address of every special block, and IPv6 forms carrying a special
/// IPv4 address, as URL hosts.
pub fn special_hosts() -> Vec<String> {
    let mut hosts: Vec<String> = busbar::net::special::blocks()
        .map(|(block, _)| match block.network() {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        })
        .collect();
    hosts.extend(
        [
            "[::ffff:169.254.169.254]",
            "[::127.0.0.1]",
            "[64:ff9b::a9fe:a9fe]",
            "[2002:a9fe:a9fe::1]",
            "[2002:7f00:1::]",
            "[4000::1]",
            "[5f00::1]",
        ]
        .map(str::to_owned),
    );
    hosts
}

#[tokio::test]
async fn every_special_range_is_refused_before_connecting() {
    let guarded = HttpClient::new(&EgressPolicy::default()).unwrap();
    let event = order_event();
    let hosts = special_hosts();
    assert!(hosts.len() > 30, "{hosts:?}");
    for host in hosts {
        // The discard port: nothing would answer if a request were sent.
        let url = format!("http://{host}:9/hook");
        let target = HttpTarget::new(HttpTargetSpec::new(&url), guarded.clone()).unwrap();
        let Outcome::Permanent(f) = deliver(&target, &event).await else {
            panic!("{url} must be refused")
        };
        assert_eq!(f.code, "forbidden_destination", "{url}: {f:?}");
    }
}

fn target_for(url: &str) -> HttpTarget {
    target(HttpTargetSpec::new(url))
}

/// Every `tests/data/deliver/<kind>/*.json` is an invalid spec; the `.err`
/// file next to it holds the expected problems, one `field: reason` per line
/// (or `json: ...` when the document does not even deserialise). Run with
/// `BUSBAR_BLESS=1` to rewrite the `.err` files after a deliberate change.
#[test]
fn invalid_specs_match_their_golden_errors() {
    fn problems(error: SpecError) -> String {
        error
            .problems()
            .map(|p| format!("{}: {}\n", p.field, p.reason))
            .collect()
    }
    fn http(text: &str) -> String {
        match serde_json::from_str::<HttpTargetSpec>(text) {
            Err(e) => format!("json: {e}\n"),
            Ok(spec) => spec.validate().map_or_else(problems, |()| "valid\n".into()),
        }
    }
    fn retry(text: &str) -> String {
        match serde_json::from_str::<RetryPolicy>(text) {
            Err(e) => format!("json: {e}\n"),
            Ok(policy) => policy
                .validate()
                .map_or_else(problems, |()| "valid\n".into()),
        }
    }

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/deliver");
    let bless = std::env::var_os("BUSBAR_BLESS").is_some();
    let mut checked = 0;
    let mut mismatches = Vec::new();
    for (dir, check) in [
        ("http_invalid", http as fn(&str) -> String),
        ("retry_invalid", retry),
    ] {
        let mut inputs: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "json"))
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "no cases in {dir}");
        for input in inputs {
            let actual = check(&std::fs::read_to_string(&input).unwrap());
            assert_ne!(actual, "valid\n", "{} is valid", input.display());
            let golden = input.with_extension("err");
            if bless {
                std::fs::write(&golden, &actual).unwrap();
            } else if std::fs::read_to_string(&golden).ok().as_deref() != Some(&actual) {
                mismatches.push(format!("{}:\n{actual}", golden.display()));
            }
            checked += 1;
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    assert!(checked >= 20);
}

#[tokio::test]
async fn a_batch_goes_as_signed_arrays_split_by_max_bytes_with_outcomes_per_event() {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let receiver = Receiver::start().await;
    let mut spec = HttpTargetSpec::new(receiver.url("/hook"));
    spec.signing = Some(SigningSpec {
        secret: SECRET.into(),
    });
    spec.batch = Some(BatchSpec {
        max_events: Some(10),
        max_bytes: Some(1024),
        max_wait_ms: None,
    });
    let batched = target(spec.clone());
    let events: Vec<StoredEvent> = (0..5)
        .map(|i| {
            event(
                json!({"specversion": "1.0", "id": format!("b{i}"), "source": "shop",
                         "type": "t", "data": {"pad": "x".repeat(300)}}),
            )
        })
        .collect();
    let mut payloads: Vec<Payload<'_>> = events
        .iter()
        .map(|event| Payload { event, body: None })
        .collect();
    // One too large alone for max_bytes, between the others.
    let huge = event(
        json!({"specversion": "1.0", "id": "huge", "source": "shop", "type": "t",
                            "data": "y".repeat(2000)}),
    );
    payloads.insert(
        2,
        Payload {
            event: &huge,
            body: None,
        },
    );
    let outcomes = batched.deliver_batch(&payloads).await;
    let kinds: Vec<&str> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Retry(_) => "retry",
            Outcome::Permanent(_) => "permanent",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "delivered",
            "delivered",
            "permanent",
            "delivered",
            "delivered",
            "delivered"
        ]
    );
    assert!(outcomes[2].failure().unwrap().message.contains("max_bytes"));
    let requests = receiver.requests("/hook");
    // About 360 bytes an event: two to a request.
    assert_eq!(requests.len(), 3);
    let key = BASE64.decode(SECRET.trim_start_matches("whsec_")).unwrap();
    let mut ids = Vec::new();
    for request in &requests {
        assert!(request.body.len() <= 1024, "{}", request.body.len());
        assert!(header(request, "content-type").starts_with("application/cloudevents-batch+json"));
        assert!(
            request.headers.get("ce-id").is_none(),
            "no binary-mode headers"
        );
        let array: Vec<Value> = serde_json::from_slice(&request.body).unwrap();
        ids.extend(array.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        // Signed over the whole array, under the batch's id.
        let id = header(request, "webhook-id");
        assert!(id.starts_with("batch_") || array.len() == 1, "{id}");
        let timestamp = header(request, "webhook-timestamp");
        let mut signed = format!("{id}.{timestamp}.").into_bytes();
        signed.extend_from_slice(&request.body);
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(&signed);
        let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
        assert_eq!(header(request, "webhook-signature"), expected);
    }
    assert_eq!(ids, ["b0", "b1", "b2", "b3", "b4"]);

    // A failing answer is every event's outcome, Retry-After included.
    spec.url = receiver.url("/busy");
    let busy = target(spec);
    let outcomes = busy.deliver_batch(&payloads[..2]).await;
    assert_eq!(outcomes.len(), 2);
    for outcome in outcomes {
        let Outcome::Retry(failure) = outcome else {
            panic!("429 must retry")
        };
        assert_eq!(failure.status, Some(429));
        assert_eq!(failure.retry_after, Some(Duration::from_secs(7)));
    }
}

/// A receiver that holds every request until `burst` of them are in flight
/// at once (so each came on its own connection), recording the client
/// address of each: a new address is a new connection.
async fn burst_receiver(burst: usize) -> (SocketAddr, Arc<Mutex<Vec<SocketAddr>>>) {
    use axum::extract::ConnectInfo;
    let peers = Arc::new(Mutex::new(Vec::new()));
    let barrier = Arc::new(tokio::sync::Barrier::new(burst));
    let seen = peers.clone();
    let app = Router::new().fallback(move |ConnectInfo(peer): ConnectInfo<SocketAddr>| {
        let (seen, barrier) = (seen.clone(), barrier.clone());
        async move {
            seen.lock().unwrap().push(peer);
            barrier.wait().await;
            StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    (addr, peers)
}

/// A target at full speed has as many calls in flight as its cap allows,
/// each on its own connection. The pool keeps that many idle, so the next
/// burst reuses them instead of opening new ones (a pool keeping fewer
/// closed the rest after every burst: thousands of connections a second).
#[tokio::test]
async fn a_second_burst_of_deliveries_reuses_the_connections_of_the_first() {
    const BURST: usize = 80;
    let policy = EgressPolicy::allowing(&["127.0.0.1"]).unwrap();
    let event = order_event();
    // (idle connections kept per host, fewest and most new connections
    // the second burst may open)
    for (idle, fewest, most) in [(BURST, 0, BURST / 10), (10, BURST - 10, BURST)] {
        let (addr, peers) = burst_receiver(BURST).await;
        let client = HttpClient::keeping_idle(&policy, idle).unwrap();
        let target =
            HttpTarget::new(HttpTargetSpec::new(format!("http://{addr}/hook")), client).unwrap();
        let mut opened = Vec::new();
        for _ in 0..2 {
            let before: std::collections::HashSet<SocketAddr> =
                peers.lock().unwrap().iter().copied().collect();
            let calls = (0..BURST).map(|_| deliver(&target, &event));
            let outcomes = tokio::time::timeout(
                Duration::from_secs(30),
                futures_util::future::join_all(calls),
            )
            .await
            .expect("every call of the burst was in flight at once");
            assert!(
                outcomes
                    .iter()
                    .all(|o| matches!(o, Outcome::Delivered { .. }))
            );
            let after: std::collections::HashSet<SocketAddr> =
                peers.lock().unwrap().iter().copied().collect();
            opened.push(after.difference(&before).count());
        }
        assert_eq!(opened[0], BURST, "one connection per call in flight");
        assert!(
            (fewest..=most).contains(&opened[1]),
            "keeping {idle} idle, the second burst opened {} connections",
            opened[1]
        );
    }
}
