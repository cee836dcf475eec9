//! Real `nats-server` processes for the integration tests.
//!
//! - [`harness`] is the store's own unit-test harness (single servers and
//!   3-node clusters you can kill and restart), compiled in here as well.
//! - [`shared_url`]: one JetStream server for the whole test binary, which
//!   every test that runs a bus on NATS uses under its own prefix (starting
//!   a server per test would cost more than most tests). It dies with the
//!   test process, however that ends: it runs under a small shell that
//!   kills it (and removes its store) when the test process's end of its
//!   stdin pipe closes.
//! - [`Store`] and [`on_nats`]: which backend [`super::TestBus`] and
//!   [`super::config_for`] use; `also_on_nats!` reruns a file's tests on NATS.

#[allow(dead_code)]
#[path = "../../host/src/store/nats/testing.rs"]
pub mod harness;

use std::cell::Cell;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The backend a test's buses run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// SQLite in the bus's temp data dir (the default).
    Sqlite,
    /// The shared nats-server, under a prefix of the bus's own.
    Nats,
}

thread_local! {
    static STORE: Cell<Store> = const { Cell::new(Store::Sqlite) };
}

/// The backend buses started on this thread use now.
pub fn current() -> Store {
    STORE.with(Cell::get)
}

/// Runs a test (a `#[tokio::test]` function, which builds its runtime on
/// this thread) with its buses on the shared NATS server.
pub fn on_nats(test: fn()) {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            STORE.with(|s| s.set(Store::Sqlite));
        }
    }
    STORE.with(|s| s.set(Store::Nats));
    let _reset = Reset;
    test();
}

/// Reruns the named `#[tokio::test]` functions of this file with their
/// buses on NATS, as `<file>::on_nats::<name>`.
#[macro_export]
macro_rules! also_on_nats {
    ($($test:ident),+ $(,)?) => {
        mod on_nats {
            $(
                #[test]
                fn $test() {
                    $crate::support::nats::on_nats(super::$test);
                }
            )+
        }
    };
}

/// The deployment prefix of a bus whose data dir is `dir`: a restart on the
/// same dir finds the same streams.
pub fn prefix_for(dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut h);
    format!("T{:016X}", h.finish())
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// The URL of this test process's shared JetStream server, started on
/// first use (`sync_interval: always`, like every test server).
pub fn shared_url() -> &'static str {
    // The shell holds the server; its stdin (kept open in `Child`) is the
    // lifeline: it is never written, and closes when this process ends.
    static SHARED: OnceLock<(String, Mutex<Child>)> = OnceLock::new();
    &SHARED.get_or_init(start_shared).0
}

fn start_shared() -> (String, Mutex<Child>) {
    let dir = tempfile::Builder::new()
        .prefix("busbar-nats-")
        .tempdir()
        .unwrap()
        .keep();
    let port = free_port();
    let config = dir.join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nmax_payload: 8MB\n\
             jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
            dir.join("jetstream").display()
        ),
    )
    .unwrap();
    let log = dir.join("nats.log");
    // The server's lifetime is the test process's: `cat` returns when the
    // process is gone (its end of the pipe closes), then the server is
    // killed and its store removed.
    let script = r#"exec 3<&0; "$0" -c "$1" </dev/null 2>"$2" & pid=$!; cat <&3 >/dev/null; kill -9 $pid; wait $pid; rm -rf "$3""#;
    let child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(harness::server_binary())
        .arg(&config)
        .arg(&log)
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Ready once it says so (JetStream is set up before that line).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = std::fs::File::open(&log).is_ok_and(|f| {
            BufReader::new(f)
                .lines()
                .any(|l| l.is_ok_and(|l| l.contains("Server is ready")))
        });
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the shared nats-server did not start within 30 s:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (format!("nats://127.0.0.1:{port}"), Mutex::new(child))
}

/// Deletes a deployment's streams (best effort; at the end of a test).
pub async fn delete_deployment(url: &str, prefix: &str) {
    let Ok(Ok(client)) =
        tokio::time::timeout(Duration::from_secs(2), async_nats::connect(url)).await
    else {
        return;
    };
    let js = async_nats::jetstream::new(client);
    for kind in [
        "LOG", "JOBS", "DLQ", "QUEUES", "CONFIG", "QSTATE", "ARCHIVE", "DEDUP", "CHAINS",
        "SCHEMAS", "TRACES", "REPLAYS",
    ] {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            js.delete_stream(format!("{prefix}_{kind}")),
        )
        .await;
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        js.delete_stream(format!("OBJ_{prefix}_PLUGINS")),
    )
    .await;
}
