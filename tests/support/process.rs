//! `busbar serve` as a real child process (the binary under test), for the
//! tests that kill nodes or measure them.

use super::ADMIN_KEY;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `busbar serve` process.
pub struct BusProcess {
    /// Its base URL.
    pub url: String,
    child: Option<Child>,
}

impl BusProcess {
    /// Starts `busbar serve` with `args` (after `serve`) on a free port with
    /// `data_dir`, loopback egress allowed, and waits until it listens.
    pub fn spawn(data_dir: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_busbar"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(["--egress-allow", "127.0.0.1"])
            .args(args)
            .env("BUSBAR_ADMIN_KEY", ADMIN_KEY)
            .env("BUSBAR_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start busbar");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("busbar exited before listening")
                .unwrap();
            if let Some(url) = line.strip_prefix("busbar listening on ") {
                break url.trim().to_owned();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            url,
            child: Some(child),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// CPU time (user + system) the process has used so far, from
    /// `/proc/<pid>/stat` (in clock ticks of 1/100 s on Linux).
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name (which may hold spaces) in parens.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        ticks as f64 / 100.0
    }

    /// SIGKILL: nothing is flushed or handed back.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for BusProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Creates a tenant through `url`; returns its API key.
pub async fn create_tenant(client: &reqwest::Client, url: &str, name: &str) -> String {
    let tenant: Value = client
        .post(format!("{url}/v1/admin/tenants"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"name": name}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    tenant["api_key"].as_str().unwrap().to_owned()
}

/// Posts one structured-mode event; the status, or `None` when the node
/// did not answer at all.
pub async fn post_event(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    event: &Value,
) -> Option<u16> {
    client
        .post(format!("{url}/v1/buses/default/events"))
        .bearer_auth(key)
        .header("content-type", "application/cloudevents+json")
        .timeout(Duration::from_secs(30))
        .body(event.to_string())
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}
