//! `busbar replay start|status|cancel`: replays through a running bus's
//! API, with a progress bar while a replay runs.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use std::time::Duration;

/// Where the bus is and who asks.
#[derive(Debug, Args)]
pub struct Connection {
    /// Base URL of the bus.
    #[arg(long, env = "BUSBAR_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Tenant API key.
    #[arg(long, env = "BUSBAR_API_KEY")]
    pub key: String,
}

/// `busbar replay ...`.
#[derive(Debug, Subcommand)]
pub enum ReplayCommand {
    /// Replay an archive's window and follow it to the end with a progress bar.
    Start {
        /// The archive's bus.
        #[arg(long)]
        bus: String,
        /// The archive.
        #[arg(long)]
        archive: String,
        /// Start of the window (RFC 3339, inclusive), or `now`.
        #[arg(long)]
        from: String,
        /// End of the window (RFC 3339, exclusive), or `now`.
        #[arg(long)]
        to: String,
        /// Destination bus (default: the archive's bus).
        #[arg(long = "to-bus")]
        to_bus: Option<String>,
        /// Only this rule of the destination bus (repeatable).
        #[arg(long = "rule")]
        rules: Vec<String>,
        /// A name for the replay (the `replayname` its events carry).
        #[arg(long)]
        name: Option<String>,
        /// Print the replay id and return at once.
        #[arg(long)]
        no_wait: bool,
        /// The bus.
        #[command(flatten)]
        connection: Connection,
    },
    /// Show a replay.
    Status {
        /// The replay id.
        id: String,
        /// The bus.
        #[command(flatten)]
        connection: Connection,
    },
    /// Cancel a running replay.
    Cancel {
        /// The replay id.
        id: String,
        /// The bus.
        #[command(flatten)]
        connection: Connection,
    },
}

/// `now` as RFC 3339; anything else as given (the bus checks it).
fn instant(s: &str) -> String {
    if s == "now" {
        crate::clock::rfc3339(crate::clock::now_ms())
    } else {
        s.to_owned()
    }
}

struct Client {
    http: reqwest::Client,
    url: String,
    key: String,
}

impl Client {
    fn new(c: Connection) -> Self {
        Self {
            http: reqwest::Client::new(),
            url: c.url.trim_end_matches('/').to_owned(),
            key: c.key,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{path}", self.url);
        let mut req = self.http.request(method, &url).bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }
}

fn error_of(body: &Value) -> String {
    body["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string())
}

/// Runs a replay command; returns the exit code.
pub fn run(command: ReplayCommand) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match command {
            ReplayCommand::Start {
                bus,
                archive,
                from,
                to,
                to_bus,
                rules,
                name,
                no_wait,
                connection,
            } => {
                let client = Client::new(connection);
                let mut body = json!({"bus": bus, "archive": archive, "from": instant(&from),
                                      "to": instant(&to), "rules": rules});
                if let Some(b) = to_bus {
                    body["destination_bus"] = json!(b);
                }
                if let Some(n) = name {
                    body["name"] = json!(n);
                }
                let (status, answer) = client
                    .call(reqwest::Method::POST, "/v1/replays", Some(body))
                    .await?;
                if status != 202 {
                    bail!(
                        "the bus refused the replay ({status}): {}",
                        error_of(&answer)
                    );
                }
                let id = answer["replay_id"].as_str().unwrap_or_default().to_owned();
                if no_wait {
                    println!("{id}");
                    return Ok(0);
                }
                follow(&client, &id).await
            }
            ReplayCommand::Status { id, connection } => {
                let client = Client::new(connection);
                let (status, answer) = client
                    .call(reqwest::Method::GET, &format!("/v1/replays/{id}"), None)
                    .await?;
                println!("{}", serde_json::to_string_pretty(&answer)?);
                Ok(if status == 200 { 0 } else { 1 })
            }
            ReplayCommand::Cancel { id, connection } => {
                let client = Client::new(connection);
                let (status, answer) = client
                    .call(reqwest::Method::DELETE, &format!("/v1/replays/{id}"), None)
                    .await?;
                println!("{}", serde_json::to_string_pretty(&answer)?);
                Ok(if status == 200 { 0 } else { 1 })
            }
        }
    })
}

/// Polls a replay until it ends, drawing its progress; 0 when it completed.
async fn follow(client: &Client, id: &str) -> anyhow::Result<i32> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} replay {msg} [{bar:40}] {pos}/{len} events ({per_sec}, {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(id.to_owned());
    loop {
        let (status, r) = client
            .call(reqwest::Method::GET, &format!("/v1/replays/{id}"), None)
            .await?;
        if status != 200 {
            bar.abandon();
            bail!("cannot read replay {id} ({status}): {}", error_of(&r));
        }
        bar.set_length(r["events_total"].as_u64().unwrap_or(0));
        bar.set_position(r["events_replayed"].as_u64().unwrap_or(0));
        let state = r["state"].as_str().unwrap_or_default();
        if matches!(state, "completed" | "cancelled" | "failed") {
            bar.finish();
            let reason = r["state_reason"]
                .as_str()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default();
            println!(
                "replay {id} {state}{reason}: {} of {} events replayed",
                r["events_replayed"], r["events_total"]
            );
            return Ok(if state == "completed" { 0 } else { 1 });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
