//! `busbar plugin new|build|test|upload`: the plugin author's tools.
//!
//! `new` scaffolds a crate that builds anywhere: its `busbar-sdk` path
//! dependency is the SDK this binary carries (see [`sdk`]) unless
//! `--sdk-path` names another, and it gets the plugins workspace's
//! `Cargo.lock`, so it resolves the dependency versions the SDK is tested with.

mod sdk;

use super::PluginCommand;
use crate::event::Event;
use crate::plugin::{
    ConnectorPlugin, FilterPlugin, Invocation, InvokeContext, LoadedPlugin, PluginKind,
    PluginLimits, PluginRuntime, RuntimeConfig, TransformerPlugin,
};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Scaffold files per kind: (path in the new crate, template text).
fn templates(kind: PluginKind) -> [(&'static str, &'static str); 2] {
    match kind {
        PluginKind::Filter => [
            (
                "Cargo.toml",
                include_str!("../../../plugins/templates/filter/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                include_str!("../../../plugins/templates/filter/src/lib.rs"),
            ),
        ],
        PluginKind::Transformer => [
            (
                "Cargo.toml",
                include_str!("../../../plugins/templates/transformer/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                include_str!("../../../plugins/templates/transformer/src/lib.rs"),
            ),
        ],
        PluginKind::Connector => [
            (
                "Cargo.toml",
                include_str!("../../../plugins/templates/connector/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                include_str!("../../../plugins/templates/connector/src/lib.rs"),
            ),
        ],
    }
}

/// Runs a plugin subcommand; returns the exit code.
pub fn run(action: PluginCommand) -> anyhow::Result<i32> {
    match action {
        PluginCommand::New {
            kind,
            name,
            sdk_path,
        } => {
            let kind = match kind.as_str() {
                "filter" => PluginKind::Filter,
                "transformer" => PluginKind::Transformer,
                _ => PluginKind::Connector,
            };
            new(kind, &name, sdk_path.as_deref())
        }
        PluginCommand::Build { dir } => build(&dir),
        PluginCommand::Test {
            file,
            event,
            config,
            allow_hosts,
        } => test(&file, &event, config, allow_hosts),
        PluginCommand::Upload {
            file,
            name,
            url,
            key,
        } => upload(&file, &name, &url, &key),
    }
}

fn new(kind: PluginKind, name: &str, sdk_path: Option<&Path>) -> anyhow::Result<i32> {
    if !crate::resource::valid_name(name) {
        bail!("plugin name {name:?} must be 1-64 characters of A-Z a-z 0-9 . _ -");
    }
    let dir = Path::new(name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let sdk = match sdk_path {
        Some(p) => std::fs::canonicalize(p)
            .with_context(|| format!("busbar-sdk not found at {}", p.display()))?,
        None => sdk::install()?,
    };
    let sdk = toml_escape(&sdk.display().to_string());
    for (path, text) in templates(kind) {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let text = text.replace("{{name}}", name).replace("{{sdk_path}}", &sdk);
        std::fs::write(&target, text).with_context(|| format!("writing {}", target.display()))?;
    }
    let lock = dir.join("Cargo.lock");
    std::fs::write(&lock, sdk::PLUGINS_LOCK)
        .with_context(|| format!("writing {}", lock.display()))?;
    println!("created {} plugin {name} in ./{name}", kind.as_str());
    println!("next: cd {name} && cargo test && busbar plugin build");
    Ok(0)
}

/// `text` as the inside of a TOML basic string.
fn toml_escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

fn build(dir: &Path) -> anyhow::Result<i32> {
    let status = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!(
            "warning: could not run `rustup target add wasm32-wasip2`; trying the build anyway"
        );
    }
    let status = Command::new("cargo")
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(dir)
        .status()
        .context("running cargo")?;
    if !status.success() {
        return Ok(status.code().unwrap_or(1));
    }
    println!("built: look in target/wasm32-wasip2/release/*.wasm");
    Ok(0)
}

fn test(
    file: &Path,
    event: &Path,
    config: Vec<(String, String)>,
    allowed_hosts: Vec<String>,
) -> anyhow::Result<i32> {
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let text = std::fs::read_to_string(event)
        .with_context(|| format!("cannot read {}", event.display()))?;
    let Value::Object(map) =
        serde_json::from_str::<Value>(&text).context("the event is not JSON")?
    else {
        bail!("the event must be a JSON object (CloudEvents JSON format)");
    };
    let event = Event::from_validated(map);
    let scratch = tempfile_dir()?;
    let runtime = PluginRuntime::new(RuntimeConfig {
        consume_fuel: true,
        ..RuntimeConfig::new(scratch.clone())
    })?;
    let prepared = runtime
        .prepare(&wasm)
        .map_err(|e| anyhow::anyhow!("{}: {}", e.code.as_str(), e.message))?;
    let config: BTreeMap<String, String> = config.into_iter().collect();
    let limits = PluginLimits::default();
    let cx = InvokeContext {
        tenant: "local",
        plugin: "test",
        version: 1,
        event_id: event.id(),
        config: &config,
        limits: &limits,
        allowed_hosts: &allowed_hosts,
    };
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let loaded = runtime
        .load(&prepared.sha256)
        .map_err(|e| anyhow::anyhow!("{}: {}", e.code.as_str(), e.message))?;
    let report = tokio.block_on(async {
        match &loaded {
            LoadedPlugin::Filter(p) => run_filter(&runtime, p, &cx, &event).await,
            LoadedPlugin::Transformer(p) => run_transformer(&runtime, p, &cx, &event).await,
            LoadedPlugin::Connector(p) => run_connector(&runtime, p, &cx, &event).await,
        }
    });
    let _ = std::fs::remove_dir_all(&scratch);
    match report {
        Ok(mut out) => {
            out["kind"] = json!(prepared.kind.as_str());
            out["compile_ms"] = json!(prepared.compile_ms);
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(0)
        }
        Err(f) => {
            let logs: Vec<String> = f.logs.iter().map(|l| format!("{l:?}")).collect();
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &json!({"kind": prepared.kind.as_str(), "failure": f.kind.as_str(), "message": f.message, "logs": logs})
                )?
            );
            Ok(1)
        }
    }
}

async fn run_filter(
    runtime: &PluginRuntime,
    p: &FilterPlugin,
    cx: &InvokeContext<'_>,
    event: &Event,
) -> Result<Value, crate::plugin::PluginFailure> {
    let i = runtime.filter(p, cx, event).await?;
    Ok(summary(&i, json!(i.value)))
}

async fn run_transformer(
    runtime: &PluginRuntime,
    p: &TransformerPlugin,
    cx: &InvokeContext<'_>,
    event: &Event,
) -> Result<Value, crate::plugin::PluginFailure> {
    let i = runtime.transform(p, cx, event).await?;
    let events: Vec<Value> = i
        .value
        .iter()
        .map(|e| Value::Object(e.event().as_map().clone()))
        .collect();
    Ok(summary(&i, json!(events)))
}

async fn run_connector(
    runtime: &PluginRuntime,
    p: &ConnectorPlugin,
    cx: &InvokeContext<'_>,
    event: &Event,
) -> Result<Value, crate::plugin::PluginFailure> {
    runtime.validate_config(p, cx).await?;
    let i = runtime.deliver(p, cx, std::slice::from_ref(event)).await?;
    let outcomes: Vec<Value> = i.value.iter().map(|o| json!(format!("{o:?}"))).collect();
    Ok(summary(&i, json!(outcomes)))
}

fn summary<T>(i: &Invocation<T>, result: Value) -> Value {
    let logs: Vec<String> = i.logs.iter().map(|l| format!("{l:?}")).collect();
    json!({
        "result": result,
        "logs": logs,
        "elapsed_us": i.elapsed.as_micros() as u64,
        "fuel_used": i.fuel_used,
        "memory_peak_bytes": i.memory_peak,
    })
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "busbar-plugin-test-{}-{}",
        std::process::id(),
        crate::clock::now_ms()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn upload(file: &Path, name: &str, url: &str, key: &str) -> anyhow::Result<i32> {
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let url = format!("{}/v1/plugins/{name}", url.trim_end_matches('/'));
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (ok, body) = tokio.block_on(async {
        let response = reqwest::Client::new()
            .put(&url)
            .bearer_auth(key)
            .header("content-type", "application/wasm")
            .body(wasm)
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let ok = response.status().is_success();
        anyhow::Ok((ok, response.text().await.unwrap_or_default()))
    })?;
    println!("{body}");
    Ok(if ok { 0 } else { 1 })
}
