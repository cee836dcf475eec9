//! The `busbar` command line: `serve`, `put`, the pattern and transform
//! testers, and `replay` ([`replay`]).

pub mod replay;

use crate::config::{Config, LogFormat};
use crate::pattern::{Pattern, PatternLimits, RuleSet};
use crate::route::pattern_for_sample;
use crate::transform::{SampleContext, TransformSpec};
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

mod plugin;

/// Busbar: a multi-tenant event bus with EventBridge rules and Wasm plugins.
#[derive(Debug, Parser)]
#[command(name = "busbar", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the bus.
    Serve(ServeArgs),
    /// Send one event to a running bus.
    Put(PutArgs),
    /// Event patterns.
    Pattern {
        /// Pattern action.
        #[command(subcommand)]
        action: PatternCommand,
    },
    /// Input transformers.
    Transform {
        /// Transform action.
        #[command(subcommand)]
        action: TransformCommand,
    },
    /// Wasm plugins: scaffold, build, test locally, upload.
    Plugin {
        /// Plugin action.
        #[command(subcommand)]
        action: PluginCommand,
    },
    /// Replays of archived events on a running bus.
    Replay {
        /// Replay action.
        #[command(subcommand)]
        action: replay::ReplayCommand,
    },
}

/// `busbar plugin ...`.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Scaffold a new plugin crate on the Busbar SDK.
    New {
        /// What kind of plugin: filter, transformer or connector.
        #[arg(value_parser = ["filter", "transformer", "connector"])]
        kind: String,
        /// Crate name (also the directory created).
        name: String,
        /// Where the SDK lives (a path dependency), e.g. a checkout's
        /// `plugins/sdk`; default: the SDK this binary carries, written to
        /// `$XDG_CACHE_HOME/busbar/sdk/` (or `~/.cache/busbar/sdk/`).
        #[arg(long)]
        sdk_path: Option<PathBuf>,
    },
    /// Build the plugin crate in the current directory for wasm32-wasip2 (release).
    Build {
        /// The crate directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Run a plugin once in the real sandbox and print the result, logs, time, fuel and memory.
    Test {
        /// The component.
        file: PathBuf,
        /// Event JSON file (CloudEvents JSON format).
        #[arg(long)]
        event: PathBuf,
        /// Configuration values, `key=value` (repeatable).
        #[arg(long = "config", value_parser = parse_key_value)]
        config: Vec<(String, String)>,
        /// Hosts a connector may call (repeatable).
        #[arg(long = "allow-host")]
        allow_hosts: Vec<String>,
    },
    /// Upload a component to a running bus.
    Upload {
        /// The component.
        file: PathBuf,
        /// Plugin name.
        #[arg(long)]
        name: String,
        /// Base URL of the bus.
        #[arg(long, env = "BUSBAR_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Tenant API key.
        #[arg(long, env = "BUSBAR_API_KEY")]
        key: String,
    },
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

/// `busbar serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "BUSBAR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address (default 127.0.0.1:8080).
    #[arg(long, env = "BUSBAR_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data directory (default ./busbar-data): the SQLite database, and
    /// this node's plugin files with any store.
    #[arg(long, env = "BUSBAR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where the bus keeps its state: `sqlite:DIR` (default: SQLite in the
    /// data dir) or `nats://host:port[,nats://host:port...]` (NATS
    /// JetStream, shared by any number of nodes). Overrides `[store] url`.
    #[arg(
        long,
        env = "BUSBAR_STORE",
        value_name = "sqlite:DIR|nats://HOST:PORT[,...]"
    )]
    pub store: Option<String>,
    /// This node's name in metrics (label `node`) and logs (default: host
    /// name and process id).
    #[arg(long, env = "BUSBAR_NODE_ID")]
    pub node_id: Option<String>,
    /// Directory of `*.wasm` plugins to load and watch (local development).
    #[arg(long, env = "BUSBAR_PLUGINS_DIR")]
    pub plugins_dir: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "BUSBAR_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Sync every commit to disk (survives power loss, slower).
    #[arg(long, env = "BUSBAR_FSYNC_ALWAYS")]
    pub fsync_always: bool,
    /// Let webhooks and connectors reach this non-public address, CIDR block
    /// or host name (e.g. `127.0.0.1` for a receiver on this machine); added
    /// to `[egress] allow`. Repeatable; the variable takes a comma-separated list.
    #[arg(
        long = "egress-allow",
        env = "BUSBAR_EGRESS_ALLOW",
        value_name = "CIDR|IP|HOST",
        value_delimiter = ',',
        value_parser = parse_egress_entry
    )]
    pub egress_allow: Vec<String>,
}

/// Checks an `--egress-allow` value as an `[egress] allow` entry.
fn parse_egress_entry(s: &str) -> Result<String, String> {
    s.parse::<crate::net::Entry>()
        .map(|_| s.trim().to_owned())
        .map_err(|e| format!("{s:?} {e}"))
}

/// `busbar put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// Base URL of the bus.
    #[arg(long, env = "BUSBAR_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Tenant API key.
    #[arg(long, env = "BUSBAR_API_KEY")]
    pub key: String,
    /// Bus name.
    #[arg(long, default_value = "default")]
    pub bus: String,
    /// CloudEvents `source`.
    #[arg(long, default_value = "busbar.cli")]
    pub source: String,
    /// CloudEvents `type`.
    #[arg(long = "type", default_value = "busbar.cli.event")]
    pub event_type: String,
    /// Event id (default: generated).
    #[arg(long)]
    pub id: Option<String>,
    /// JSON payload (`data`).
    #[arg(long, conflicts_with = "file")]
    pub data: Option<String>,
    /// A whole event in CloudEvents JSON format.
    #[arg(long)]
    pub file: Option<PathBuf>,
}

/// `busbar pattern ...`.
#[derive(Debug, Subcommand)]
pub enum PatternCommand {
    /// Check whether an event matches a pattern (exit 0 on match, 1 on no match, 2 when invalid).
    Test {
        /// Pattern JSON file.
        #[arg(long, required_unless_present = "jsonl")]
        pattern: Option<PathBuf>,
        /// Event JSON file.
        #[arg(long, required_unless_present = "jsonl")]
        event: Option<PathBuf>,
        /// Read `{"id", "pattern", "event"}` lines on stdin, write `{"id", "match"}` or `{"id", "error"}`;
        /// a line `{"id", "patterns": {"name": pattern, ...}, "event"}` is evaluated as one rule set
        /// and answered `{"id", "matched": [names]}`.
        #[arg(long, conflicts_with_all = ["pattern", "event"])]
        jsonl: bool,
    },
    /// Explain per branch and condition why an event matches or not (JSON;
    /// exit 0 on match, 1 on no match, 2 when invalid).
    Explain {
        /// Pattern JSON file.
        #[arg(long)]
        pattern: PathBuf,
        /// Event JSON file.
        #[arg(long)]
        event: PathBuf,
    },
}

/// `busbar transform ...`.
#[derive(Debug, Subcommand)]
pub enum TransformCommand {
    /// Render a transform for an event and print the output.
    Test {
        /// Event JSON file.
        #[arg(long, required_unless_present = "jsonl")]
        event: Option<PathBuf>,
        /// A JSON file with the transform: `{"input_paths_map", "input_template"}`, `{"input"}` or `{"input_path"}`.
        #[arg(long, required_unless_present_any = ["jsonl", "input_template"])]
        transform: Option<PathBuf>,
        /// `input_paths_map` JSON file (with --input-template).
        #[arg(long, requires = "input_template", conflicts_with = "transform")]
        input_paths_map: Option<PathBuf>,
        /// `input_template` text file.
        #[arg(long, conflicts_with = "transform")]
        input_template: Option<PathBuf>,
        /// Read `{"id", "event", "input_paths_map", "input_template"}` lines on stdin (optionally with
        /// the rule context `rule_name`, `rule_arn`, `ingestion_time`), write `{"id", "output"}` or `{"id", "error"}`.
        #[arg(long, conflicts_with_all = ["event", "transform"])]
        jsonl: bool,
    },
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// Matches one event against one pattern (see [`pattern_for_sample`] for the aliases).
pub fn test_pattern(pattern: &Value, event: &Value) -> Result<bool, String> {
    let compiled = Pattern::from_value(
        &pattern_for_sample(pattern, event),
        &PatternLimits::default(),
    )
    .map_err(|e| e.to_string())?;
    Ok(compiled.matches(event))
}

/// Matches one event against named patterns evaluated as one rule set (the index a
/// bus runs its rules with); answers the names that match, sorted. An invalid
/// pattern is named: `patterns.<name>.<path>: reason`.
pub fn test_patterns(
    patterns: serde_json::Map<String, Value>,
    event: &Value,
) -> Result<Vec<String>, String> {
    if patterns.is_empty() {
        return Err("patterns must name at least one pattern".into());
    }
    let aliased = patterns
        .into_iter()
        .map(|(name, p)| (name, pattern_for_sample(&p, event)));
    let set =
        RuleSet::compile_named(aliased, &PatternLimits::default()).map_err(|e| e.to_string())?;
    let mut matched = set.matches(event);
    matched.sort();
    Ok(matched)
}

/// Renders a transform spec (JSON object) for one event; the object may also hold
/// the rule context (`rule_name`, `rule_arn`, `ingestion_time`, see
/// [`SampleContext`]). A render error is reported with its code
/// (`transform_invalid_json: ...`).
pub fn test_transform(
    mut spec: serde_json::Map<String, Value>,
    event: &Value,
) -> Result<String, String> {
    let context =
        SampleContext::take_from(&mut spec, || crate::clock::rfc3339(crate::clock::now_ms()))
            .map_err(|e| e.to_string())?;
    let spec: TransformSpec = serde_json::from_value(Value::Object(spec))
        .map_err(|e| format!("invalid transform: {e}"))?;
    let transform = spec.compile().map_err(|e| e.to_string())?;
    transform
        .render(event, &context.render_context())
        .map_err(|e| format!("{}: {e}", e.code()))
}

/// Processes `--jsonl` input: one JSON object per line in, one per line out.
/// Blank lines are skipped; a line that is not JSON gets an error line.
pub fn run_jsonl(
    input: impl BufRead,
    mut output: impl Write,
    handle: impl Fn(&mut serde_json::Map<String, Value>) -> Result<(&'static str, Value), String>,
) -> anyhow::Result<()> {
    for line in input.lines() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(mut obj)) => {
                let id = obj.remove("id").unwrap_or(Value::Null);
                match handle(&mut obj) {
                    Ok((key, value)) => json!({"id": id, key: value}),
                    Err(error) => json!({"id": id, "error": error}),
                }
            }
            Ok(_) => json!({"id": null, "error": "each line must be a JSON object"}),
            Err(e) => json!({"id": null, "error": format!("line is not JSON: {e}")}),
        };
        serde_json::to_writer(&mut output, &answer)?;
        output.write_all(b"\n")?;
    }
    output.flush()?;
    Ok(())
}

fn pattern_line(obj: &mut serde_json::Map<String, Value>) -> Result<(&'static str, Value), String> {
    let event = obj.remove("event").ok_or("missing \"event\"")?;
    match (obj.remove("pattern"), obj.remove("patterns")) {
        (Some(pattern), None) => test_pattern(&pattern, &event).map(|m| ("match", Value::Bool(m))),
        (None, Some(Value::Object(patterns))) => {
            test_patterns(patterns, &event).map(|names| ("matched", json!(names)))
        }
        (None, Some(_)) => Err("\"patterns\" must be an object of named patterns".into()),
        (Some(_), Some(_)) => Err("give either \"pattern\" or \"patterns\", not both".into()),
        (None, None) => Err("missing \"pattern\" (or \"patterns\")".into()),
    }
}

fn transform_line(
    obj: &mut serde_json::Map<String, Value>,
) -> Result<(&'static str, Value), String> {
    let event = obj.remove("event").ok_or("missing \"event\"")?;
    test_transform(std::mem::take(obj), &event).map(|out| ("output", Value::String(out)))
}

/// Runs the command line; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Serve(args) => {
            let mut config = match &args.config {
                Some(path) => Config::from_file(path)?,
                None => Config::default(),
            };
            if let Some(listen) = args.listen {
                config.listen = listen;
            }
            if let Some(dir) = args.data_dir {
                config.data_dir = dir;
            }
            if let Some(store) = args.store {
                config.store.url = Some(store);
            }
            if let Some(node) = args.node_id {
                config.node_id = Some(node);
            }
            if let Some(format) = args.log_format {
                config.log_format = format;
            }
            if args.fsync_always {
                config.fsync = crate::store::sqlite::Durability::Always;
            }
            if let Ok(key) = std::env::var("BUSBAR_ADMIN_KEY")
                && !key.is_empty()
            {
                config.admin_key = Some(key);
            }
            if let Some(dir) = args.plugins_dir {
                config.plugins_dir = Some(dir);
            }
            config.egress.allow.extend(args.egress_allow);
            crate::telemetry::init_logging(config.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(crate::server::serve(config))?;
            Ok(0)
        }
        Command::Put(args) => put(args),
        Command::Plugin { action } => plugin::run(action),
        Command::Replay { action } => replay::run(action),
        Command::Pattern {
            action: PatternCommand::Explain { pattern, event },
        } => explain_pattern(&read_json(&pattern)?, &read_json(&event)?),
        Command::Pattern {
            action:
                PatternCommand::Test {
                    pattern,
                    event,
                    jsonl,
                },
        } => {
            if jsonl {
                run_jsonl(
                    std::io::stdin().lock(),
                    std::io::stdout().lock(),
                    pattern_line,
                )?;
                return Ok(0);
            }
            let (Some(pattern), Some(event)) = (pattern, event) else {
                bail!("--pattern and --event are required")
            };
            match test_pattern(&read_json(&pattern)?, &read_json(&event)?) {
                Ok(true) => {
                    println!("match");
                    Ok(0)
                }
                Ok(false) => {
                    println!("no match");
                    Ok(1)
                }
                Err(e) => {
                    eprintln!("invalid pattern: {e}");
                    Ok(2)
                }
            }
        }
        Command::Transform {
            action:
                TransformCommand::Test {
                    event,
                    transform,
                    input_paths_map,
                    input_template,
                    jsonl,
                },
        } => {
            if jsonl {
                run_jsonl(
                    std::io::stdin().lock(),
                    std::io::stdout().lock(),
                    transform_line,
                )?;
                return Ok(0);
            }
            let Some(event) = event else {
                bail!("--event is required")
            };
            let spec = match (transform, input_template) {
                (Some(path), _) => read_json(&path)?,
                (None, Some(template)) => {
                    let template = std::fs::read_to_string(&template)
                        .with_context(|| format!("cannot read {}", template.display()))?;
                    let map = match input_paths_map {
                        Some(p) => read_json(&p)?,
                        None => json!({}),
                    };
                    json!({"input_paths_map": map, "input_template": template.trim_end_matches('\n')})
                }
                (None, None) => bail!("give --transform FILE or --input-template FILE"),
            };
            let Value::Object(spec) = spec else {
                bail!("the transform must be a JSON object")
            };
            match test_transform(spec, &read_json(&event)?) {
                Ok(out) => {
                    println!("{out}");
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(2)
                }
            }
        }
    }
}

/// `busbar pattern explain`: prints the explanation as JSON.
fn explain_pattern(pattern: &Value, event: &Value) -> anyhow::Result<i32> {
    match crate::pattern::explain::explain(
        &pattern_for_sample(pattern, event),
        event,
        &PatternLimits::default(),
    ) {
        Ok(e) => {
            println!("{}", serde_json::to_string_pretty(&e)?);
            Ok(if e.matched { 0 } else { 1 })
        }
        Err(e) => {
            eprintln!("invalid pattern: {e}");
            Ok(2)
        }
    }
}

fn put(args: PutArgs) -> anyhow::Result<i32> {
    let event = match &args.file {
        Some(path) => read_json(path)?,
        None => {
            let data: Value = match &args.data {
                Some(d) => serde_json::from_str(d).context("--data is not valid JSON")?,
                None => json!({}),
            };
            let id = args
                .id
                .clone()
                .unwrap_or_else(|| format!("cli-{}", crate::clock::now_ms()));
            json!({"specversion": "1.0", "id": id, "source": args.source, "type": args.event_type,
                   "datacontenttype": "application/json", "data": data})
        }
    };
    let url = format!(
        "{}/v1/buses/{}/events",
        args.url.trim_end_matches('/'),
        args.bus
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(&url)
            .bearer_auth(&args.key)
            .header("content-type", "application/cloudevents+json")
            .body(event.to_string())
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        anyhow::Ok((status, body))
    })?;
    println!("{body}");
    Ok(if status.is_success() { 0 } else { 1 })
}
