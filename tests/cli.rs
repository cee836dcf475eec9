//! The `busbar` binary's offline tools: `pattern test`, `transform test`
//! and `plugin new|build|test`.

use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

fn busbar(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_busbar"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn write(dir: &tempfile::TempDir, name: &str, value: &Value) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, value.to_string()).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn pattern_test_exit_codes_say_match_no_match_and_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let event = write(
        &dir,
        "e.json",
        &json!({"source": "shop", "detail": {"n": 5}}),
    );
    let yes = write(
        &dir,
        "yes.json",
        &json!({"source": ["shop"], "detail": {"n": [{"numeric": [">", 1]}]}}),
    );
    let no = write(&dir, "no.json", &json!({"source": ["other"]}));
    let bad = write(&dir, "bad.json", &json!({"source": [{"nonsense": 1}]}));
    let out = busbar(
        &["pattern", "test", "--pattern", &yes, "--event", &event],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = busbar(
        &["pattern", "test", "--pattern", &no, "--event", &event],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = busbar(
        &["pattern", "test", "--pattern", &bad, "--event", &event],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("source"),
        "the error names the path: {stderr}"
    );
}

#[test]
fn pattern_test_jsonl_answers_each_line() {
    let input = [
        json!({"id": 1, "pattern": {"a": ["x"]}, "event": {"a": "x"}}).to_string(),
        json!({"id": "two", "pattern": {"a": ["x"]}, "event": {"a": "y"}}).to_string(),
        json!({"id": 3, "pattern": {"a": [{"prefix": 5}]}, "event": {"a": "y"}}).to_string(),
        "not json".to_owned(),
    ]
    .join("\n");
    let out = busbar(&["pattern", "test", "--jsonl"], Some(&input));
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0], json!({"id": 1, "match": true}));
    assert_eq!(lines[1], json!({"id": "two", "match": false}));
    assert_eq!(lines[2]["id"], 3);
    assert!(
        lines[2]["error"].as_str().unwrap().contains("prefix"),
        "{}",
        lines[2]
    );
    assert!(lines[3]["error"].is_string());
}

#[test]
fn transform_test_renders_templates_and_reports_errors() {
    let dir = tempfile::tempdir().unwrap();
    let event = write(
        &dir,
        "e.json",
        &json!({"data": {"id": "o-1", "total": 12.5}}),
    );
    let spec = write(
        &dir,
        "t.json",
        &json!({"input_paths_map": {"id": "$.data.id", "total": "$.data.total"},
                "input_template": "{\"order\": <id>, \"sum\": <total>}"}),
    );
    let out = busbar(
        &["transform", "test", "--event", &event, "--transform", &spec],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let rendered: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rendered, json!({"order": "o-1", "sum": 12.5}));

    let input = [
        json!({"id": "a", "event": {"x": "hi"}, "input_paths_map": {"x": "$.x"}, "input_template": "say <x>"}).to_string(),
        json!({"id": "b", "event": {}, "input_paths_map": {}, "input_template": "<undefined>"}).to_string(),
    ]
    .join("\n");
    let out = busbar(&["transform", "test", "--jsonl"], Some(&input));
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0], json!({"id": "a", "output": "say hi"}));
    assert!(
        lines[1]["error"].as_str().unwrap().contains("undefined"),
        "{}",
        lines[1]
    );
}

#[test]
fn plugin_test_runs_a_component_in_the_sandbox_and_reports_usage() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = crate::support::guests::guest("amount-filter");
    let event = write(
        &dir,
        "e.json",
        &json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t",
                "datacontenttype": "application/json", "data": {"amount": 50}}),
    );
    let out = busbar(
        &[
            "plugin",
            "test",
            wasm.to_str().unwrap(),
            "--event",
            &event,
            "--config",
            "threshold=10",
        ],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["kind"], "filter");
    assert_eq!(report["result"], true);
    assert!(report["fuel_used"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["memory_peak_bytes"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(report["elapsed_us"].is_u64());
    // A bad config is the plugin's own error, reported with a non-zero exit.
    let out = busbar(
        &["plugin", "test", wasm.to_str().unwrap(), "--event", &event],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["failure"], "invalid_config", "{report}");
}

#[test]
fn plugin_new_scaffolds_a_crate_on_the_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let sdk = crate::support::guests::repo_root().join("plugins/sdk");
    let out = Command::new(env!("CARGO_BIN_EXE_busbar"))
        .args([
            "plugin",
            "new",
            "connector",
            "my-hook",
            "--sdk-path",
            sdk.to_str().unwrap(),
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let manifest = std::fs::read_to_string(dir.path().join("my-hook/Cargo.toml")).unwrap();
    assert!(manifest.contains("name = \"my-hook\""), "{manifest}");
    assert!(manifest.contains("busbar-sdk"), "{manifest}");
    assert!(
        !manifest.contains("{{"),
        "placeholders are filled: {manifest}"
    );
    assert!(dir.path().join("my-hook/src/lib.rs").exists());
}

#[test]
fn plugin_new_scaffolds_a_crate_that_builds_outside_the_repo() {
    // A user without the Busbar source: a home and a cache of their own, a
    // working directory outside the repository, no --sdk-path.
    let started = Instant::now();
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("cache");
    let work = tempfile::tempdir().unwrap();
    let new = |args: &[&str], xdg: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_busbar"));
        cmd.args(args)
            .current_dir(work.path())
            .env("HOME", home.path())
            .env_remove("XDG_CACHE_HOME");
        if let Some(dir) = xdg {
            cmd.env("XDG_CACHE_HOME", dir);
        }
        cmd.output().unwrap()
    };
    let out = new(
        &["plugin", "new", "transformer", "my-labeler"],
        Some(&cache),
    );
    assert!(out.status.success(), "{out:?}");
    let krate = work.path().join("my-labeler");
    let manifest = std::fs::read_to_string(krate.join("Cargo.toml")).unwrap();
    let sdks: Vec<_> = std::fs::read_dir(cache.join("busbar/sdk"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(sdks.len(), 1, "{sdks:?}");
    let sdk = &sdks[0];
    assert!(
        manifest.contains(&format!("path = \"{}\"", sdk.display())),
        "the SDK dependency is the cached copy: {manifest}"
    );
    let repo = crate::support::guests::repo_root().canonicalize().unwrap();
    assert!(
        !manifest.contains(&repo.display().to_string()),
        "{manifest}"
    );
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        "wit/plugin.wit",
        "wit/deps/io.wit",
    ] {
        assert!(
            sdk.join(file).is_file(),
            "{file} missing in {}",
            sdk.display()
        );
    }
    assert!(
        krate.join("Cargo.lock").is_file(),
        "the versions are pinned"
    );
    // Without XDG_CACHE_HOME the cache is ~/.cache.
    let out = new(&["plugin", "new", "filter", "my-gate"], None);
    assert!(out.status.success(), "{out:?}");
    assert!(home.path().join(".cache/busbar/sdk").is_dir());

    // `busbar plugin build`, offline, into a target dir shared between runs
    // so the SDK's dependencies compile once.
    let target = crate::support::guests::host_target_dir().join("scaffold");
    let out = Command::new(env!("CARGO_BIN_EXE_busbar"))
        .args(["plugin", "build", "--dir", krate.to_str().unwrap()])
        .env("CARGO_TARGET_DIR", &target)
        .env("CARGO_NET_OFFLINE", "true")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wasm = target.join("wasm32-wasip2/release/my_labeler.wasm");
    assert!(wasm.is_file(), "{}", wasm.display());

    // The component runs in the sandbox and does what the template says.
    let event = write(
        &work,
        "e.json",
        &json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t",
                "datacontenttype": "application/json", "data": {"amount": 5}}),
    );
    let out = busbar(
        &[
            "plugin",
            "test",
            wasm.to_str().unwrap(),
            "--event",
            &event,
            "--config",
            "label=vip",
        ],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["kind"], "transformer", "{report}");
    assert_eq!(
        report["result"][0]["data"],
        json!({"amount": 5, "label": "vip"}),
        "{report}"
    );
    eprintln!(
        "scaffolded, built and ran a plugin in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn pattern_test_jsonl_evaluates_named_patterns_as_one_rule_set() {
    let input = [
        json!({"id": 1, "patterns": {"paid": {"data": {"status": ["paid"]}}, "shop": {"source": ["shop"]}, "none": {"source": ["x"]}},
               "event": {"source": "shop", "data": {"status": "paid"}}})
        .to_string(),
        json!({"id": 2, "patterns": {"ok": {"a": [1]}, "bad": {"a": [{"equals-ignore-case": 1}]}}, "event": {}}).to_string(),
        json!({"id": 3, "patterns": {"a": {"a": [1]}}, "pattern": {"a": [1]}, "event": {}}).to_string(),
    ]
    .join("\n");
    let out = busbar(&["pattern", "test", "--jsonl"], Some(&input));
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0], json!({"id": 1, "matched": ["paid", "shop"]}));
    let error = lines[1]["error"].as_str().unwrap();
    assert!(
        error.starts_with("patterns.bad.a[0].equals-ignore-case: "),
        "{error}"
    );
    assert!(lines[2]["error"].as_str().unwrap().contains("not both"));
}

#[test]
fn transform_test_takes_the_rule_context_and_reports_invalid_json() {
    let input = [
        json!({"id": "ctx", "event": {}, "rule_name": "orders", "rule_arn": "arn:x", "ingestion_time": "2026-01-02T03:04:05Z",
               "input_template": "<aws.events.rule-name> <aws.events.rule-arn> <aws.events.event.ingestion-time>"})
        .to_string(),
        json!({"id": "bad", "event": {}, "ingestion_time": 5, "input": 1}).to_string(),
        json!({"id": "obj", "event": {"data": {"c": {"k": "v"}}}, "input_paths_map": {"c": "$.data.c"},
               "input_template": "{\"c\": \"<c>\"}"})
        .to_string(),
    ]
    .join("\n");
    let out = busbar(&["transform", "test", "--jsonl"], Some(&input));
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines[0],
        json!({"id": "ctx", "output": "orders arn:x 2026-01-02T03:04:05Z"})
    );
    assert!(
        lines[1]["error"]
            .as_str()
            .unwrap()
            .contains("ingestion_time"),
        "{}",
        lines[1]
    );
    let error = lines[2]["error"].as_str().unwrap();
    assert!(error.starts_with("transform_invalid_json: "), "{error}");
    assert!(error.contains("<c> at line 1, column 8"), "{error}");

    // The same as a file: an error and exit code 2.
    let dir = tempfile::tempdir().unwrap();
    let event = write(&dir, "e.json", &json!({"data": {"c": [1, "two"]}}));
    let spec = write(
        &dir,
        "t.json",
        &json!({"input_paths_map": {"c": "$.data.c"}, "input_template": "[\"<c>\"]"}),
    );
    let out = busbar(
        &["transform", "test", "--event", &event, "--transform", &spec],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("transform_invalid_json"), "{stderr}");
}
