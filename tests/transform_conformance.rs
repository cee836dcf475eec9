//! Conformance of `transform` with EventBridge's input transformers: a table
//! of cases in `tests/data/transforms/*.json`, each naming the documented (or
//! AWS-recorded) rule it checks.

use std::path::{Path, PathBuf};

use busbar::transform::{RenderContext, TransformSpec};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The context every case renders with (the values of EventBridge's own
/// documentation example).
const CONTEXT: RenderContext<'static> = RenderContext {
    rule_name: "example",
    ingestion_time: "2015-11-11T21:29:54Z",
    rule_arn: "arn:aws:events:us-east-2:123456789012:rule/example",
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    rule: String,
    #[serde(default)]
    event: Value,
    #[serde(default)]
    input_paths_map: Option<Map<String, Value>>,
    #[serde(default)]
    input_template: Option<String>,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    input_path: Option<String>,
    /// The exact rendered text.
    #[serde(default)]
    output: Option<String>,
    /// A substring of the compile error's reason...
    #[serde(default)]
    error: Option<String>,
    /// ...and the field it names.
    #[serde(default)]
    field: Option<String>,
    /// A substring of the render error.
    #[serde(default)]
    render_error: Option<String>,
}

fn case_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/transforms");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

fn check(case: &Case) -> Result<(), String> {
    let spec = TransformSpec {
        input_paths_map: case.input_paths_map.clone(),
        input_template: case.input_template.clone(),
        input: case.input.clone(),
        input_path: case.input_path.clone(),
    };
    let compiled = spec.compile();
    match (&case.error, &case.field, compiled) {
        (Some(reason), Some(field), Err(e)) => {
            if &e.field != field || !e.reason.contains(reason.as_str()) {
                return Err(format!("expected {field}: …{reason}…, got {e}"));
            }
            Ok(())
        }
        (Some(_), _, Ok(_)) => Err("expected a compile error, it compiled".into()),
        (None, _, Err(e)) => Err(format!("unexpected compile error: {e}")),
        (Some(_), None, Err(_)) => Err("an `error` case needs a `field`".into()),
        (None, _, Ok(transform)) => match (
            &case.output,
            &case.render_error,
            transform.render(&case.event, &CONTEXT),
        ) {
            (Some(expected), None, Ok(out)) if &out == expected => Ok(()),
            (Some(expected), None, Ok(out)) => Err(format!("expected\n  {expected}\ngot\n  {out}")),
            (None, Some(reason), Err(e)) if e.to_string().contains(reason.as_str()) => Ok(()),
            (_, _, result) => Err(format!(
                "case needs exactly one of output/render_error matching; got {result:?}"
            )),
        },
    }
}

#[test]
fn eventbridge_conformance_table() {
    let mut total = 0;
    let mut failures = Vec::new();
    for file in case_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let cases: Vec<Case> =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for case in &cases {
            total += 1;
            assert!(!case.rule.trim().is_empty(), "{}: no rule cited", case.name);
            if let Err(why) = check(case) {
                let file = file.file_name().unwrap().to_string_lossy();
                failures.push(format!("{file} / {}: {why}", case.name));
            }
        }
    }
    assert!(total >= 80, "only {total} conformance cases");
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
