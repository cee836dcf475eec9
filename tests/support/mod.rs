//! Shared test harness: a real bus on 127.0.0.1:0 with a temp data dir, real
//! HTTP receivers, and condition waits with deadlines.
//!
//! A bus runs on SQLite, or on NATS when the test runs under
//! [`nats::on_nats`] (see `also_on_nats!`): [`config_for`] decides.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::any;
use busbar::config::Config;
use busbar::server::{self, Running};
use serde_json::{Value, json};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const ADMIN_KEY: &str = "test-admin-key";

/// Waits until `check` returns Some, polling every 20 ms, failing after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A bus running in this process.
pub struct TestBus {
    pub url: String,
    pub client: reqwest::Client,
    running: Option<Running>,
    dir: Option<tempfile::TempDir>,
    /// The NATS deployment (URL, prefix) the bus runs on, deleted when the
    /// bus is dropped without being stopped for a restart.
    nats: Option<(String, String)>,
}

impl TestBus {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir).await
    }

    pub async fn start_in(dir: tempfile::TempDir) -> Self {
        let config = config_for(dir.path());
        Self::start_with(dir, config).await
    }

    /// Starts with a config (made with [`config_for`] and adjusted).
    pub async fn start_with(dir: tempfile::TempDir, config: Config) -> Self {
        let nats = config
            .store
            .url
            .clone()
            .filter(|u| u.starts_with("nats://"))
            .map(|u| (u, config.store.prefix.clone()));
        let running = start_when_the_dir_is_free(config).await;
        Self {
            url: format!("http://{}", running.addr),
            client: reqwest::Client::new(),
            running: Some(running),
            dir: Some(dir),
            nats,
        }
    }

    /// Starts with a config, reading time from `clock` (tests of windows
    /// and expiry move time themselves).
    pub async fn start_with_clock(
        dir: tempfile::TempDir,
        config: Config,
        clock: busbar::clock::SharedClock,
    ) -> Self {
        let nats = config
            .store
            .url
            .clone()
            .filter(|u| u.starts_with("nats://"))
            .map(|u| (u, config.store.prefix.clone()));
        let running = server::start_with_clock(config, clock).await.unwrap();
        Self {
            url: format!("http://{}", running.addr),
            client: reqwest::Client::new(),
            running: Some(running),
            dir: Some(dir),
            nats,
        }
    }

    /// Stops gracefully and returns the data dir for a restart.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(r) = self.running.take() {
            r.stop().await.unwrap();
        }
        self.dir.take().unwrap()
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call(method, path, ADMIN_KEY, body).await
    }

    /// Creates a tenant and returns its API key.
    pub async fn tenant(&self, name: &str) -> String {
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                "/v1/admin/tenants",
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["api_key"].as_str().unwrap().to_owned()
    }

    /// The bus's `/metrics` text.
    pub async fn metrics(&self) -> String {
        metrics_at(&self.client, &self.url).await
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.url, path))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn put(&self, key: &str, path: &str, body: Value) -> Value {
        let (status, out) = self.call(reqwest::Method::PUT, path, key, Some(body)).await;
        assert!(status.is_success(), "PUT {path}: {status} {out}");
        out
    }

    /// Sends one structured-mode event; asserts 202.
    pub async fn send(&self, key: &str, bus: &str, event: Value) {
        let (status, body) = self
            .raw(
                key,
                bus,
                "application/cloudevents+json",
                event.to_string(),
                &[],
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }

    /// Uploads a guest built from plugins/ as `name`; returns the answer.
    pub async fn upload(&self, key: &str, name: &str, wasm: Vec<u8>) -> (StatusCode, Value) {
        let resp = self
            .client
            .put(format!("{}/v1/plugins/{name}", self.url))
            .bearer_auth(key)
            .header("content-type", "application/wasm")
            .body(wasm)
            .send()
            .await
            .unwrap();
        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Uploads a guest as a new plugin `name`; asserts 201.
    pub async fn install(&self, key: &str, name: &str, guest: &str) {
        let (status, body) = self.upload(key, name, guests::guest_bytes(guest)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// Receives up to `n` messages from a queue, waiting until there are `n` (with a deadline).
    ///
    /// The deadline only bounds how long a failing test waits: it returns
    /// as soon as all `n` are in. 20 s proved too short for 1,000 events
    /// through two Wasm plugins on NATS on a slow 2-core machine running
    /// the rest of the suite at the same time (1,000 of 1,060 had arrived;
    /// that whole test, sending included, takes about 12 s when run alone).
    pub async fn drain(&self, key: &str, queue: &str, n: usize) -> Vec<Value> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while got.len() < n && tokio::time::Instant::now() < deadline {
            let (_, body) = self
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/queues/{queue}/receive"),
                    key,
                    Some(json!({"max_messages": 100, "wait_s": 1})),
                )
                .await;
            got.extend(
                body["messages"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|m| m["event"].clone()),
            );
        }
        got
    }

    pub async fn raw(
        &self,
        key: &str,
        bus: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .post(format!("{}/v1/buses/{bus}/events", self.url))
            .bearer_auth(key)
            .header("content-type", content_type)
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.trigger_shutdown();
        }
        // Done with the deployment (not stopped to start again on it).
        if let (Some((url, prefix)), Some(_)) = (self.nats.take(), self.dir.as_ref()) {
            std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(nats::delete_deployment(&url, &prefix));
                }
            })
            .join()
            .ok();
        }
    }
}

/// The configuration of a test bus in `dir`: on SQLite there, or on the
/// shared NATS server under a prefix of its own when the test runs on NATS.
pub fn config_for(dir: &Path) -> Config {
    let mut config = config_on_sqlite(dir);
    if nats::current() == nats::Store::Nats {
        config.store.url = Some(nats::shared_url().to_owned());
        config.store.prefix = nats::prefix_for(dir);
    }
    config
}

fn config_on_sqlite(dir: &Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_owned(),
        admin_key: Some(ADMIN_KEY.to_owned()),
        // Webhooks and connectors deliver to receivers on loopback.
        egress: busbar::net::EgressConfig {
            allow: vec!["127.0.0.1".to_owned()],
            ..Default::default()
        },
        ..Config::default()
    }
}

pub fn event(id: &str, source: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "id": id, "source": source, "type": "test.event",
           "datacontenttype": "application/json", "data": data})
}

/// A retry policy that makes tests fast.
pub fn fast_retry(max_attempts: u32) -> Value {
    json!({"max_attempts": max_attempts, "base_delay_ms": 10, "max_delay_ms": 50})
}

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Default)]
struct ReceiverState {
    got: Mutex<Vec<Received>>,
    /// Answer this status for the next N requests, then 200.
    fail: Mutex<(usize, u16)>,
    /// Hold every request this long before answering.
    delay: Mutex<Duration>,
}

/// A real HTTP receiver that records what it gets.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = {
        let mut fail = state.fail.lock().unwrap();
        if fail.0 > 0 {
            fail.0 -= 1;
            StatusCode::from_u16(fail.1).unwrap()
        } else {
            StatusCode::OK
        }
    };
    if status.is_success() {
        state.got.lock().unwrap().push(Received {
            path: uri.path().to_owned(),
            headers,
            body,
        });
    }
    status
}

impl Receiver {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Self {
        let state = Arc::new(ReceiverState::default());
        let app = Router::new()
            .fallback(any(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Fail the next `n` requests with `status`.
    pub fn fail_next(&self, n: usize, status: u16) {
        *self.state.fail.lock().unwrap() = (n, status);
    }

    /// Answer every request only after `delay` (a slow target).
    pub fn slow_down(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.got.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests were accepted.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let me = self.clone();
        wait_for(
            &format!("{n} deliveries to {}", self.addr),
            Duration::from_secs(20),
            || {
                let got = me.received();
                async move { (got.len() >= n).then_some(got) }
            },
        )
        .await
    }
}
pub mod guests;
pub mod nats;
pub mod process;

/// Starts the bus; a data dir whose lock the instance stopped just before
/// in this process still holds (its last detached tasks let go of the store
/// a moment after `stop` returns) is waited for, up to a deadline.
async fn start_when_the_dir_is_free(config: Config) -> Running {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match server::start(config.clone()).await {
            Ok(running) => return running,
            Err(e)
                if format!("{e:#}").contains("in use by another busbar process")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the bus did not start: {e:#}"),
        }
    }
}

/// The `/metrics` text of the bus at `url` (a [`TestBus`] or a bus process).
pub async fn metrics_at(client: &reqwest::Client, url: &str) -> String {
    client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of a counter in the Prometheus text (whatever its labels:
/// every series carries the node's name); 0 when it has no series yet.
pub fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once('}')?.1,
                None => rest,
            };
            value.trim().parse::<f64>().ok()
        })
        .map_or(0, |v| v as u64)
}
